"""The one exception type the CLI turns into a one-line error and exit code."""


class PrismError(Exception):
    """A user-facing error: its message is printed as one line, no traceback."""

    exit_code = 2
