"""Reporting a ``kfp.local`` run as a tool does: one line per step as it starts and ends, a step's
own progress (the train step's epochs), every executor log line in a file, and a failed step's own
error message instead of kfp's ``Inner task failed``.

Nothing here schedules anything: kfp.local runs the pipeline and prints what it does (its
``Executing task 'x'`` / ``Task 'x' finished with status ...`` lines, and each step's output,
indented); :class:`StepReporter` is the stream that output is redirected to. It writes every line to
the log file and turns kfp's lines into :class:`StepEvent` values with :func:`parse_line`, which reads
them with :func:`pillars.pipelines.local.steplog.read_line` (the one reader of kfp.local's output).
"""

from __future__ import annotations

import collections
import io
import re
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

from pillars.components.errors import PillarsError
from pillars.pipelines.local.steplog import progress_bar, read_line

TRACEBACK = "Traceback (most recent call last):"
EXCEPTION_LINE = re.compile(r"^(?P<type>[A-Za-z_][\w.]*)(?::\s?(?P<message>.*))?$")
TAIL_LINES = 400
"""Lines of a step's output kept in memory to find its error message (the log file has them all)."""


@dataclass(frozen=True)
class StepEvent:
    """Something kfp.local reported about a step."""

    kind: Literal["start", "end", "progress", "output"]
    step: str
    status: str = ""
    done: int = 0
    total: int = 0
    unit: str = ""
    text: str = ""


class StepFailed(PillarsError):
    """A pipeline step failed; ``str(err)`` names the step and carries the step's own error message."""

    def __init__(self, step: str, reason: str) -> None:
        super().__init__(f"step {step} failed: {reason}")
        self.step = step
        self.reason = reason


def parse_line(line: str, step: str | None) -> StepEvent | None:
    """What one line kfp.local printed says, given the step whose output is being streamed (or None).

    Returns:
        A ``start``/``end`` event for kfp's own task lines, ``progress`` for a tqdm line of the step,
        ``output`` for any other line of the step's output (without kfp's indent), None otherwise.
    """
    read = read_line(line)
    if read.kind == "task_started":
        return StepEvent("start", read.name)
    if read.kind == "task_finished":
        return StepEvent("end", read.name, status=read.status)
    if step is None or read.kind != "output":
        return None
    if (bar := progress_bar(read.text)) and bar.desc == step:
        return StepEvent("progress", step, done=bar.done, total=bar.total, unit=bar.unit, text=bar.postfix)
    return StepEvent("output", step, text=read.text)


def error_message(output: list[str]) -> str:
    """A failed step's own error message from its output: the exception line of its last traceback.

    A platform error (``pillars.*``) is its message alone, written for the user; any other exception
    keeps its class name (``RuntimeError: CUDA out of memory``). Without a traceback (a killed
    process), the step's last line.
    """
    starts = [i for i, text in enumerate(output) if text.strip() == TRACEBACK]
    if starts:
        for text in output[starts[-1] + 1:]:
            if text.strip() and not text[0].isspace():
                if m := EXCEPTION_LINE.match(text.strip()):
                    kind, message = m["type"], (m["message"] or "").strip()
                    if kind.startswith("pillars.") and message:
                        return message
                    short = kind.rsplit(".", 1)[-1]
                    return f"{short}: {message}" if message else short
                return text.strip()
    last = [text.strip() for text in output if text.strip()]
    return f"exited without a Python traceback; its last line: {last[-1]}" if last else "exited without output"


@dataclass
class _Step:
    started: float
    output: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=TAIL_LINES))
    done: int = 0
    total: int = 0
    unit: str = ""
    note: str = ""


