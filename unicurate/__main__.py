"""``python -m unicurate``: the ``unicurate`` command, for environments where the script is not on PATH."""

import sys

from unicurate.cli import main

sys.exit(main())
