"""CLI error type."""


class CLIError(Exception):
    """A user error: printed as ``bnnkit: error: ...`` with exit status 2, no traceback."""
