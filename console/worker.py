"""``python -m pillars.console.worker RUN_FOLDER``: run one console run with kfp.local, as ``pillars run`` does.

Reads ``run.json``, runs the pipeline through :func:`pillars.pipelines.local.run_local` with its
output going to ``log.txt``; on failure writes one line to ``error.txt`` and exits 1.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pillars.console.runs import ERROR_FILE, LOG_FILE, RECORD_FILE
from pillars.components.errors import one_line
from pillars.pipelines.compile import pipeline_factory
from pillars.pipelines.local import run_local


def main(argv: list[str]) -> int:
    folder = Path(argv[0])
    record = json.loads((folder / RECORD_FILE).read_text())
    try:
        pipeline = pipeline_factory(record["pipeline"])()
        run_local(pipeline, record["arguments"], log_file=folder / LOG_FILE)
    except Exception as e:  # noqa: BLE001 - the worker's one place that turns a failure into one line
        (folder / ERROR_FILE).write_text(one_line(e) + "\n")
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
