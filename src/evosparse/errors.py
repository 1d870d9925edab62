"""Exceptions that the command line turns into a one-line message and an exit status."""


class EvosparseError(Exception):
    """Any failure evosparse reports to a user without a traceback (exit status 1)."""

    exit_code = 1


class UsageError(EvosparseError, ValueError):
    """Bad usage, configuration or data: the user can fix it (exit status 2).

    Also a ``ValueError``, so a library user's ``except ValueError`` catches every bad argument.
    """

    exit_code = 2


class DataError(UsageError):
    """A dataset is missing, malformed, or fails verification."""


class InvariantError(EvosparseError):
    """An invariant of the library broke (a bug, not bad input): masked weights not zero, a budget drifted,
    a rewiring that prunes an inactive or grows an active connection.

    Raised explicitly rather than asserted, so the checks also run under ``python -O``.
    """
