"""A table larger than the train step's memory, end to end through the pipeline: ``pillars run training
--param engine=spark`` (prepare on Spark ``local[*]``, then train, evaluate, gate and register), with the
train step held to a memory cap by a cgroup, as a pod's memory limit holds it on a cluster.

    sudo python benchmarks/capped_pipeline.py --rows 2000000 --features 32 --cap-mb 700

A synthetic classification table is written as Parquet files chunk by chunk. ``pillars run`` runs in a fresh
folder (its own local MLflow store). A watcher puts the train step's process into a cgroup-v1 memory group
limited to ``--cap-mb`` as soon as kfp.local starts it (within 50 ms, before its imports), and reads its
peak RSS (``VmHWM``: it includes shared libraries whose pages other processes brought in and so are not
charged to the group) and the group's anonymous memory (``memory.stat`` ``rss``). The group also counts the
page cache the step brings in, which the kernel reclaims at the limit (``failcnt`` counts those); a step
that needs more than the cap is killed (``oom_kill``), and a retried step is capped again (``attempts``).

Prints one JSON object: the table's size (Parquet on disk; float32 features in memory, as the in-memory path
would hold them), the cap, the train step's peak RSS, the cgroup's counters, the run's exit status, its
summary lines and wall time. Needs root and a cgroup-v1 memory hierarchy at ``/sys/fs/cgroup/memory``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import write_table

CGROUPS = Path("/sys/fs/cgroup/memory")


def train_step_pid() -> int | None:
    """The process kfp.local runs the train component in, if it is running."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"kfp.dsl.executor_main" in argv and b"--function_to_execute" in argv:
            if argv[argv.index(b"--function_to_execute") + 1] == b"train":
                return int(entry.name)
    return None


def peak_rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return None


class Watcher(threading.Thread):
    """Moves every train-step process into ``group`` as it starts (a retried step starts another); keeps the
    peak RSS of each and the group's peak anonymous memory."""

    def __init__(self, group: Path) -> None:
        super().__init__(daemon=True)
        self.group = group
        self.peaks: dict[int, float] = {}
        self.moved_after_s: list[float] = []
        self.anon_peak_mb = 0.0
        self.done = threading.Event()
        self.started_at = time.monotonic()

    def run(self) -> None:
        while not self.done.is_set():
            pid = train_step_pid()
            if pid is not None and pid not in self.peaks:
                try:
                    (self.group / "cgroup.procs").write_text(str(pid))
                except OSError:  # exited meanwhile
                    continue
                self.peaks[pid] = 0.0
                self.moved_after_s.append(round(time.monotonic() - self.started_at, 1))
            for pid in self.peaks:
                peak = peak_rss_mb(pid)
                if peak is not None:
                    self.peaks[pid] = peak
            stat = dict(line.split() for line in (self.group / "memory.stat").read_text().splitlines())
            self.anon_peak_mb = max(self.anon_peak_mb, int(stat["rss"]) / 2**20)
            time.sleep(0.05)


def counter(group: Path, name: str) -> int:
    return int((group / name).read_text().split()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--cap-mb", type=int, default=700)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--keep", help="a folder to keep the run's files in (default: a temporary one)")
    args = parser.parse_args()

    group = CGROUPS / f"pillars-capped-train-{os.getpid()}"
    group.mkdir()
    report: dict = {"rows": args.rows, "features": args.features, "cap_mb": args.cap_mb}
    try:
        (group / "memory.limit_in_bytes").write_text(str(args.cap_mb * 2**20))
        try:  # charges made before the move follow the process (refused by newer kernels: then only later ones)
            (group / "memory.move_charge_at_immigrate").write_text("3")
            report["charges_move"] = True
        except OSError:
            report["charges_move"] = False
        with tempfile.TemporaryDirectory(prefix="pillars-capped-", dir=args.keep) as tmp:
            root = Path(tmp)
            started = time.perf_counter()
            parquet = write_table(root / "table", args.rows, args.features, seed=1)
            report["parquet_mb"] = round(parquet / 2**20, 1)
            report["float32_features_mb"] = round(args.rows * args.features * 4 / 2**20, 1)
            report["write_seconds"] = round(time.perf_counter() - started, 1)
            env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
            command = [sys.executable, "-m", "pillars.pipelines.cli", "run", "training",
                       "--task", "tabular_classification", "--param", f"source={root / 'table'}",
                       "--param", "label_column=label", "--param", "engine=spark",
                       "--param", f"epochs={args.epochs}", "--param", "batch_size=512"]
            (root / "work").mkdir()
            watcher = Watcher(group)
            watcher.start()
            started = time.perf_counter()
            run = subprocess.run(command, cwd=root / "work", env=env, capture_output=True, text=True,
                                 start_new_session=True)
            report["pipeline_seconds"] = round(time.perf_counter() - started, 1)
            watcher.done.set()
            watcher.join()
            report["exit_status"] = run.returncode
            report["summary"] = run.stdout.strip().splitlines()[-12:]
            if run.returncode:
                report["stderr_tail"] = run.stderr.strip().splitlines()[-15:]
                for log in (root / "work" / ".pillars" / "logs").glob("*.log"):  # the steps' own output
                    kept = Path.cwd() / f"capped-pipeline-{os.getpid()}.log"
                    shutil.copyfile(log, kept)
                    report["log"] = str(kept)
            report["train_step"] = {
                "attempts": len(watcher.peaks), "moved_into_cgroup_after_s": watcher.moved_after_s,
                "peak_rss_mb": [round(p, 1) for p in watcher.peaks.values()],
                "peak_anonymous_mb": round(watcher.anon_peak_mb, 1)}
            report["cgroup"] = {"max_usage_mb": round(counter(group, "memory.max_usage_in_bytes") / 2**20, 1),
                                "failcnt": counter(group, "memory.failcnt"),
                                "oom_kill": int((group / "memory.oom_control").read_text().split("oom_kill ")[1])}
            cap = args.cap_mb
            report["table_over_cap"] = {"parquet": round(report["parquet_mb"] / cap, 2),
                                        "float32_features": round(report["float32_features_mb"] / cap, 2)}
    finally:
        group.rmdir()
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
