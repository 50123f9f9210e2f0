"""``python benchmarks/matrix ...`` (or ``python -m matrix ...`` from ``benchmarks/``): see ``--help``."""

import os
import sys

if __package__ in (None, ""):  # run as a directory: import the package from benchmarks/, beside reproduce/
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from matrix.cli import main

main()
