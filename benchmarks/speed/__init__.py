"""Speed of meta-training and test-time fitting, one module per measurement.

Run it as a script (``python benchmarks/speed --help``); the modules:

* :mod:`speed.cli`: the command line, and one subprocess per thread count for ``--threads 1,2``;
* :mod:`speed.backends`: the default measurement, the backends against a plain per-signal loop;
* :mod:`speed.phases`: ``--phases``, where one meta-step's time goes;
* :mod:`speed.ops`: ``--ops``, the top-level aten ops one meta-step dispatches;
* :mod:`speed.compare`: ``--compare``, the speed modes against Learnit;
* :mod:`speed.fit`: ``--fit``, time to quality of test-time fitting schedules;
* :mod:`speed.rules`: the error-sampling selection rule ``--fit-sampled`` registers (also the docs' and the
  tests' example of a user rule);
* :mod:`speed.common`: timing, the batch, the two methods' settings, JSON output.

Importing the package imports none of them (``from speed import rules`` stays light).
"""
