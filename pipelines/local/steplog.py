"""The one reader of what ``kfp.local`` prints: each line of a local run's log as a typed :class:`LogLine`.

kfp.local (kfp 2.x) prints its own lines as ``HH:MM:SS.mmm - LEVEL - message``, with colour codes around
task names and statuses:

- ``Executing task 'NAME'`` when a task starts, then ``Streamed logs:``;
- the task's own output, each line indented by four spaces (:data:`STEP_OUTPUT_INDENT`);
- ``Task 'NAME' finished with status SUCCESS|FAILURE``;
- ``Task 'NAME' outputs:``, followed by indented ``key: value`` lines (strings quoted, artifacts as
  ``Dataset( name=...`` spanning several lines);
- at the end ``Pipeline 'NAME' finished with status ...``.

Any line may name the run's folder under ``pipeline_root`` (the local job's id). A step may also print a
tqdm progress bar described by its own name (the train step's epochs), read by :func:`progress_bar`.

Both readers of these logs build on :func:`read_line`: the CLI's live step report
(:mod:`pillars.pipelines.local.progress`, a line at a time as the run prints them) and the console's run page
(:mod:`pillars.console.steplog`, the whole file so far). Pure functions, no state.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
"""Colour (and cursor) codes kfp.local puts around task names and statuses."""
STEP_OUTPUT_INDENT = " " * 4
"""kfp.local prints a step's own output (and a task's output values) indented by four spaces."""

_KFP_LINE = re.compile(r"^(?P<clock>\d\d:\d\d:\d\d\.\d+) - (?P<level>INFO|ERROR|WARNING) - (?P<message>.*)$")
_STARTED = re.compile(r"^Executing task '(?P<name>[^']+)'")
_FINISHED = re.compile(r"^Task '(?P<name>[^']+)' finished with status (?P<status>\w+)")
_OUTPUTS = re.compile(r"^Task '(?P<name>[^']+)' outputs:")
_PIPELINE_FINISHED = re.compile(r"^Pipeline '(?P<name>[^']+)' finished with status (?P<status>\w+)")
_OUTPUT_VALUE = re.compile(r"^(?P<key>\w+): (?:'(?P<text>.*)'|(?P<literal>-?[\d.eE+-]+|True|False))$")
_JOB = re.compile(r"/pipeline_root/(?P<job>[\w.-]+)/")
_TQDM = re.compile(r"^(?P<desc>[^:|]*):\s+\d+%\|[^|]*\|\s*(?P<done>\d+)/(?P<total>\d+)(?:\s*\[(?P<info>[^\]]*)\])?")
_RATE = re.compile(r"^(?:[\d.?]+(?P<unit>[A-Za-z]+)/s|[\d.]+s/(?P<per>[A-Za-z]+))$")

Kind = Literal["task_started", "task_finished", "task_outputs", "pipeline_finished", "kfp", "output", "other"]


@dataclass(frozen=True)
class LogLine:
    """One line of a kfp.local log, read.

    ``kind``:
        ``task_started`` / ``task_finished`` / ``task_outputs`` / ``pipeline_finished``: kfp's own line
        about task (or pipeline) ``name``, at ``clock``, with ``status`` (``SUCCESS``, ``FAILURE``) for the
        finished ones; ``kfp``: another kfp line (``Streamed logs:``, ``Running pipeline``);
        ``output``: an indented line, ``text`` without the indent (a step's output or an output value);
        ``other``: anything else (blank lines, kfp's ``----`` rules), ``text`` as it is.

    ``job`` is the local run's id when the line names its folder under ``pipeline_root``.
    """

    kind: Kind
    text: str = ""
    name: str = ""
    status: str = ""
    clock: str = ""
    job: str | None = None


def read_line(line: str) -> LogLine:
    """What one line of kfp.local's output is (colour codes and the line end removed first)."""
    plain = ANSI.sub("", line.rstrip("\r\n"))
    job = m["job"] if (m := _JOB.search(plain)) else None
    kfp = _KFP_LINE.match(plain)
    if kfp is None:
        if plain.startswith(STEP_OUTPUT_INDENT):
            return LogLine("output", plain[len(STEP_OUTPUT_INDENT):], job=job)
        return LogLine("other", plain, job=job)
    clock, message = kfp["clock"], kfp["message"]
    for kind, pattern in (("task_started", _STARTED), ("task_finished", _FINISHED), ("task_outputs", _OUTPUTS),
                          ("pipeline_finished", _PIPELINE_FINISHED)):
        if m := pattern.match(message):
            return LogLine(kind, message, m["name"], m.groupdict().get("status") or "", clock, job)
    return LogLine("kfp", message, clock=clock, job=job)


def output_value(text: str) -> tuple[str, str] | None:
    """``(key, value)`` of a task's output value line (``Output: 'b0c1'``, ``version: 3``), given without
    kfp's indent; None for other lines (an artifact's ``Model( name=...`` and its continuation lines)."""
    if m := _OUTPUT_VALUE.match(text):
        return m["key"], m["text"] if m["text"] is not None else m["literal"]
    return None


@dataclass(frozen=True)
class ProgressBar:
    """A tqdm line: ``desc``, ``done`` of ``total`` ``unit``, and its postfix (``loss=0.26, val_loss=0.18``)."""

    desc: str
    done: int
    total: int
    unit: str = ""
    postfix: str = ""


def progress_bar(text: str) -> ProgressBar | None:
    """The tqdm bar a step's output line draws (``train:  33%|###   | 1/3 [00:01<00:02, 1.50epoch/s, loss=0.42]``),
    or None. The unit comes from the rate (``1.50epoch/s`` or ``3.12s/epoch``)."""
    m = _TQDM.match(text.strip())
    if m is None:
        return None
    parts = [p.strip() for p in (m["info"] or "").split(",")]
    unit = ""
    if len(parts) > 1 and (rate := _RATE.match(parts[1])):
        unit = rate["unit"] or rate["per"] or ""
    return ProgressBar(m["desc"].strip(), int(m["done"]), int(m["total"]), unit, ", ".join(parts[2:]))
