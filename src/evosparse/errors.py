"""Exceptions that the command line turns into a one-line message and an exit status."""


class EvosparseError(Exception):
    """Any failure evosparse reports to a user without a traceback (exit status 1)."""

    exit_code = 1


class UsageError(EvosparseError):
    """Bad usage, configuration or data: the user can fix it (exit status 2)."""

    exit_code = 2


class DataError(UsageError):
    """A dataset is missing, malformed, or fails verification."""
