"""``python benchmarks/speed ARGS``: the command line of :mod:`speed.cli`."""

import os
import sys

# Run as a directory, this folder is sys.path[0]: put benchmarks/ there instead, so that the modules are
# imported as ``speed.*`` (and none of their short names shadows another top-level module).
sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from speed.cli import main  # noqa: E402 - needs the path above

main()
