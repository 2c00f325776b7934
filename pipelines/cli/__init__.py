"""``pillars``, the command line: :mod:`.parser` builds the parser and is the entry point (``main``);
:mod:`.commands` holds what each command does, one ``cmd_*`` function per command."""

from pillars.pipelines.cli.parser import main

__all__ = ["main"]
