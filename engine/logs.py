"""One way to log, for every command and every Ray worker.

stdout carries a command's result (its JSON line or results table, written with `result`) and
nothing else: in a command's process, file descriptor 1 goes to the log file too, because
libraries print there (DeepSpeed's accelerator notice and op-builder messages). People read
stderr, where every line has one format, `HH:MM:SS [stage] message`, and only this project's
messages and progress appear. Everything else goes to the command's log file
(`$PROTLM_LOG_DIR/<stage>.log`, default `runs/logs/`): Ray's, DeepSpeed's and Python's warnings,
and whatever native code writes to file descriptor 2 (Ray's C++ core worker prints errors there
that a user cannot act on). Ray's own processes keep their logs in Ray's session directory, whose
path the log file records.

Training runs on Ray workers, whose output Ray forwards to the driver with a `(pid=...)` prefix:
the driver passes on only lines in this format (rank 0's progress) and drops the rest, which
stays in the session directory's worker-*.out/err files.
"""
from __future__ import annotations

import io
import logging
import os
import re
import sys
import time
from pathlib import Path

STAGES = ("data_prep", "pretrain", "multitask", "finetune", "engine", "ops")
FORMAT = "%(asctime)s [%(stage)s] %(message)s"
DATEFMT = "%H:%M:%S"
OUR_LINE = re.compile(r"^\d\d:\d\d:\d\d \[(%s)\] " % "|".join(STAGES))
LOG_DIR = "PROTLM_LOG_DIR"
_CONSOLE_FD = "PROTLM_CONSOLE_FD"  # set for the training child: the terminal's stderr
_LOG_FILE = "PROTLM_LOG_FILE"      # set for the training child: the parent's log file
# Ray Data's own progress (its non-terminal form logs through these) is shown like ours
_SHOWN_FOREIGN = ("ray.data._internal.progress",)

_state: dict = {}


class _Formatter(logging.Formatter):
    """FORMAT with `stage` = the first part of the logger name; warnings and errors say so."""

    def __init__(self):
        super().__init__(FORMAT, DATEFMT)

    def format(self, record: logging.LogRecord) -> str:
        top = record.name.split(".")[0]
        record.stage = top if top in STAGES else ".".join(record.name.split(".")[:2])
        text = super().format(record)
        if record.levelno >= logging.WARNING:
            head = f"[{record.stage}] "
            text = text.replace(head, f"{head}{record.levelname.lower()}: ", 1)
        return text


class _Ours(logging.Filter):
    last_foreign = ""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.split(".")[0] in STAGES:
            return True
        # of Ray Data's progress block (logged every 15 s where stdout is no terminal) only the
        # total, once it has moved
        message = record.getMessage()
        if not record.name.startswith(_SHOWN_FOREIGN) or not message.startswith("Total Progress") \
                or message.startswith("Total Progress: 0/") or message == self.last_foreign:
            return False
        self.last_foreign = message
        return True


def console():
    """The stream people read (the terminal's stderr), whatever fd 2 now points to."""
    return _state.get("console") or sys.stderr


def result(text: str) -> None:
    """Write a command's result to stdout (the only thing that goes there)."""
    stream = _state.get("stdout") or sys.stdout
    stream.write(text if text.endswith("\n") else text + "\n")
    stream.flush()


def log_file() -> Path | None:
    return _state.get("path")


def to_file(text: str) -> None:
    """A line for the log file only (what the console already showed in its own words)."""
    if _state.get("file"):
        _state["file"].write(text.rstrip("\n") + "\n")


