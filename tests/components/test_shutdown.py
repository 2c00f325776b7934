"""A step's process (and the ``pillars`` command) ends without full collections over the heap it built."""

from __future__ import annotations

import inspect
import subprocess
import sys

from pillars.components import ops

EXIT_PROBE = """
import atexit, gc
from pillars.components.shutdown import skip_final_collection

# registered first, so it runs last: after skip_final_collection's own exit function
atexit.register(lambda: print("frozen at exit:", gc.get_freeze_count(), flush=True))
cycles = []
for i in range(200_000):
    node = {"i": i}
    node["self"] = node
    cycles.append(node)
{call}
"""


def _frozen_at_exit(call: str) -> int:
    out = subprocess.run([sys.executable, "-c", EXIT_PROBE.replace("{call}", call)], capture_output=True,
                         text=True, check=True, timeout=120).stdout
    return int(out.rsplit(":", 1)[1])


def test_objects_alive_at_exit_are_moved_out_of_the_collections_and_exit_functions_still_run() -> None:
    assert _frozen_at_exit("skip_final_collection(); skip_final_collection()") >= 200_000
    assert _frozen_at_exit("") == 0


def test_every_step_body_and_the_command_line_skip_the_final_collection() -> None:
    from pillars.pipelines.cli import parser

    missing = [body.__name__ for body in ops._BODIES if "skip_final_collection()" not in inspect.getsource(body)]
    assert missing == []
    assert "skip_final_collection()" in inspect.getsource(parser.main)
