"""What the real-data benchmarks share: running `omni` as a user would, and the machine's description.

Each CLI step runs as a subprocess (`python -m training.cli`, the same code as `.venv/bin/omni`)
with `OMNI_WORKDIR` set to the benchmark's own scratch folder, so its MLflow store and models never
touch anyone else's. A step that fails is recorded (exit status, seconds, the last lines of its
output) instead of stopping the benchmark: the baselines are still worth reporting.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TAIL_LINES = 15
STDOUT_TAIL_LINES = 40  # what `omni train` prints last: its metrics table, decisions and notes


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def machine() -> str:
    """Architecture, cores, memory and GPU of this machine, in the words the other benchmarks use."""
    cores = os.cpu_count() or 0
    try:
        memory = f"{round(os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 1024**3)} GB"
    except (ValueError, OSError):
        memory = "unknown memory"
    gpu = "GPU" if Path("/dev/nvidia0").exists() else "no GPU"
    return f"{platform.machine()}, {cores} cores, {memory}, {gpu}, Python {platform.python_version()}"


# a tqdm progress bar ("train:  25%|██▌   | 2/8 [00:02<00:09,  1.54s/stage, features]")
PROGRESS_BAR = re.compile(r"[\w\- ]*:\s+\d+%\|[^|]*\|[^\]\n]*\]")


def tail(text: str, lines: int = TAIL_LINES) -> str:
    """The last `lines` non-empty lines, progress bars left out (what remains of a line a bar
    shared, such as an error message printed after it, is kept)."""
    kept = [PROGRESS_BAR.sub("", segment).rstrip() for segment in re.split(r"[\r\n]", text)]
    return "\n".join([line for line in kept if line.strip()][-lines:])


@dataclass
class StepResult:
    name: str
    command: str  # as a user would type it (`omni ...`), paths as given
    exit_status: int
    seconds: float
    stdout_tail: str
    stderr_tail: str

    @property
    def ok(self) -> bool:
        return self.exit_status == 0

    def as_dict(self) -> dict:
        return asdict(self)


class Omni:
    """`omni` commands run in a subprocess against one working folder (`OMNI_WORKDIR`).

    `repo`: the checkout whose code runs (its folder goes first on PYTHONPATH), so the same
    benchmark can drive another worktree's CLI.
    """

    def __init__(self, workdir: Path, repo: Path = REPO, python: str = sys.executable):
        self.workdir = Path(workdir)
        self.repo = Path(repo)
        self.python = python
        self.steps: list[StepResult] = []

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["OMNI_WORKDIR"] = str(self.workdir)
        env["BENTOML_HOME"] = str(self.workdir / "bentoml")
        env.pop("OMNI_TRACKING_URI", None)  # the working folder's own SQLite store
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.repo), env.get("PYTHONPATH")]))
        env.setdefault("OPENBLAS_NUM_THREADS", "1")
        env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        env.setdefault("BENTOML_DO_NOT_TRACK", "True")
        return env

    def run(self, name: str, *args: str, timeout: float | None = None) -> StepResult:
        """Run `omni ARGS`; never raises on a failing command (its exit status is recorded)."""
        argv = [self.python, "-m", "training.cli", *args]
        log(f"[{name}] omni {' '.join(args)}")
        started = time.perf_counter()
        try:
            done = subprocess.run(
                argv, cwd=self.repo, env=self.env(), capture_output=True, text=True, timeout=timeout
            )
            status, out, err = done.returncode, done.stdout, done.stderr
        except subprocess.TimeoutExpired as exc:
            status = 124
            out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
            err = (exc.stderr.decode() if isinstance(exc.stderr, bytes) else exc.stderr or "") + (
                f"\n(stopped by the benchmark after {timeout} s)"
            )
        step = StepResult(
            name=name,
            command="omni " + " ".join(args),
            exit_status=status,
            seconds=round(time.perf_counter() - started, 1),
            stdout_tail=tail(out, STDOUT_TAIL_LINES),
            stderr_tail=tail(err),
        )
        self.steps.append(step)
        verdict = "ok" if step.ok else f"FAILED (exit {status}): {step.stderr_tail[-400:]}"
        log(f"[{name}] {step.seconds} s, {verdict}")
        return step

    def has_option(self, command: str, option: str) -> bool:
        """Whether `omni COMMAND --help` lists `option` (features other work may add later)."""
        done = subprocess.run(
            [self.python, "-m", "training.cli", command, "--help"],
            cwd=self.repo,
            env=self.env(),
            capture_output=True,
            text=True,
        )
        return done.returncode == 0 and option in done.stdout

    def summary(self) -> dict[str, dict]:
        """Per step: command, exit status, seconds and (for failures, or short outputs) the tails."""
        out = {}
        for step in self.steps:
            row = {"command": step.command, "exit_status": step.exit_status, "seconds": step.seconds}
            if not step.ok:
                row["stderr_tail"] = step.stderr_tail
            row["stdout_tail"] = step.stdout_tail
            out[step.name] = row
        return out
