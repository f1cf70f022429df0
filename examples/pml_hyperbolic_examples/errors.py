"""The runner's user-facing error."""


class UsageError(Exception):
    """A problem with what the user asked for (a missing dataset or weights file, nothing to resume, ...): the
    command line prints the message, without a traceback, and exits with status 2."""
