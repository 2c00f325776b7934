"""Console runs across a console restart, with real worker processes: a live worker is re-attached (found by
pid and start time), a dead one's run is settled failed, and queued runs stay queued and are run in order."""

from __future__ import annotations

import subprocess
import time

from pillars.console.runs import FAILED, QUEUED, RUNNING, SUCCEEDED, RunQueue, RunStore, now, process_started
from pillars.pipelines.local.stack import stop_group


def wait_for(condition, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_a_restarted_queue_reattaches_settles_and_runs_what_was_queued(tmp_path):
    store = RunStore(tmp_path / "runs")
    store.root.mkdir()
    # What a console killed with -9 leaves: a worker still running (here a process of its own session
    # standing in for it), a run whose worker died unrecorded, and two queued runs.
    alive = subprocess.Popen(["sleep", "120"], start_new_session=True)
    try:
        running = store.create("training", {})
        running.status, running.started = RUNNING, now()
        running.worker_pid, running.worker_started = alive.pid, process_started(alive.pid)
        store.save(running)
        dead = store.create("training", {})
        dead.status, dead.worker_pid, dead.worker_started = RUNNING, alive.pid, "1"  # its pid, another start time
        store.save(dead)
        queued = [store.create("nope", {}) for _ in range(2)]  # the worker fails these: unknown pipeline
        queue = RunQueue(store)
        queue.start()
        try:
            assert store.get(dead.id).status == FAILED
            assert "ended without recording an outcome" in store.get(dead.id).error
            assert store.get(running.id).status == RUNNING  # re-attached, not failed
            assert [store.get(r.id).status for r in queued] == [QUEUED, QUEUED]  # one run at a time
            # The worker records its outcome itself and ends; the console only follows.
            store.update(running.id, lambda r: setattr(r, "status", SUCCEEDED))
            alive.terminate()
            alive.wait()
            wait_for(lambda: all(store.get(r.id).done for r in queued))
        finally:
            queue.stop()
        assert store.get(running.id).status == SUCCEEDED
        first, second = (store.get(r.id) for r in queued)
        for record in (first, second):  # really run: the worker's own error, not the console's guess
            assert record.status == FAILED and "unknown pipeline 'nope'" in record.error
            assert record.worker_pid is not None and record.started
        assert first.started <= second.started
    finally:
        if alive.poll() is None:
            stop_group(alive.pid)