class StepReporter(io.TextIOBase):
    """The stream kfp.local's output is redirected to while a pipeline runs.

    Every line goes to ``log`` (and, ``verbose``, to ``out`` as it is); kfp's task lines become one
    line on ``out`` when a step starts and one when it ends, with its duration and progress. On a
    terminal, a step's progress is a bar redrawn in place.

    Args:
        log: the log file, open for writing.
        out: where the step lines go (the terminal).
        verbose: copy every line to ``out`` instead of the step lines.
        clock: monotonic seconds (injected in tests).
    """

    def __init__(self, log: TextIO, out: TextIO, verbose: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.log = log
        self.out = out
        self.verbose = verbose
        self.clock = clock
        self.steps: dict[str, _Step] = {}
        self.current: str | None = None
        self.failed: str | None = None
        self._partial = ""
        self._bar_shown = False
        self._tty = bool(getattr(out, "isatty", lambda: False)())

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        self.log.write(s)
        if self.verbose:
            self.out.write(s)
        lines = (self._partial + s).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self.feed(line)
        return len(s)

    def flush(self) -> None:
        self.log.flush()
        self.out.flush()

    def feed(self, line: str) -> None:
        """Take one complete line kfp.local printed."""
        event = parse_line(line, self.current)
        if event is None:
            return
        if event.kind == "start":
            self.current = event.step
            self.steps[event.step] = _Step(self.clock())
            self._say(f"  {event.step:<14} ...")
        elif event.kind == "end":
            self._end(event)
        elif event.kind == "progress":
            step = self.steps[event.step]
            step.done, step.total, step.unit, step.note = event.done, event.total, event.unit, event.text
            self._draw_bar(event.step, step)
        else:
            self.steps[event.step].output.append(event.text)

    def failure(self) -> StepFailed | None:
        """The failed step with its own error message, or None when no step failed."""
        if self.failed is None:
            return None
        return StepFailed(self.failed, error_message(list(self.steps[self.failed].output)))

    def _end(self, event: StepEvent) -> None:
        step = self.steps.get(event.step) or _Step(self.clock())
        seconds = self.clock() - step.started
        progress = f"  {step.done}/{step.total} {step.unit}".rstrip() if step.total else ""
        if step.note:
            progress += f"  ({step.note})"
        status = "ok" if event.status == "SUCCESS" else "FAILED"
        if status == "FAILED":
            self.failed = event.step
        self.current = None
        self._say(f"  {event.step:<14} {status:<6} {seconds:6.1f}s{progress}")

    def _say(self, text: str) -> None:
        if self.verbose:
            return
        self._clear_bar()
        self.out.write(text + "\n")
        self.out.flush()

    def _draw_bar(self, name: str, step: _Step) -> None:
        if self.verbose or not self._tty or not step.total:
            return
        width = 24
        filled = width * min(step.done, step.total) // step.total
        bar = f"[{'#' * filled}{'.' * (width - filled)}]"
        self.out.write(f"\r\x1b[K  {name:<14} {bar} {step.done}/{step.total} {step.unit}")
        self.out.flush()
        self._bar_shown = True

    def _clear_bar(self) -> None:
        if self._bar_shown:
            self.out.write("\r\x1b[K")
            self._bar_shown = False


def log_path(home: Path, pipeline: str, clock: Callable[[], float] = time.time) -> Path:
    """``<home>/logs/run-<pipeline>-<YYYYmmdd-HHMMSS>.log``, a new file per run."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(clock()))
    return home / "logs" / f"run-{pipeline}-{stamp}.log"


def run_reported(pipeline: Callable[..., Any], arguments: Mapping[str, Any], log_file: Path,
                 out: TextIO | None = None, verbose: bool = False, caching: bool = True) -> str:
    """Run ``pipeline`` with kfp.local, reporting its steps on ``out`` and logging everything to ``log_file``.

    Returns:
        The tracking URI the run used.

    Raises:
        StepFailed: a step failed; the message is the step's own error (the log file has the rest).
    """
    from pillars.pipelines.local.runner import run_local

    out = out if out is not None else sys.stderr
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "w") as log:
        reporter = StepReporter(log, out, verbose=verbose)
        try:
            return run_local(pipeline, arguments, caching=caching, output=reporter)
        except Exception as e:
            failed = reporter.failure()
            if failed is None:
                raise
            raise failed from e
        finally:
            reporter.flush()


# ---- what a finished run left in the registry ----------------------------------------------------------------

def optimize_summary(name: str, version: str, log: Path) -> list[str]:
    """After optimising ``name`` v``version``: one table of every variant (registered, refused, skipped or
    failed, from the run's logged report), where ``edge`` points, that the champion did not move."""
    from pillars.components import registry
    from pillars.components.optimize.register import EDGE, latest_report, variants_table

    report = latest_report(name, version)
    lines = variants_table(report) if report else [f"no optimisation report of {name} v{version} in MLflow"]
    edge = registry.alias_version(name, EDGE)
    champion = registry.alias_version(name, registry.CHAMPION)
    lines.append(f"edge: v{edge} (serve it: pillars serve models:/{name}@edge)" if edge
                 else "edge: none (no variant within the guard)")
    lines.append(f"champion: v{champion}" if champion else "champion: none")
    lines.append(f"log: {log}")
    return lines


def run_summary(name: str, uri: str, log: Path) -> list[str]:
    """What a finished training run left in the registry: the newest trained version of ``name`` (not an
    optimised variant), its gate decision, aliases and test metrics; the variants made of it (a run with
    ``optimize=true``) apart, one line each; where MLflow and the log are, and how to serve it."""
    from pillars.components import registry
    from pillars.components.optimize.register import latest_report, variants_table

    versions = registry.list_versions(name)
    newest = next((v for v in versions if v.variant is None), versions[0])
    gate = newest.gate
    reasons = gate.reasons_text() if gate else ""
    metrics = "  ".join(f"{k}={v:.4f}" for k, v in newest.metrics.items())
    lines = [f"model    {name} v{newest.version}  aliases: {', '.join(newest.aliases) or '-'}",
             f"gate     {'approved' if gate and gate.approved else 'rejected'}" + (f": {reasons}" if reasons else ""),
             f"test     {metrics or '-'}"]
    trained = _training_line(newest.run_id)
    if trained:
        lines.append(trained)
    report = latest_report(name, newest.version) if len(versions) > 1 else None
    if report:
        lines += [f"variants of v{newest.version}:"] + [f"  {line}" for line in variants_table(report)]
    lines += [f"MLflow   {uri}", f"log      {log}"]
    if registry.alias_version(name, registry.CHAMPION) is not None:
        lines.append(f"serve    pillars serve models:/{name}@champion")
    if report and report.get("edge_version"):
        lines.append(f"edge     pillars serve models:/{name}@edge")
    return lines


def _training_line(run_id: str | None) -> str | None:
    """``train    2 processes on cpu, best epoch 12, resumed after epoch 5`` from the training run's tags
    (None: a run that recorded none)."""
    from pillars.components import registry

    if not run_id:
        return None
    tags = registry.client().get_run(run_id).data.tags
    world, device = tags.get("pillars.world_size"), tags.get("pillars.device")
    if not world or not device:
        return None
    parts = [f"{world} process{'' if world == '1' else 'es'} on {device}"]
    if tags.get("pillars.best_epoch"):
        parts.append(f"best epoch {tags['pillars.best_epoch']}")
    if tags.get("pillars.resumed_from_epoch", "0") not in ("", "0"):
        parts.append(f"resumed after epoch {tags['pillars.resumed_from_epoch']}")
    return "train    " + ", ".join(parts)
