"""``python -m pillars.console``: the console's own process, which ``pillars console`` starts (the
command-line tools never import the console; it imports them)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pillars.components.errors import PillarsError, one_line
from pillars.console.server import serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pillars console", description="serve the web console")
    parser.add_argument("--host", help="interface (default 127.0.0.1; others need --token-file)")
    parser.add_argument("--port", type=int, help="port (default 8700)")
    parser.add_argument("--token-file", type=Path, help="file holding the access token")
    args = parser.parse_args(argv)
    try:
        serve(args.host, args.port, args.token_file)
    except KeyboardInterrupt:
        return 130
    except PillarsError as e:
        print(f"pillars: error: {one_line(e)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
