"""The READMEs are executable: every command of their ```bash blocks runs here, in README order, as written.

The commands of ``README.md`` and ``examples/custom-task/README.md`` are extracted (comments dropped,
continuation lines, multi-line quotes and ``for ... done`` joined into one command) and run one test each,
in the order a reader meets them, in one fresh folder per module: a copy of the checkout's files (what a
user has after ``git clone``, so ``helm/pillars`` and ``examples/churn.csv`` exist) with no ``.pillars``
store, and with no ``MLFLOW_*``/``PILLARS_*`` variable set. Each must exit 0.

Extraction is total: a command no rule below classifies fails its test, so a command added to a README is
run without anyone writing a test for it, or is listed here with the reason it cannot run. The only
changes made to a command are those in :data:`SUBSTITUTIONS` (each with its reason), the offline forms of
cluster commands included; ``[...]`` marks optional arguments in the README, and the test passes them.

Long-lived commands (``pillars serve``, ``pillars console``, ``mlflow ui``, or any ending in ``&``) start in
their own process group, are polled until they answer, and keep running for the commands after them in
their block (a ``curl`` to the server a reader has just started) until the next long-lived command or the
end of the block; then the group is stopped and nothing of it may survive.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pillars.pipelines.local.stack import Ports
from tests.conftest import require_tool
from tests.processes import ServerProcess, free_port

ROOT = Path(__file__).resolve().parents[2]
READMES = ("README.md", "examples/custom-task/README.md")
SHELL_FENCES = ("sh", "shell", "console", "zsh", "shell-session")
"""Fences that would hide commands from the test: refused, so that every command is in a ```bash block."""
VENV_BIN = Path(sys.executable).parent

# ---- what cannot run here, what the test's set-up already did, and the changes made to commands --------------

CANNOT_RUN: dict[str, str] = {
    r"^make test\b": "the whole test suite, this module included",
    r"^make images\b": "builds four images with docker/podman from base images pulled from the network "
                       "(the exact builds are checked with a recording engine in tests/cluster/test_make_images.py)",
    r"^for image in .*docker push": "pushes images to a registry",
    r"^docker build\b": "needs a container engine and pulls its BASE image from ghcr.io",
    r"^pillars submit\b": "needs a Kubeflow Pipelines API server (--host https://kfp.example.com) and has no "
                          "offline form; `pillars compile`, run here, is the same pipeline without the upload",
    r"^pillars run .*launcher=trainjob": "creates a Kubeflow Trainer TrainJob: needs a cluster with the Trainer",
    r"^pillars serve \S+ --workers \d+$": "a second server on the default ports, which the server the README "
                                           "starts just before still holds; --workers is tested through a real "
                                           "2-worker server in tests/serving/test_workers.py",
}
"""Commands that cannot run on one machine without a cluster or the network: regex -> why."""

DONE_BY_SETUP: dict[str, str] = {
    r"^\. \.venv/bin/activate$": "every command runs with this venv's bin first on PATH, which is what "
                                 "activate does (the test's interpreter is the venv `make install` built)",
    r"^pip install -e examples/custom-task$": "`make install` installs it in the venv (Makefile); the test checks "
                                              "its outcome (the entry point churn resolves). Running it from the "
                                              "temporary copy would point the venv's editable install there",
}
"""Commands whose effect the test's environment already has: regex -> why; the test checks the effect."""


@dataclasses.dataclass(frozen=True)
class Substitution:
    pattern: str
    replacement: str | Callable[[re.Match[str], dict[int, int]], str]
    reason: str


STACK_PORTS = {field.name: field.default for field in dataclasses.fields(Ports)}
"""The default ports of ``pillars up`` (mlflow 5000, http 8080, grpc 8081, console 8700, ...); ``mlflow ui``,
``pillars serve`` and ``pillars console`` default to the same numbers."""
DEFAULT_PORTS = tuple(sorted(set(STACK_PORTS.values())))


def _ports_of_up(match: re.Match[str], ports: dict[int, int]) -> str:
    return match[0] + " --ports " + ",".join(f"{name}={ports[port]}" for name, port in STACK_PORTS.items())


SUBSTITUTIONS: tuple[Substitution, ...] = (
    Substitution(r"^make demo$", "pillars demo --epochs 3",
                 "`make demo` is `make install` (pip from the network; done, the test runs in the venv it built) "
                 "then `pillars demo`; 3 epochs instead of 30 for speed (the gate still approves, so it serves)"),
    Substitution(r"\bepochs=15\b", "epochs=2", "speed: 2 epochs show the same steps"),
    Substitution(r"^pillars run (?!.*epochs=)(.*)$", r"pillars run \1 --param epochs=2",
                 "speed: a run without epochs trains 2 (the task's default is 10-30)"),
    Substitution(r"^helm install\b", "helm template", "offline form: renders what would be installed, no cluster"),
    Substitution(r"^kubectl apply -k\b", "kubectl kustomize", "offline form: builds what would be applied"),
    Substitution(r"^pillars serve (\S+)$", r"pillars serve \1 --http-port 8080 --grpc-port 8081",
                 "the server's default ports, made explicit so that the next rule can move them"),
    Substitution(r"^mlflow ui (.*)$", r"mlflow ui \1 --port 5000", "mlflow ui's default port, made explicit"),
    Substitution(r"^pillars console$", "pillars console --port 8700", "the console's default port, made explicit"),
    Substitution(r"^pillars up --model \S+", _ports_of_up, "the stack's default ports, made explicit"),
    Substitution(rf"(?<![\d.])({'|'.join(map(str, DEFAULT_PORTS))})(?!\d)",
                 lambda m, ports: str(ports[int(m[1])]),
                 "each default port becomes a free one (the same one in every command): other tests and other "
                 "checkouts run servers on this machine at the same time"),
)
"""Every change made to a README command before it runs, in the order applied."""

EXPECTED_TO_FAIL: dict[str, str] = {}
"""Commands known to fail until another branch is merged (strict: they fail the suite once they pass)."""

LONG_LIVED: dict[str, str] = {
    r"^pillars serve .*--http-port (\d+)": "http://127.0.0.1:{}/v2/health/ready",
    r"^pillars console --port (\d+)": "http://127.0.0.1:{}/healthz",
    r"^mlflow ui .*--port (\d+)": "http://127.0.0.1:{}/health",
}
"""Commands that run until stopped: regex (its group is the port) -> the URL that answers 200 when ready."""

RUNS = (r"^pillars (run|models|compile|deploy .*--dry-run|optimize|demo|tasks|up|down)\b", r"^helm template\b",
        r"^kubectl kustomize\b", r"^pytest\b", r"^curl\b")
"""Commands run to completion (exit 0). Anything matching no rule at all fails: add it to a table above."""

TOOLS: dict[str, tuple[str, ...]] = {
    r"^helm\b": ("helm",),
    r"^kubectl\b": ("kubectl",),
    r"^curl\b": ("curl",),
    r"^pillars up\b": ("prometheus",),  # and Alertmanager (prometheus-alertmanager or alertmanager)
}
"""Programs besides the venv's that a command needs: missing, its test is skipped, or fails when ``CI`` is set."""

EXPECT: dict[str, tuple[str, ...]] = {
    r"^pillars run training --task digits --param epochs=2$": (
        r"(?m)^  prepare-data +ok ", r"(?m)^  train +ok +[\d.]+s +2/2 epoch", r"(?m)^  promote +ok ",
        r"(?m)^model +digits v1 +aliases: challenger, champion$", r"(?m)^train +1 process on cpu, best epoch [12]$",
        r"(?m)^log +\S+/\.pillars/logs/run-training-"),
    # the same code as 2 DDP processes, through the pipeline (DDP's arithmetic: tests/components/test_distributed.py)
    r"^pillars run training --task digits --param nproc=2 --param epochs=2$": (
        r"(?m)^  train +ok ", r"(?m)^model +digits v2 ", r"(?m)^train +2 processes on cpu, best epoch [12]$"),
    r"^pillars models list$": (r"(?m)^digits +latest v\d+ +.*champion=v\d+",),
    r"^pillars models show digits$": (r"(?m)^digits v1 .*gate=true",),
    r"^pillars models rollback digits --to 3$": (r"digits: champion v\d+ -> v3 \(rolled back\)",),
    r"^curl ": (r'"name": ?"label"',),
    r"^pillars deploy .*--dry-run": (r"(?m)^kind: InferenceService$",),
}
"""What some commands' output must show besides their exit status: regex on the command -> on its output."""


# ---- extraction ------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Command:
    """One command of a README: where it is (file, first line, which bash block) and its words."""

    readme: str
    line: int
    block: int
    words: tuple[str, ...]

    @property
    def text(self) -> str:
        """The command as one line, comments and continuations gone (quoted newlines kept)."""
        words = self.words[:-1] if self.background else self.words
        text = shlex.join(words) if words[:1] != ("for",) else " ".join(words)  # `;` of a loop is not quoted
        return f"{text} &" if self.background else text

    @property
    def background(self) -> bool:
        return self.words[-1] == "&"

    def __str__(self) -> str:
        return f"{self.readme}:{self.line}: {self.text}"


def _complete(text: str) -> bool:
    """Whether ``text`` is a whole command: no trailing backslash, no open quote, no open ``for``/``do``."""
    if text.rstrip().endswith("\\"):
        return False
    try:
        words = shlex.split(text, comments=True)
    except ValueError:  # No closing quotation
        return False
    bare = [w.rstrip(";") for w in words]
    return bare.count("do") == bare.count("done")


def _optional_arguments(words: list[str]) -> list[str]:
    """``[--gpus 1]`` -> ``--gpus 1``: the README marks optional arguments with brackets; the test passes them."""
    out, inside = [], False
    for word in words:
        if not inside and word.startswith("[-"):
            word, inside = word[1:], True
        if inside and word.endswith("]"):
            word, inside = word[:-1], False
        out.append(word)
    return out


def extract(readme: str) -> list[Command]:
    """Every command in the ```bash blocks of ``readme`` (a path relative to the checkout), in order."""
    commands: list[Command] = []
    lines = (ROOT / readme).read_text().splitlines()
    block, in_bash, pending, start = 0, False, "", 0
    for number, line in enumerate(lines, 1):
        if line.startswith("```"):
            language = line[3:].strip()
            if language in SHELL_FENCES:
                raise AssertionError(f"{readme}:{number}: a ```{language} block: write shell commands in ```bash "
                                     "blocks, which this test runs")
            if in_bash and pending.strip():
                raise AssertionError(f"{readme}:{start}: the bash block ends inside a command: {pending!r}")
            in_bash = line.strip() == "```bash"
            block += in_bash
            continue
        if not in_bash:
            continue
        if not pending:
            start = number
        pending += line + "\n"
        if _complete(pending):
            words = _optional_arguments(shlex.split(pending.replace("\\\n", " "), comments=True))
            if words:
                commands.append(Command(readme, start, block, tuple(words)))
            pending = ""
    return commands


def substitute(text: str, ports: dict[int, int]) -> str:
    """``text`` with every :data:`SUBSTITUTIONS` rule applied."""
    for rule in SUBSTITUTIONS:
        replacement = rule.replacement
        if callable(replacement):
            fn = replacement
            text = re.sub(rule.pattern, lambda m, fn=fn: fn(m, ports), text, flags=re.S)
        else:
            text = re.sub(rule.pattern, replacement, text, flags=re.S)
    return text


def classify(text: str) -> tuple[str, str]:
    """``(kind, detail)`` of a substituted command: ``cannot``/``setup`` (why), ``long`` (the ready URL), ``run``.

    Raises:
        AssertionError: no rule classifies the command (add it to a table of this module).
    """
    for table, kind in ((CANNOT_RUN, "cannot"), (DONE_BY_SETUP, "setup")):
        for pattern, why in table.items():
            if re.search(pattern, text, re.S):
                return kind, why
    for pattern, url in LONG_LIVED.items():
        if match := re.search(pattern, text, re.S):
            return "long", url.format(match[1])
    if any(re.search(pattern, text, re.S) for pattern in RUNS):
        return "run", ""
    raise AssertionError(f"no rule of tests/readme/test_readme.py says how to run {text!r}: add it to RUNS, "
                         "LONG_LIVED, CANNOT_RUN (with the reason) or DONE_BY_SETUP")


COMMANDS = [command for readme in READMES for command in extract(readme)]
_PLACEHOLDER_PORTS = {port: 40000 + port for port in DEFAULT_PORTS}  # for classifying at collection time


# ---- the session: one fresh folder, the servers a reader has running ---------------------------------------------

class Session:
    """A reader's terminal: a fresh copy of the checkout, a clean environment, the servers left running."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PILLARS_"))}
        self.env["PATH"] = f"{VENV_BIN}{os.pathsep}{self.env.get('PATH', '')}"
        self.env.pop("VIRTUAL_ENV", None)
        self.ports = {port: free_port() for port in DEFAULT_PORTS}
        self.running: list[ServerProcess] = []
        self.block: tuple[str, int] | None = None
        self.count = 0

    def enter(self, command: Command) -> None:
        """Stop what a previous block left running when ``command`` starts another block."""
        if self.block != (command.readme, command.block):
            self.stop_all()
            self.block = (command.readme, command.block)

    def run(self, text: str, timeout: float = 900) -> subprocess.CompletedProcess:
        """Run ``text`` to completion in its own process group (killed whole if it overruns); assert exit 0."""
        proc = subprocess.Popen(["bash", "-c", text], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=self.env, cwd=self.folder, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            raise AssertionError(f"{text} ran over {timeout}s:\n{out[-3000:]}\n{err[-3000:]}") from None
        assert proc.returncode == 0, f"exit {proc.returncode}: {text}\n--- stdout\n{out[-3000:]}\n--- stderr\n{err[-3000:]}"
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def start(self, text: str, ready_url: str) -> None:
        """Start a long-lived command (stopping the one before it) and wait until ``ready_url`` answers."""
        self.stop_all()
        self.count += 1
        server = ServerProcess(["bash", "-c", f"exec {text}"], log_path=self.folder / f".readme-{self.count}.log",
                               env=self.env, cwd=self.folder, inherit_env=False)
        self.running.append(server)
        server.wait_http(ready_url, timeout=240)

    def stop_all(self) -> None:
        while self.running:
            self.running.pop().stop()


def _fresh_checkout(folder: Path) -> None:
    """The checkout's files (tracked, and untracked but not ignored) copied into ``folder``: a fresh clone."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, folder / name)


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    folder = tmp_path_factory.mktemp("readme")
    _fresh_checkout(folder)
    assert not (folder / ".pillars").exists()
    session = Session(folder)
    try:
        yield session
    finally:
        session.stop_all()
        if (folder / ".pillars" / "stack").exists():  # `pillars down` did not run (an earlier failure)
            subprocess.run(["bash", "-c", "pillars down"], env=session.env, cwd=folder, timeout=120,
                           capture_output=True)


# ---- the tests ---------------------------------------------------------------------------------------------------

def test_every_readme_command_is_extracted_and_classified() -> None:
    """The extraction sees every command (the fixed ones among them), and every one has a rule."""
    texts = [c.text for c in COMMANDS]
    assert "pillars run training --task churn_example.tasks:churn" in texts
    assert not any(re.match(r"pillars run (?!training|retraining)", t) for t in texts), texts
    assert sum(t.startswith("curl ") for t in texts) == 2 and all("\n" in t for t in texts if t.startswith("curl"))
    assert [c.text for c in COMMANDS if c.text.startswith("for ")] == [
        "for image in pillars:0.1.0 pillars:0.1.0-cuda pillars-serving:0.1.0 pillars-serving:0.1.0-cuda; do "
        "docker push registry.example.com/ml/$image done"]
    for command in COMMANDS:
        classify(substitute(command.text.removesuffix(" &"), _PLACEHOLDER_PORTS))


def _marks(command: Command) -> list[pytest.MarkDecorator]:
    marks = [pytest.mark.slow]
    for pattern, why in EXPECTED_TO_FAIL.items():
        if re.search(pattern, command.text):
            marks.append(pytest.mark.xfail(reason=why, strict=True))
    return marks


def _runnable(command: Command) -> bool:
    """False for commands CANNOT_RUN lists (no test runs them); unclassified ones get a test, which fails."""
    try:
        return classify(substitute(command.text.removesuffix(" &"), _PLACEHOLDER_PORTS))[0] != "cannot"
    except AssertionError:
        return True


@pytest.mark.parametrize("command", [pytest.param(c, id=f"{c.readme}:{c.line}", marks=_marks(c))
                                     for c in COMMANDS if _runnable(c)])
def test_readme_command_runs(command: Command, session: Session) -> None:
    session.enter(command)
    text = substitute(command.text.removesuffix(" &"), session.ports)
    kind, detail = classify(text)
    if kind == "setup":
        if "examples/custom-task" in text:
            from pillars.components.task import load_task

            assert type(load_task("churn")).__module__ == "churn_example.tasks"
        else:
            assert (VENV_BIN / "pillars").exists()
        return
    if command.background:
        assert kind == "long", f"a command run in the background needs a LONG_LIVED rule (when is it ready?): {text}"
    if kind == "long":
        session.start(text, detail)
        return
    for pattern, tools in TOOLS.items():
        if re.search(pattern, text):
            for tool in tools:
                require_tool(tool)
    result = session.run(text)
    output = result.stdout + result.stderr
    for pattern, expected in EXPECT.items():
        if re.search(pattern, text, re.S):
            for regex in expected:
                assert re.search(regex, output), f"{regex!r} not in the output of {text}:\n{output[-4000:]}"
    if text.startswith("pillars up"):
        urls = dict(re.findall(r"^  (\w+) +(http://\S+)$", result.stdout, re.M))
        assert f"http://127.0.0.1:{session.ports[8080]}" == urls.get("model_http"), result.stdout


def test_the_session_left_no_registry_elsewhere(session: Session) -> None:
    """Every command found the store the first run wrote in the folder (``./.pillars``), none made another."""
    assert (session.folder / ".pillars" / "mlflow.db").exists()
    assert not (session.folder / "mlflow.db").exists() and not (session.folder / "mlruns").exists()
