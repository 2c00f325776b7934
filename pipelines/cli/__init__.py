"""``pillars``, the command line: :mod:`.parser` builds the parser and is the entry point (``main``);
:mod:`.commands` holds what each command does, one ``cmd_*`` function per command, and :mod:`.models` the
``pillars models`` command (the registry and the decisions on a challenger)."""

from pillars.pipelines.cli.parser import main

__all__ = ["main"]
