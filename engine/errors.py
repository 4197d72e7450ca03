"""The one base class of errors a user can cause: bad file, bad config, missing tool, old format.

Every stage's CLI (`python -m data_prep|pretrain|multitask|finetune`) catches `UserError` alone and
prints its message as one line with exit code 2. Anything else is a bug and keeps its traceback,
which is why no CLI catches `Exception`. Subclasses (ConfigError, DataError, CheckpointError,
LaunchError, DataPrepError, FinetuneError) say where the problem was found; their messages name the
file, line or key.
"""
from __future__ import annotations

from typing import Callable


class UserError(Exception):
    """A problem the user can fix; the message is one line naming the file, line or key."""


def run_cli(body: Callable[[], object], stage: str | None = None) -> int:
    """Run a CLI body: its exit code (0 when it returns none); 2 with one line on stderr for a
    `UserError` or a missing file (FileNotFoundError names the path the user gave). Logging is
    set up first (engine.logs: the console for people, the log file for everything else)."""
    from .logs import console, setup, to_file

    if stage:
        setup(stage)
    try:
        code = body()
    except (UserError, FileNotFoundError) as err:
        text = " ".join(str(err).split()) or type(err).__name__
        print(f"error: {text}", file=console(), flush=True)
        to_file(f"error: {text}")
        return 2
    return code if isinstance(code, int) else 0
