"""Sub-commands of the ``amos`` command line tool; see :mod:`amosopt.cli`."""
