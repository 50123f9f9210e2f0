"""What the example scripts share: flags, meta-training ECoP and Learnit side by side, testing both on
held-out signals, checkpoints, pictures and a summary.

Each ``examples/<modality>_siren.py`` builds its parser from :func:`example_parser` and
:func:`add_common_flags` (every shared flag is declared once, in :data:`FLAGS`), turns the parsed flags into an
:class:`ExampleConfig` (:func:`setup`), builds an :class:`Example` (its datasets, its model, e.g. from
:func:`siren_factory`, and two drawing functions, e.g. from :func:`reconstructions` and :func:`selection`) and
hands both to :func:`run`. The two compared methods, training and test-time settings together, are defined once,
in :func:`compared_methods`. This package is not part of the library: copy what you need.

The comparison follows the paper at equal memory: ECoP prunes to a fraction gamma of the context for K steps
(``K = 4 / gamma`` by default) plus L bootstrap steps; Learnit (MAML on the full context, no bootstrap) takes
4 steps. Both start from the same random SIREN, see the same batches for the same number of outer steps and
are tested with the same number of full-context steps: ECoP with gradient scaling (paper Eq. 6), Learnit
without (scaling only makes sense for a learner trained on pruned sets).

Modules: :mod:`.flags` (flags and settings), :mod:`.training` (methods, learners, meta-training, test fits),
:mod:`.runner` (one run from start to end, summary.json), :mod:`.pictures` (the per-modality pictures),
:mod:`.clips` (video data for the two video examples), :mod:`.stats` (per-signal PSNR over chosen points, paired
gaps).
"""

from .clips import CLIP_FLAGS, add_clip_flags, load_clips
from .flags import FLAGS, ExampleConfig, Flag, add_common_flags, add_flags, example_parser, setup
from .pictures import frame_reconstructions, reconstructions, selection
from .runner import Example, run
from .stats import best_rate, cycle_indices, paired_gap, summary_mean, summary_std, weighted_psnr
from .training import (
    ECOP,
    LEARNIT,
    Evaluation,
    Method,
    Progress,
    build_learners,
    compared_methods,
    evaluate,
    meta_train,
    siren_factory,
    sweep_outer_lrs,
    train_at_rate,
)

__all__ = [
    "CLIP_FLAGS",
    "ECOP",
    "FLAGS",
    "LEARNIT",
    "Evaluation",
    "Example",
    "ExampleConfig",
    "Flag",
    "Method",
    "Progress",
    "add_clip_flags",
    "add_common_flags",
    "add_flags",
    "best_rate",
    "build_learners",
    "compared_methods",
    "cycle_indices",
    "evaluate",
    "example_parser",
    "frame_reconstructions",
    "load_clips",
    "meta_train",
    "paired_gap",
    "reconstructions",
    "run",
    "selection",
    "setup",
    "siren_factory",
    "summary_mean",
    "summary_std",
    "sweep_outer_lrs",
    "train_at_rate",
    "weighted_psnr",
]
