"""Where ECoP loses, and why: a diagnostic of meta-training for your own learner and data, or a builtin cell.

From Python (put ``benchmarks/`` on ``sys.path``; any learner, any data)::

    from diagnose import diagnose, format_table

    report = diagnose(learner, batches, (coords, val_values), steps=300, every=50)
    print(format_table(report))

From the command line, for the models and data of ``benchmarks/reproduce``::

    python benchmarks/diagnose --model latent --learn-inner-lr per_element --outer-lr 1e-4 --lam 0.1 \
        --boot-lr 5e-2 --max-grad-norm 1.0 --steps 300 --every 50 --json diag.json --png diag.png
    # which outer lr and lambda train: every combination, one JSON
    python benchmarks/diagnose --model siren --steps 100 --every 50 --rules norm \
        --sweep outer_lr=1e-5,1e-4,3e-4,1e-3 --sweep lam=100,1 --json sweep.json

Every meta-step's statistics are kept (the PSNR at theta_K on its batch, the meta-loss, the bootstrap distance
mu, the meta-gradient norm before clipping). At outer steps 0, ``every``, 2 ``every``, ..., ``steps`` (at the
current theta_0, before the next update) it also records:

* ``probe``: a fixed batch of training signals adapted as in training (K steps on the pruned context, replayed
  without a graph): the loss at theta_0 and theta_K, and at every inner step the norms of the pruned and the
  full-context gradient and their ratio ``||g_pruned|| / ||g_full||`` (what Eq. 6 multiplies test steps by);
* ``val``: validation PSNR after N test steps under each test rule: ``"norm"`` (Eq. 6), ``"none"``, ``"loss"``
  and ``"pruned"`` (N steps on the pruned context, unscaled, as in training: ``pruned_steps=N``), with the
  PSNR after every test step and, for the scaled rules, the mean scale per step;
* ``rates``: the learned inner rates (``learner.inner_lrs``): min, mean, max, per tensor (and per step);
* ``bootstrap``: mu on the probe, and its share of the meta-gradient: the gradients of the two parts of the
  meta-objective, ``mean(fit loss)`` and ``lam * mean(mu)``, taken separately (two ``torch.autograd.grad``
  calls; their sum is the learner's meta-gradient on that batch).

The diagnostics draw no random numbers from the learner's generator, so training is the same as without them.
"""

from .cli import main
from .measure import (
    TEST_RULES,
    bootstrap_share,
    diagnose,
    diagnostic_point,
    inner_trace,
    rates_summary,
    validation,
)
from .report import format_table, plot, summarize, sweep_table

__all__ = [
    "TEST_RULES",
    "bootstrap_share",
    "diagnose",
    "diagnostic_point",
    "format_table",
    "inner_trace",
    "main",
    "plot",
    "rates_summary",
    "summarize",
    "sweep_table",
    "validation",
]