def setup(stage: str) -> None:
    """Console + log file for a command (called once by engine.errors.run_cli). Inside pytest only
    the console handler is set: no file, no file descriptor touched."""
    if _state.get("stage"):
        return
    _state["stage"] = stage
    inherited = os.environ.get(_CONSOLE_FD)  # the training child: the parent's terminal and file
    # a command's own process only: inside pytest (even with -s) the session's streams stay
    fh = None
    if sys.stderr is sys.__stderr__ and "_pytest" not in sys.modules:
        path = Path(os.environ.get(_LOG_FILE) or Path(os.environ.get(LOG_DIR) or "runs/logs") / f"{stage}.log")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fh = open(path, "a", buffering=1, encoding="utf-8", errors="backslashreplace")
        except OSError:
            pass  # a read-only place: the terminal only
    if fh is not None:
        _state.update(path=path, file=fh)
        _redirect(fh, int(inherited) if inherited else None)
        if not inherited:
            fh.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(sys.argv)}\n")
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    shown = logging.StreamHandler(_ConsoleProxy())
    shown.setFormatter(_Formatter())
    shown.addFilter(_Ours())
    root.addHandler(shown)
    if fh is not None:
        kept = logging.StreamHandler(fh)
        kept.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        kept.setLevel(logging.INFO)
        root.addHandler(kept)
    logging.captureWarnings(True)  # library warnings: the file, not the terminal
    for noisy in ("deepspeed", "DeepSpeed", "torch", "urllib3", "filelock", "wandb"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _redirect(fh, console_fd: int | None) -> None:
    """Keep the terminal for people (sys.stderr) and stdout for the result (`result`); whatever
    else is written to fd 1 or 2 (Ray's C++, DeepSpeed's prints) lands in the log file."""
    if console_fd is None:
        console_fd = os.dup(2)
        sys.stdout.flush()
        _state["stdout"] = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8", closefd=False)
    terminal = _state["stdout"].isatty() if "stdout" in _state else False
    os.dup2(fh.fileno(), 1)
    # libraries that ask whether stdout is a terminal (Ray Data: bars or logged progress) get the
    # answer for the real one
    _state["python_stdout"] = sys.stdout  # kept: its collection would close fd 1
    sys.stdout = _LibraryStdout(sys.stdout.buffer, terminal)
    sys.stderr.flush()
    os.dup2(fh.fileno(), 2)
    _state["console"] = sys.stderr = os.fdopen(console_fd, "w", buffering=1, encoding="utf-8",
                                                errors="backslashreplace", closefd=False)
    _state["console_fd"] = console_fd


class _LibraryStdout(io.TextIOWrapper):
    """fd 1 (now the log file) for libraries' prints, saying whether the real stdout is a tty."""

    def __init__(self, buffer, terminal: bool):
        super().__init__(buffer, encoding="utf-8", errors="backslashreplace", line_buffering=True)
        self._terminal = terminal

    def isatty(self) -> bool:
        return self._terminal


class _ConsoleProxy:
    """The console stream looked up at write time (pytest swaps sys.stderr between tests)."""

    def write(self, text: str) -> int:
        return console().write(text)

    def flush(self) -> None:
        console().flush()


def child_env(env: dict) -> tuple[dict, tuple[int, ...]]:
    """Environment and fds for the training child: it shows on the same terminal and appends to
    the same log file."""
    if "console_fd" not in _state:
        return env, ()
    env = {**env, _CONSOLE_FD: str(_state["console_fd"]), _LOG_FILE: str(_state["path"])}
    return env, (_state["console_fd"],)


def setup_child() -> None:
    """In the training child (engine.launch): the parent's console and log file, if it had them."""
    if os.environ.get(_CONSOLE_FD):
        setup("engine")


def setup_worker() -> None:
    """On a Ray Train worker: our loggers print FORMAT lines to stderr, which Ray forwards to the
    driver (and keeps in the session's worker logs)."""
    if _state.get("worker"):
        return
    _state["worker"] = True
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    for stage in STAGES:
        logger = logging.getLogger(stage)
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
        logger.propagate = False
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.ERROR)


def quiet_ray() -> None:
    """Ray's Python loggers write to the log file instead of the terminal (call after importing
    ray.data, whose import installs a console handler). Ray Data's own progress stays visible."""
    import ray.data  # noqa: F401  (its import configures the 'ray.data' logger)

    for name in ("ray", "ray.data", "ray.train", "ray.tune"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                logger.removeHandler(handler)
        logger.propagate = True  # to our handlers: the file, and the console for progress only


def forward_worker_lines() -> None:
    """Show only this project's lines among what Ray forwards from its workers (dropping Ray's
    controller chatter, tracebacks of its helper actors, library warnings), once each: Ray Train
    echoes a worker's line on stdout and stderr. Relies on Ray's driver-side dispatcher; where that
    is missing, Ray's own printing stays."""
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return
    seen: list[str] = []

    def show(data: dict) -> None:
        for line in data.get("lines", ()):
            if not OUR_LINE.match(line) or line in seen:
                continue
            seen.append(line)
            del seen[:-200]
            console().write(line + "\n")
            to_file(line)

    try:
        dispatcher.remove_handler("ray_print_logs")
    except (KeyError, AttributeError):
        pass
    dispatcher.add_handler("protlm_print_logs", show)


def format_seconds(seconds: float) -> str:
    """'42s', '3m05s', '1h02m': short enough for a progress line."""
    s = int(round(max(seconds, 0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class StepProgress:
    """Rank 0's progress line: step k of n, the headline metrics, throughput and an ETA measured
    from the steps this process has run (start-up and a resumed run's earlier steps excluded)."""

    SHOWN = ("loss", "joint", "ce", "kl", "eval_loss")

    def __init__(self, total: int):
        self.total = max(int(total), 1)
        self.start: tuple[int, float] | None = None

    def line(self, step: int, metrics: dict) -> str:
        now = time.monotonic()
        if self.start is None:  # the rate counts from the first line: start-up is no training
            self.start = (step, now)
        done, since = step - self.start[0], now - self.start[1]
        parts = [f"step {step}/{self.total} ({100 * step / self.total:.0f}%)"]
        parts += [f"{k} {metrics[k]:.4g}" for k in self.SHOWN if isinstance(metrics.get(k), float)]
        parts += [f"{k} {v:.4g}" for k, v in metrics.items()
                  if k.startswith("eval_") and k != "eval_loss" and isinstance(v, float)][:3]
        if isinstance(metrics.get("residues_per_s"), (int, float)):
            parts.append(f"{metrics['residues_per_s']:.3g} res/s")
        if done > 0 and since > 0 and step < self.total:
            parts.append(f"ETA {format_seconds((self.total - step) * since / done)}")
        return ", ".join(parts)


class CountProgress:
    """'done/total (pct), rate, ETA' every `every` seconds for work counted in items (proteins)."""

    def __init__(self, total: int, what: str, logger: logging.Logger, every: float = 10.0):
        self.total, self.what, self.logger, self.every = max(int(total), 1), what, logger, every
        self.done = 0
        self.start = self.last = time.monotonic()

    def add(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last < self.every or self.done >= self.total:
            return
        self.last = now
        rate = self.done / max(now - self.start, 1e-9)
        self.logger.info(f"{self.what}: {self.done}/{self.total} ({100 * self.done / self.total:.0f}%), "
                         f"{rate:.3g}/s, ETA {format_seconds((self.total - self.done) / max(rate, 1e-9))}")
