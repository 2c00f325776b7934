"""``python -m pillars.pipelines.cli``: the ``pillars`` command, for a child that must run this interpreter."""

import sys

from pillars.pipelines.cli.parser import main

sys.exit(main())
