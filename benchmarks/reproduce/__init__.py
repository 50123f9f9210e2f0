"""Reproduce the paper's comparison (issue 3) at a scale a CPU finishes: every method at an equal memory budget.

Same model, same data, same training batches, same number of outer steps and of test-time steps for every
method; test PSNR/SSIM on fixed held-out signals. Methods (``--methods``, default all; :data:`METHOD_TABLE`
(``methods.py``) defines each one's training and test-time settings in one row):

========================  =========================================================================
random_init               the model's initialisation, no meta-learning
fomaml                    first-order MAML, full context, K = 16 (first-order memory does not grow with K)
reptile                   Reptile, K = 16 full-context SGD steps, Adam on theta_0 - mean(theta_K)
learnit                   second-order MAML, gamma = 1, K = 4 (paper setting, inner lr --inner-lr)
learnit_tuned_lr          as learnit, trained and tested with --learnit-tuned-inner-lr (picked on validation)
random_pruning            gamma = 0.25, K = 16, random subsets, with bootstrap; gradient-scaled test
ecop                      gamma = 0.25, K = 16, L = 5, error-based pruning, bootstrap; gradient-scaled test
ecop_no_bootstrap         as ecop with lambda = 0
ecop_test_unscaled        the ecop model tested with plain SGD (Figure 4a, "no grad. scale")
ecop_test_pruned          the ecop model tested on its error-based pruned context, unscaled (Figure 8)
ecop_test_unscaled_tuned  the ecop model tested with plain SGD at --learnit-tuned-inner-lr (step-size control)
ecop_lr_tensor/_element   ecop with meta-learned inner step sizes (per tensor and step / per element)
learnit_lr_tensor/...     learnit with meta-learned inner step sizes
ecop_latent               a ModulatedSiren adapting only its latent (functa-style), learned rates, ECoP
learnit_latent            the same with Learnit
nerv_ecop, nerv_learnit   ecop and learnit with a NeRV decoder (``--video`` only: a context point is a frame)
hashgrid_ecop/_learnit    ecop and learnit with a multiresolution hash-grid INR (``HashGridINR``)
========================  =========================================================================

Every method uses the SIREN unless its row names another model; ``--video`` runs the SIREN rows on
``(t, y, x)`` pixels of the same clips the NeRV rows see as frames. ``--inner-lr-for`` and ``--boot-lr-for``
give a method its own inner and bootstrap step size (a NeRV with sine activations wants 1.0, a SIREN 1e-2).

Memory: on CUDA ``peak_memory_bytes`` is ``torch.cuda.max_memory_allocated`` during training; on CPU it is
the bytes autograd holds for one outer step (``SavedTensorMeter`` on one meta-loss; for Reptile, the largest
inner step), which is deterministic. The JSON keeps every held-out signal's PSNR, so gaps are paired: the
script prints ECoP's gap to each baseline with its standard error, and ``--paired A.json:M B.json:N`` compares
methods of two result files. Example::

    python benchmarks/reproduce --images builtin --resolution 32 --outer-steps 1000 --seed 0 \\
        --json benchmarks/results/images32.json

The package, one concept per module: ``config`` (:class:`RunConfig`, every flag declared once), ``cli`` (the
parser made from it, :func:`main`), ``methods`` (the method table), ``splits`` (the data of each modality),
``models`` (the model registry), ``sdf`` (``--sdf glyphs``: data, ``--loss clamped_l1``, SDF metrics),
``training``, ``evaluation``, ``run`` (one run of every method), ``report``
(tables, paired gaps, plot) and ``workers`` (``--workers`` subprocesses, ``--merge``). Run it as
``python benchmarks/reproduce ...`` (its ``__main__.py``) or ``python -m reproduce ...`` from ``benchmarks/``.

Objectives and masks (issue 22): ``--loss`` (``mse``, ``l1``, ``huber``, ``clamped_l1`` or a registered name)
for every learner and test-time fit; ``--mask-fraction``/``--mask-block`` hide fixed blocks of each image (fits
see the observed pixels only; ``psnr`` is over the hidden ones, ``psnr_observed`` over the rest);
``--aspect-crops MAX_ASPECT`` trains and tests on photo crops at their own aspect ratios (padded weighted batches,
each held-out signal scored over its own points).

docs/results.md has the commands and numbers of the runs we report (per-method outer lrs from a validation
sweep, ``--outer-lr-for``).
"""

from .cli import main, make_parser, parse_config
from .config import RunConfig
from .evaluation import evaluate
from .methods import METHOD_TABLE, METHODS, FitSetting, Method, Training
from .models import MODELS, ModelKind, build_model, describe_model
from .report import compare_files, format_gaps, format_table, paired_gap, paired_gaps, save_plot
from .run import run
from .splits import Splits, frame_view, load_splits
from .workers import merge_results, partition, run_parallel

__all__ = [
    "METHODS",
    "METHOD_TABLE",
    "MODELS",
    "FitSetting",
    "Method",
    "ModelKind",
    "RunConfig",
    "Splits",
    "Training",
    "build_model",
    "compare_files",
    "describe_model",
    "evaluate",
    "format_gaps",
    "format_table",
    "frame_view",
    "load_splits",
    "main",
    "make_parser",
    "merge_results",
    "paired_gap",
    "paired_gaps",
    "parse_config",
    "partition",
    "run",
    "run_parallel",
    "save_plot",
]
