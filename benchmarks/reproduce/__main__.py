"""``python benchmarks/reproduce ...`` (or ``python -m reproduce ...`` from ``benchmarks/``): see ``--help``."""

import os
import sys

if __package__ in (None, ""):  # run as a directory: import the package from benchmarks/, beside baselines.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from reproduce.cli import main

main()
