"""CLI error type."""

from bnnkit.errors import BnnkitError


class CLIError(BnnkitError):
    """A command line that cannot be carried out as given (printed as one line, exit 2)."""
