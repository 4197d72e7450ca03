"""finetune's user errors (bad file, bad config, missing model): the project's one `UserError` type."""
from engine.errors import UserError


class FinetuneError(UserError):
    """Printed as one line by the CLI (exit code 2); never a traceback."""
