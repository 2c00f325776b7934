"""Where the Spark data step's time goes: every Spark job of ``prepare_table_spark`` with its wall time, from
Spark's own event log.

    python benchmarks/spark_jobs.py --rows 500000 --repeats 2

A synthetic 32-feature classification table (5% missing values in one feature, ``missing_policy=median``) is
prepared ``--repeats`` times in one Spark session (``local[2]``, 2 GB heap): the first preparation is cold
(JIT, Python workers starting), the next ones warm. Prints each preparation's total, then one line per job
(id, seconds, the call site Spark names) and per stage (seconds, tasks). Run it in two trees, one after the
other, to compare a change side by side.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from _common import write_table
from pillars.components.data.spark import local_session, prepare_table_spark
from pillars.components.task import DataParams, TableSource


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--spark-memory", default="2g")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pillars-spark-jobs-") as tmp:
        root = Path(tmp)
        write_table(root / "table", args.rows, args.features, seed=args.rows, missing_share=0.05)
        events = root / "events"
        events.mkdir()
        source = TableSource(str(root / "table"), "label", "classification")
        with local_session(args.master, memory=args.spark_memory,
                           conf={"spark.ui.showConsoleProgress": "false", "spark.eventLog.enabled": "true",
                                 "spark.eventLog.dir": str(events)}) as spark:
            for repeat in range(args.repeats):
                started = time.perf_counter()
                prepare_table_spark(spark, source, DataParams(seed=0, missing_policy="median"), root / f"out{repeat}")
                print(f"preparation {repeat}: {time.perf_counter() - started:.1f} s", flush=True)
        jobs: dict[int, list] = {}
        stages: dict[int, tuple] = {}
        for log in events.iterdir():
            for line in log.read_text().splitlines():
                event = json.loads(line)
                kind = event["Event"]
                if kind == "SparkListenerJobStart":
                    jobs[event["Job ID"]] = [event["Submission Time"], None, event["Stage Infos"][-1]["Stage Name"]]
                elif kind == "SparkListenerJobEnd":
                    jobs[event["Job ID"]][1] = event["Completion Time"]
                elif kind == "SparkListenerStageCompleted":
                    info = event["Stage Info"]
                    stages[info["Stage ID"]] = ((info["Completion Time"] - info["Submission Time"]) / 1000,
                                                info["Number of Tasks"], info["Stage Name"])
        for job, (start, end, name) in sorted(jobs.items()):
            print(f"job {job} {(end - start) / 1000:.1f} s  {name}")
        for stage, (seconds, tasks, name) in sorted(stages.items()):
            print(f"  stage {stage} {seconds:.1f} s  {tasks} tasks  {name}")


if __name__ == "__main__":
    main()
