"""The one exception for bad user input (a missing file, a corrupt dataset, a bad setting).

The command line prints its message as ``fastnas: error: <message>`` and exits 2, without a
traceback; library callers can catch it like any exception. The message is one line that names
what is wrong and, where it helps, what to do instead.
"""


class UserError(Exception):
    """Bad user input, reported as one line."""


__all__ = ["UserError"]
