"""``python -m amosopt``: the ``amos`` command line tool (:mod:`amosopt.cli`), for environments
where the console script is not on ``PATH``."""

import sys

from amosopt.cli import main

if __name__ == "__main__":
    sys.exit(main())
