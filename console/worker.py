"""``python -m pillars.console.worker RUN_FOLDER``: run one console run with kfp.local, as ``pillars run`` does.

Records itself in ``run.json`` first (pid and start time, so a console that starts again finds it),
then runs the pipeline through :func:`pillars.pipelines.local.runner.run_local` with its output going to
``log.txt``, and records its outcome in ``run.json`` itself: the run's result does not depend on a
console watching. On failure it also writes one line to ``error.txt`` and exits 1. The task is
resolved here, in the worker's process (the console imports no task code).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pillars.components.errors import one_line
from pillars.components.shutdown import skip_final_collection
from pillars.console.runs import (ERROR_FILE, FAILED, LOG_FILE, RUNNING, SUCCEEDED, RunRecord, RunStore, now,
                                  process_started)


def main(argv: list[str]) -> int:
    skip_final_collection()
    folder = Path(argv[0])
    store = RunStore(folder.parent)
    mine = False

    def claim(record: RunRecord) -> None:
        nonlocal mine
        if record.status == RUNNING and record.worker_pid in (None, os.getpid()):
            record.worker_pid, record.worker_started, mine = os.getpid(), process_started(os.getpid()), True
    record = store.update(folder.name, claim)
    if not mine:  # settled or claimed by another worker while this one started: nothing to do
        print(f"run {record.id} is {record.status} (worker pid {record.worker_pid}): not running it", file=sys.stderr)
        return 0

    def finish(status: str, error: str | None = None) -> None:
        def change(record: RunRecord) -> None:
            record.status, record.finished, record.error = status, now(), error
        store.update(folder.name, change)

    try:
        from pillars.pipelines.compile import pipeline_factory
        from pillars.pipelines.local.runner import run_local

        pipeline = pipeline_factory(record.pipeline)()
        run_local(pipeline, record.arguments, log_file=folder / LOG_FILE)
    except Exception as e:  # noqa: BLE001 - the worker's one place that turns a failure into one line
        (folder / ERROR_FILE).write_text(one_line(e) + "\n")
        finish(FAILED, one_line(e))
        raise
    finish(SUCCEEDED)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
