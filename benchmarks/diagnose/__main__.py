"""``python benchmarks/diagnose ...`` (or ``python -m diagnose ...`` from ``benchmarks/``): see ``--help``."""

import os
import sys

if __package__ in (None, ""):  # run as a directory: import the package from benchmarks/
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from diagnose.cli import main

main()
