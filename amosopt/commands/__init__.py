"""Sub-commands of the ``amos`` command line tool; see :mod:`amosopt.cli`."""


class CommandError(Exception):
    """A user error: printed as one line, exit status 2, no traceback."""
