"""Step progress of a local run, read from what ``kfp.local`` prints (the run's log file).

The lines are read by :func:`pillars.pipelines.local.steplog.read_line` (the one reader of kfp.local's output,
shared with the CLI's step report); :func:`parse_log` turns the whole text into
:class:`RunProgress`; :func:`planned_steps` lists the steps a pipeline will run, in order, so pending
ones can be shown before they start. Pure functions: the run page polls them on a growing file.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pillars.pipelines.local.steplog import output_value, read_line

MAX_STEP_LOG_CHARS = 200_000
"""Only the last this many characters of a step's output are kept for the page."""


@dataclasses.dataclass
class StepProgress:
    """One task of the run."""

    name: str
    display_name: str
    status: str = "pending"  # pending, running, succeeded, failed, skipped
    started: str | None = None
    finished: str | None = None
    outputs: dict[str, str] = dataclasses.field(default_factory=dict)
    log: str = ""

    @property
    def seconds(self) -> float | None:
        """Wall time of the step (clock times of the same day), None until it finished."""
        if not self.started or not self.finished:
            return None
        return round((_seconds(self.finished) - _seconds(self.started)) % 86400, 3)


@dataclasses.dataclass
class RunProgress:
    """Every step seen or planned, plus what the run as a whole reported."""

    steps: list[StepProgress]
    pipeline_status: str | None = None  # SUCCESS / FAILURE once kfp.local says so
    job_name: str | None = None  # the local run's id (its folder under pipeline_root)

    def step(self, name: str) -> StepProgress | None:
        return next((s for s in self.steps if s.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {"pipeline_status": self.pipeline_status, "job_name": self.job_name,
                "steps": [{**dataclasses.asdict(s), "seconds": s.seconds, "log": None} for s in self.steps]}


def _seconds(clock: str) -> float:
    h, m, s = clock.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def planned_steps(pipeline: Any) -> list[tuple[str, str]]:
    """``(task name, display name)`` of every leaf task of a compiled pipeline, in dependency order.

    Tasks inside a condition (``dsl.If``) are listed after the tasks the condition depends on.
    """
    spec = pipeline.pipeline_spec
    result: list[tuple[str, str]] = []

    def walk(dag: Any) -> None:
        tasks = dict(dag.tasks)
        done: set[str] = set()
        while len(done) < len(tasks):
            ready = sorted(n for n, t in tasks.items()
                           if n not in done and all(d in done or d not in tasks for d in t.dependent_tasks))
            if not ready:  # a cycle cannot come out of the compiler; list what is left as is
                ready = sorted(set(tasks) - done)
            for name in ready:
                done.add(name)
                component = spec.components[tasks[name].component_ref.name]
                if component.WhichOneof("implementation") == "dag":
                    walk(component.dag)
                else:
                    result.append((name, tasks[name].task_info.name or name))

    walk(spec.root.dag)
    return result


def parse_log(text: str, planned: list[tuple[str, str]] = ()) -> RunProgress:
    """The progress ``text`` (a kfp.local log, possibly still growing) shows.

    Args:
        text: the log so far.
        planned: :func:`planned_steps`; these start as ``pending`` (``skipped`` once the pipeline ended
            without running them, e.g. promotion after a rejecting gate).
    """
    steps = {name: StepProgress(name, display) for name, display in planned}
    order = [name for name, _ in planned]
    progress = RunProgress([])
    current: StepProgress | None = None
    collecting_outputs: StepProgress | None = None
    logs: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = read_line(raw)
        if line.job is not None and progress.job_name is None:
            progress.job_name = line.job
        if line.kind in ("output", "other"):
            if collecting_outputs is not None and line.kind == "output" and (value := output_value(line.text)):
                collecting_outputs.outputs[value[0]] = value[1]
            elif current is not None and current.status == "running":
                logs.setdefault(current.name, []).append(line.text)
            continue
        collecting_outputs = None
        if line.kind == "task_started":
            if line.name not in steps:
                steps[line.name] = StepProgress(line.name, line.name)
                order.append(line.name)
            current = steps[line.name]
            current.status, current.started = "running", line.clock
        elif line.kind == "task_finished":
            step = steps.get(line.name)
            if step is not None:
                step.status = "succeeded" if line.status == "SUCCESS" else "failed"
                step.finished = line.clock
        elif line.kind == "task_outputs":
            collecting_outputs = steps.get(line.name)
        elif line.kind == "pipeline_finished":
            progress.pipeline_status = line.status
    for name, lines in logs.items():
        steps[name].log = "\n".join(lines).strip("\n")[-MAX_STEP_LOG_CHARS:]
    progress.steps = [steps[name] for name in order]
    return progress


def finish(progress: RunProgress, failed: bool) -> RunProgress:
    """Settle steps once the run's process ended: pending steps were skipped, a running one failed."""
    for step in progress.steps:
        if step.status == "pending":
            step.status = "skipped"
        elif step.status == "running" and failed:
            step.status = "failed"
    return progress
