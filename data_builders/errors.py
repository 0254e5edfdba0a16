"""The one user-facing error type: its message says what is wrong, where, and how to fix it.

The CLI prints it without a traceback and exits 2. Bad *records* are never errors: they are quarantined.
"""


class TrajtuneError(Exception):
    """A problem the user can fix (bad flag, missing file, template that cannot be masked...)."""
