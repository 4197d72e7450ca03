"""The one error type a user of finetune can cause (bad file, bad config, missing model)."""


class FinetuneError(Exception):
    """Printed as one line by the CLI (exit code 2); never a traceback."""
