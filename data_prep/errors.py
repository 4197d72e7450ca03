"""The error type for problems a user can cause (bad file, missing tool, bad option).

The CLI catches it and prints its one-line message (naming the file/line/tool) with exit code 2.
"""


from engine.errors import UserError


class DataPrepError(UserError):
    """A user-facing failure; str(err) is the whole message, it names the file, line or tool."""
