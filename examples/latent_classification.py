"""Latents as data: classify glyphs from the per-signal codes of a latent-modulated SIREN meta-learned with ECoP.

A ``ModulatedSiren`` is meta-learned on labelled glyph images (digits and uppercase letters rendered offline from
matplotlib's bundled fonts) twice from the same initialization: with ECoP (latent-only adaptation at learned
per-element inner rates) and with Learnit (full-context MAML, gamma = 1, K = 4, same model, latent-only, learned
rates). Each then fits every image of a training and a held-out set with ``GradScaledAdapter``; the fitted
latents are the images' codes. The same small MLP is trained on ECoP's codes, Learnit's codes and raw pixels, and
tested on glyphs of font families never seen in meta-training or classifier training. Measured (README.md): the
codes do not beat pixels, and ECoP's error-based pruning is unstable on these glyphs; ``--selection random`` is not.

    python examples/latent_classification.py                  # 7.5 minutes on a shared 2-core CPU
    python examples/latent_classification.py --resolution 24 --outer-steps 1000 --device cuda

Writes to ``--out`` (default ``outputs/latents/``): ``reconstructions.png`` (held-out glyphs: originals, ECoP,
Learnit), ``latents_pca.png`` (2-D PCA of the held-out codes and pixels, each point drawn as its character),
``meta_training.png``, the checkpoints ``ecop.pt`` and ``learnit.pt`` (``ContextPruningMetaLearner.load``;
``--resume`` continues from them), ``latents.pt`` (codes and labels) and ``summary.json``.
Needs ``pip install 'ecop-wrap[examples]'``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from ecop_wrap import ContextPruningMetaLearner, GradScaledAdapter, ModulatedSiren
from ecop_wrap.data import FONT_FAMILIES, GLYPH_CLASSES, SignalDataset, glyph_images

ECOP, LEARNIT, PIXELS = "ECoP", "Learnit", "pixels"
#: font families held out for testing: a monospaced sans and a Times-like serif; the training families include
#: a proportional sans, two serifs and a typewriter face, so both test styles have relatives but not copies.
TEST_FAMILIES = ("DejaVu Sans Mono", "STIX General")


# --------------------------------------------------------------------------------------------------- flags
def build_parser() -> argparse.ArgumentParser:
    """The command line; every flag has a help text (``--help``)."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="The defaults finish in a few minutes on a 2-core CPU (see README.md for a measured run).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    group = parser.add_argument_group("data (glyphs of matplotlib's fonts)")
    group.add_argument("--resolution", type=int, default=16, help="image side R (grayscale R x R glyphs)")
    group.add_argument(
        "--train-per-class",
        type=int,
        default=30,
        help="training images per character (meta-training and classifier training)",
    )
    group.add_argument("--test-per-class", type=int, default=10, help="held-out images per character")
    group.add_argument(
        "--classes",
        default=GLYPH_CLASSES,
        help="the characters to classify, one class each (default: 0-9 and A-Z, 36 classes)",
    )
    group.add_argument(
        "--test-families",
        default=",".join(TEST_FAMILIES),
        help=f"comma-separated font families of the held-out images; the others of {list(FONT_FAMILIES)} "
        "are used for training",
    )
    group.add_argument("--max-rotation", type=float, default=12.0, help="glyphs are rotated by up to this many degrees")
    group = parser.add_argument_group("model (ModulatedSiren)")
    group.add_argument("--hidden-features", type=int, default=64, help="width of each modulated sine layer")
    group.add_argument("--hidden-layers", type=int, default=3, help="number of modulated sine layers")
    group.add_argument("--latent-dim", type=int, default=64, help="size of the per-image latent code")
    group.add_argument("--w0", type=float, default=30.0, help="SIREN frequency omega_0")
    group = parser.add_argument_group("meta-training (both methods; latent-only adaptation)")
    group.add_argument("--outer-steps", type=int, default=300, help="outer (meta) steps of each method, same batches")
    group.add_argument("--batch-size", type=int, default=16, help="images per outer step (B)")
    group.add_argument("--outer-lr", type=float, default=3e-4, help="Adam learning rate of the shared weights")
    group.add_argument(
        "--rates-lr",
        type=float,
        default=3e-5,
        help="Adam learning rate of the learned inner rates (per-element rates learned at --outer-lr made "
        "ECoP's meta-gradient explode on these glyphs)",
    )
    group.add_argument("--inner-lr", type=float, default=0.03, help="initial inner step size of the latent")
    group.add_argument("--max-inner-lr", type=float, default=1.0, help="learned inner rates are kept in [0, this]")
    group.add_argument(
        "--learn-inner-lr",
        choices=("per_element", "per_tensor", "none"),
        default="per_element",
        help="learned inner rates: one per latent element (Meta-SGD), one per inner step (MAML++), "
        "or none (a fixed --inner-lr)",
    )
    group.add_argument(
        "--max-grad-norm", type=float, default=1.0, help="clip the meta-gradient's norm (0: no clipping)"
    )
    group = parser.add_argument_group("ECoP")
    group.add_argument("--gamma", type=float, default=0.25, help="fraction of the pixels kept per inner step")
    group.add_argument("--inner-steps", type=int, default=16, help="ECoP's inner steps K")
    group.add_argument("--bootstrap-steps", type=int, default=5, help="L full-context bootstrap steps (0: none)")
    group.add_argument(
        "--lam",
        type=float,
        default=0.1,
        help="weight lambda of the bootstrap distance (the distance is an unsquared norm, so its gradient "
        "has norm lambda whatever the distance; the paper's 100 swamps the MSE of a 64-dim latent)",
    )
    group.add_argument(
        "--selection",
        choices=("error", "random", "gradncp"),
        default="error",
        help="how ECoP prunes the context: largest errors (the paper), at random, or GradNCP scores",
    )
    group.add_argument(
        "--boot-lr", type=float, default=None, help="step size of the bootstrap steps (default: --inner-lr)"
    )
    group = parser.add_argument_group("Learnit baseline (full-context MAML)")
    group.add_argument("--learnit-steps", type=int, default=4, help="Learnit's inner steps K")
    group = parser.add_argument_group("fitting the codes (GradScaledAdapter, full context)")
    group.add_argument(
        "--fit-steps",
        type=int,
        default=16,
        help="test-time steps per image for both methods (ECoP gradient-scaled, Learnit unscaled)",
    )
    group.add_argument("--fit-batch", type=int, default=128, help="images fitted at once")
    group = parser.add_argument_group("classifier (the same MLP on every feature set)")
    group.add_argument("--classifier-hidden", type=int, default=256, help="width of the MLP's two hidden layers")
    group.add_argument("--classifier-epochs", type=int, default=60, help="training epochs")
    group.add_argument("--classifier-batch", type=int, default=128, help="minibatch size")
    group.add_argument("--classifier-lr", type=float, default=1e-3, help="Adam learning rate")
    group.add_argument("--weight-decay", type=float, default=1e-3, help="AdamW weight decay")
    group.add_argument("--dropout", type=float, default=0.2, help="dropout before each hidden layer")
    group.add_argument(
        "--classifier-seeds",
        type=int,
        default=3,
        help="classifiers trained per feature set (different initializations); mean and std reported",
    )
    group = parser.add_argument_group("output")
    group.add_argument(
        "--out",
        type=Path,
        default=Path("outputs") / "latents",
        help="folder for checkpoints, PNGs, latents.pt and summary.json",
    )
    group.add_argument(
        "--resume",
        action="store_true",
        help="load ecop.pt and learnit.pt from --out and meta-train only the remaining outer steps",
    )
    group.add_argument("--show", type=int, default=12, help="held-out glyphs drawn in reconstructions.png")
    group.add_argument("--seed", type=int, default=0, help="seed of the data, the model initialization and batch order")
    group.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads; the model is so small that one thread is as fast as two, and on a busy machine "
        "faster (0: PyTorch's choice)",
    )
    group.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    group.add_argument("--no-progress", action="store_true", help="plain log lines instead of tqdm progress bars")
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Reject flags that cannot work, before any data is made."""
    positive = (
        "resolution",
        "train_per_class",
        "test_per_class",
        "hidden_features",
        "hidden_layers",
        "latent_dim",
        "outer_steps",
        "batch_size",
        "inner_steps",
        "learnit_steps",
        "fit_batch",
        "classifier_hidden",
        "classifier_epochs",
        "classifier_batch",
        "classifier_seeds",
        "show",
    )
    bad = [f"--{name.replace('_', '-')}" for name in positive if getattr(args, name) < 1]
    if bad:
        raise SystemExit(f"error: {', '.join(bad)} must be at least 1")
    if args.resolution < 8:
        raise SystemExit(f"error: --resolution must be at least 8, got {args.resolution}")
    if not 0.0 < args.gamma <= 1.0:
        raise SystemExit(f"error: --gamma must be in (0, 1], got {args.gamma}")
    if args.fit_steps < 0 or args.bootstrap_steps < 0:
        raise SystemExit("error: --fit-steps and --bootstrap-steps must be >= 0")
    if len(set(args.classes)) != len(args.classes) or len(args.classes) < 2:
        raise SystemExit(f"error: --classes must be at least 2 distinct characters, got {args.classes!r}")
    test = _families(args.test_families)
    unknown = [f for f in test if f not in FONT_FAMILIES]
    if unknown or not test or len(test) == len(FONT_FAMILIES):
        raise SystemExit(f"error: --test-families must name some but not all of {list(FONT_FAMILIES)}, got {test}")
    if not 0.0 <= args.dropout < 1.0:
        raise SystemExit(f"error: --dropout must be in [0, 1), got {args.dropout}")


def _families(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


# ---------------------------------------------------------------------------------------------------- data
class Glyphs(NamedTuple):
    """Training and held-out glyphs with their labels ``[N]``."""

    train: SignalDataset
    train_labels: torch.Tensor
    test: SignalDataset
    test_labels: torch.Tensor
    train_families: list[str]
    test_families: list[str]


def make_glyphs(args: argparse.Namespace) -> Glyphs:
    """Render both sets; the font families are disjoint."""
    test_families = _families(args.test_families)
    train_families = [name for name in FONT_FAMILIES if name not in test_families]
    common = {"resolution": args.resolution, "classes": args.classes, "max_rotation": args.max_rotation}
    train, train_labels = glyph_images(args.train_per_class, seed=args.seed, families=train_families, **common)
    test, test_labels = glyph_images(args.test_per_class, seed=args.seed + 1, families=test_families, **common)
    return Glyphs(train, train_labels, test, test_labels, train_families, test_families)


# ------------------------------------------------------------------------------------------------ progress
class Progress:
    """A tqdm bar when tqdm is installed and wanted, else a log line every 10 %."""

    def __init__(self, total: int, desc: str, plain: bool) -> None:
        self.total, self.count, self.desc, self.bar = total, 0, desc, None
        if not plain:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                print("(tqdm is not installed: pip install 'ecop-wrap[examples]' for progress bars)")
            else:
                self.bar = tqdm(total=total, desc=desc, dynamic_ncols=True)

    def update(self, text: str = "", count: int = 1) -> None:
        previous, self.count = self.count, self.count + count
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)
            self.bar.update(count)
        elif self.count == self.total or self.count // max(1, self.total // 10) > previous // max(1, self.total // 10):
            print(f"  {self.desc} {self.count}/{self.total} {text}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ------------------------------------------------------------------------------------------- meta-training
def build_learners(args: argparse.Namespace) -> dict[str, ContextPruningMetaLearner]:
    """ECoP and Learnit around the same randomly initialized ``ModulatedSiren``, both adapting only ``latent``."""
    torch.manual_seed(args.seed)
    model = ModulatedSiren(2, 1, args.hidden_features, args.hidden_layers, latent_dim=args.latent_dim, w0=args.w0).to(
        args.device
    )
    common: dict[str, Any] = {
        "adapt": ["latent"],
        "inner_lr": args.inner_lr,
        "outer_lr": args.outer_lr,
        "rates_lr": args.rates_lr,
        "learn_inner_lr": None if args.learn_inner_lr == "none" else args.learn_inner_lr,
        "max_inner_lr": args.max_inner_lr,
        "max_grad_norm": args.max_grad_norm if args.max_grad_norm > 0 else None,
        "seed": args.seed,
    }
    boot_lr = args.boot_lr if args.boot_lr is not None else args.inner_lr
    ecop = ContextPruningMetaLearner(
        model,
        gamma=args.gamma,
        K=args.inner_steps,
        L=args.bootstrap_steps,
        lam=args.lam,
        boot_lr=boot_lr,
        selection=args.selection,
        **common,
    )
    learnit = ContextPruningMetaLearner(copy.deepcopy(model), gamma=1.0, K=args.learnit_steps, L=0, lam=0.0, **common)
    return {ECOP: ecop, LEARNIT: learnit}


def _batches(dataset: SignalDataset, args: argparse.Namespace) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for coords, values in dataset.batches(min(args.batch_size, len(dataset)), seed=args.seed, infinite=True):
        yield coords.to(args.device), values.to(args.device)


def meta_train(
    learners: dict[str, ContextPruningMetaLearner], train: SignalDataset, args: argparse.Namespace
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Alternate one outer step of each learner on the same batch, from where they stand (``--resume``).

    Returns:
        each learner's training-batch PSNR per step taken now (after its own inner loop), and its seconds.
    """
    done = min(learner.step_count for learner in learners.values())
    history: dict[str, list[float]] = {name: [] for name in learners}
    seconds = dict.fromkeys(learners, 0.0)
    smooth: dict[str, float] = {}
    batches = _batches(train, args)
    for _ in range(done):  # the batches a resumed run has already seen
        next(batches)
    progress = Progress(max(0, args.outer_steps - done), "meta-training", args.no_progress)
    try:
        for _ in range(done, args.outer_steps):
            batch = next(batches)
            for name, learner in learners.items():
                if learner.step_count >= args.outer_steps:
                    continue
                start = time.perf_counter()
                psnr = learner.meta_step(batch)["psnr"]
                seconds[name] += time.perf_counter() - start
                history[name].append(psnr)
                if math.isfinite(psnr):
                    smooth[name] = psnr if name not in smooth else 0.9 * smooth[name] + 0.1 * psnr
            progress.update(" | ".join(f"{n} {smooth.get(n, float('nan')):.1f} dB" for n in learners))
    finally:
        progress.close()
    return history, seconds


# ---------------------------------------------------------------------------------------------------- codes
class Codes(NamedTuple):
    """One method's fitted latents and reconstructions."""

    train: torch.Tensor  # [N_train, latent_dim]
    test: torch.Tensor  # [N_test, latent_dim]
    train_psnr: torch.Tensor  # [fit_steps + 1, N_train]
    test_psnr: torch.Tensor  # [fit_steps + 1, N_test]
    test_recons: torch.Tensor  # [N_test, M, 1]


def fit_codes(
    name: str, learner: ContextPruningMetaLearner, dataset: SignalDataset, args: argparse.Namespace, progress: Progress
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fit every image of ``dataset`` from the learner's initialization (ECoP gradient-scaled, Learnit unscaled).

    Returns:
        latents ``[N, latent_dim]``, PSNR per step ``[fit_steps + 1, N]``, reconstructions ``[N, M, 1]``.
    """
    adapter = GradScaledAdapter(learner, steps=args.fit_steps, scaling="norm" if name == ECOP else "none")
    latents, psnrs, recons = [], [], []
    for coords, values in dataset.batches(args.fit_batch, shuffle=False, drop_last=False):
        coords, values = coords.to(args.device), values.to(args.device)
        fit = adapter.fit((coords, values))
        latents.append(fit.params["latent"].detach().cpu())
        psnrs.append(fit.history["psnr"].cpu())
        with torch.no_grad():
            recons.append(fit(coords).cpu())
        progress.update(f"{name} {float(fit.history['psnr'][-1].mean()):.1f} dB", len(values))
    return torch.cat(latents), torch.cat(psnrs, dim=1), torch.cat(recons)


def fit_all(
    learners: dict[str, ContextPruningMetaLearner], glyphs: Glyphs, args: argparse.Namespace
) -> dict[str, Codes]:
    """Codes of every training and held-out image for each method (ECoP gradient-scaled, Learnit unscaled)."""
    progress = Progress(len(learners) * (len(glyphs.train) + len(glyphs.test)), "fitting codes", args.no_progress)
    codes = {}
    try:
        for name, learner in learners.items():
            train, train_psnr, _ = fit_codes(name, learner, glyphs.train, args, progress)
            test, test_psnr, recons = fit_codes(name, learner, glyphs.test, args, progress)
            codes[name] = Codes(train, test, train_psnr, test_psnr, recons)
    finally:
        progress.close()
    return codes


# ----------------------------------------------------------------------------------------------- classifier
def make_classifier(features: int, classes: int, args: argparse.Namespace) -> nn.Module:
    """The MLP used for every feature set: two hidden ReLU layers with dropout."""
    width = args.classifier_hidden
    return nn.Sequential(
        nn.Dropout(args.dropout),
        nn.Linear(features, width),
        nn.ReLU(),
        nn.Dropout(args.dropout),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, classes),
    )


def standardize(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero mean, unit variance per feature, with the training set's statistics."""
    mean, std = train.mean(dim=0), train.std(dim=0).clamp_min(1e-6)
    return (train - mean) / std, (test - mean) / std


def train_classifier(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    classes: int,
    seed: int,
    args: argparse.Namespace,
) -> dict[str, float]:
    """Train one MLP with AdamW on minibatches for a fixed number of epochs (no early stopping); its accuracies."""
    x_train, x_test = standardize(x_train.float(), x_test.float())
    torch.manual_seed(seed)
    model = make_classifier(x_train.shape[1], classes, args)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.classifier_lr, weight_decay=args.weight_decay)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(args.classifier_epochs):
        model.train()
        for index in torch.randperm(len(x_train), generator=generator).split(args.classifier_batch):
            loss = nn.functional.cross_entropy(model(x_train[index]), y_train[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        train_acc = (model(x_train).argmax(dim=1) == y_train).float().mean()
        test_acc = (model(x_test).argmax(dim=1) == y_test).float().mean()
    return {"train_accuracy": float(train_acc), "test_accuracy": float(test_acc)}


def classify(codes: dict[str, Codes], glyphs: Glyphs, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Accuracy of the same MLP on each method's codes and on raw pixels, over ``--classifier-seeds`` runs."""
    features = {name: (c.train, c.test) for name, c in codes.items()}
    features[PIXELS] = (glyphs.train.stacked().flatten(1), glyphs.test.stacked().flatten(1))
    progress = Progress(len(features) * args.classifier_seeds, "classifiers", args.no_progress)
    results: dict[str, dict[str, Any]] = {}
    try:
        for name, (train, test) in features.items():
            runs = []
            for seed in range(args.classifier_seeds):
                runs.append(
                    train_classifier(
                        train, glyphs.train_labels, test, glyphs.test_labels, len(args.classes), args.seed + seed, args
                    )
                )
                progress.update(f"{name} {runs[-1]['test_accuracy']:.3f}")
            accuracy = torch.tensor([r["test_accuracy"] for r in runs])
            results[name] = {
                "features": int(train.shape[1]),
                "test_accuracy_mean": round(float(accuracy.mean()), 4),
                "test_accuracy_std": round(float(accuracy.std()) if len(runs) > 1 else 0.0, 4),
                "train_accuracy_mean": round(sum(r["train_accuracy"] for r in runs) / len(runs), 4),
                "test_accuracy_per_seed": [round(float(a), 4) for a in accuracy],
            }
    finally:
        progress.close()
    return results


# -------------------------------------------------------------------------------------------------- pictures
def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def draw_reconstructions(glyphs: Glyphs, codes: dict[str, Codes], args: argparse.Namespace, path: Path) -> Path:
    """Rows: held-out originals, then each method's reconstruction after ``--fit-steps`` steps (PSNR above)."""
    count = min(args.show, len(glyphs.test))
    shown = torch.linspace(0, len(glyphs.test) - 1, count).round().long().unique()
    side = args.resolution
    rows = {"original": glyphs.test.stacked()[shown]}
    rows.update({name: c.test_recons[shown] for name, c in codes.items()})
    fig = _figure(1.0 * len(shown) + 0.8, 1.15 * len(rows) + 0.4)
    axes = fig.subplots(len(rows), len(shown), squeeze=False)
    for row, (label, images) in enumerate(rows.items()):
        for col, index in enumerate(shown.tolist()):
            ax = axes[row, col]
            ax.imshow(images[col].reshape(side, side).clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if label != "original":
                ax.set_title(f"{float(codes[label].test_psnr[-1, index]):.1f} dB", fontsize=7)
            else:
                ax.set_title(glyphs.test.names[index].split("|")[1].removesuffix(".ttf"), fontsize=5)
            if col == 0:
                ax.set_ylabel(label, fontsize=9)
    fig.suptitle(f"held-out glyphs, unseen fonts: {args.fit_steps} latent-only steps", fontsize=10)
    fig.savefig(path, dpi=120)
    return path


def _pca(train: torch.Tensor, test: torch.Tensor) -> torch.Tensor:
    """The test points ``[N, 2]`` on the two leading principal axes of the standardized training points."""
    train, test = standardize(train.double(), test.double())
    _, _, vh = torch.linalg.svd(train - train.mean(dim=0), full_matrices=False)
    return torch.matmul(test, vh[:2].T).float()


def draw_pca(
    glyphs: Glyphs, codes: dict[str, Codes], accuracy: dict[str, dict[str, Any]], path: Path, classes: str
) -> Path:
    """One panel per feature set: held-out images on the first two principal axes, drawn as their characters."""
    from matplotlib import colormaps

    features = {name: (c.train, c.test) for name, c in codes.items()}
    features[PIXELS] = (glyphs.train.stacked().flatten(1), glyphs.test.stacked().flatten(1))
    colours = colormaps["hsv"]
    fig = _figure(4.2 * len(features), 4.4)
    axes = fig.subplots(1, len(features), squeeze=False)[0]
    for ax, (name, (train, test)) in zip(axes, features.items(), strict=False):
        points = _pca(train, test)
        for (x, y), label in zip(points.tolist(), glyphs.test_labels.tolist(), strict=False):
            ax.text(x, y, classes[label], color=colours(label / len(classes)), fontsize=7, ha="center", va="center")
        low, high = points.min(dim=0).values, points.max(dim=0).values
        pad = 0.05 * (high - low)
        ax.set_xlim(float(low[0] - pad[0]), float(high[0] + pad[0]))
        ax.set_ylim(float(low[1] - pad[1]), float(high[1] + pad[1]))
        title = f"{name} latents" if name != PIXELS else "raw pixels"
        ax.set_title(
            f"{title} ({train.shape[1]} dims): MLP accuracy {accuracy[name]['test_accuracy_mean']:.1%}", fontsize=9
        )
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
    fig.suptitle(
        "held-out glyphs on the first two principal axes of the training features, coloured by class", fontsize=10
    )
    fig.savefig(path, dpi=120)
    return path


def draw_meta_training(history: dict[str, list[float]], path: Path) -> Path | None:
    """Training-batch PSNR after each method's inner loop (running mean of 20 steps)."""
    if not any(history.values()):
        return None
    fig = _figure(6.0, 3.6)
    ax = fig.subplots()
    for name, values in history.items():
        kept: list[float] = []
        curve = []
        for value in values:
            if math.isfinite(value):
                kept = ([*kept, value])[-20:]
            curve.append(sum(kept) / len(kept) if kept else float("nan"))
        ax.plot(curve, label=name)
    ax.set_xlabel("outer step (this run)")
    ax.set_ylabel("PSNR (dB)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=120)
    return path


# ------------------------------------------------------------------------------------------------------ run
def _tail_mean(values: list[float]) -> float:
    """Mean of the finite values among the last 10 % (at least one) of ``values``."""
    tail = [v for v in values[-max(1, len(values) // 10) :] if math.isfinite(v)]
    return sum(tail) / len(tail) if tail else float("nan")


def _psnr_summary(psnr: torch.Tensor) -> dict[str, Any]:
    return {
        "mean_per_step": [round(float(v), 3) for v in psnr.mean(dim=1)],
        "final_mean": round(float(psnr[-1].mean()), 3),
        "final_std": round(float(psnr[-1].std()) if psnr.shape[1] > 1 else 0.0, 3),
    }


def _print_results(codes: dict[str, Codes], accuracy: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"\nheld-out glyphs ({len(next(iter(codes.values())).test)} images, unseen font families)")
    print(f"{'features':<16}{'dims':>6}{'test accuracy':>20}{'train accuracy':>16}{'PSNR after fit':>16}")
    for name, result in accuracy.items():
        psnr = f"{float(codes[name].test_psnr[-1].mean()):.2f} dB" if name in codes else "-"
        score = f"{result['test_accuracy_mean']:.3f} ± {result['test_accuracy_std']:.3f}"
        label = f"{name} latents" if name in codes else "raw pixels"
        print(f"{label:<16}{result['features']:>6}{score:>20}{result['train_accuracy_mean']:>16.3f}{psnr:>16}")
    print(f"(chance: {1 / len(args.classes):.3f}; mean ± std over {args.classifier_seeds} classifier seeds)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Meta-train, fit codes, classify, draw, write summary.json; returns the summary."""
    wall = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    glyphs = make_glyphs(args)
    print(
        f"glyphs: {len(glyphs.train)} training images ({', '.join(glyphs.train_families)}), {len(glyphs.test)} "
        f"held-out images ({', '.join(glyphs.test_families)}), {len(args.classes)} classes, "
        f"{args.resolution}x{args.resolution}; writing to {out}/"
    )
    learners = build_learners(args)
    if args.resume:
        for name, learner in learners.items():
            path = out / f"{name.lower()}.pt"
            if path.is_file():
                learner.load(path)
                print(f"  resumed {name} from {path} at step {learner.step_count}")
    for name, learner in learners.items():
        print(f"  {name}: {learner!r}")
    history, train_seconds = meta_train(learners, glyphs.train, args)
    for name, learner in learners.items():
        learner.save(out / f"{name.lower()}.pt")
    start = time.perf_counter()
    codes = fit_all(learners, glyphs, args)
    fit_seconds = time.perf_counter() - start
    torch.save(
        {
            "labels": {"train": glyphs.train_labels, "test": glyphs.test_labels},
            "classes": args.classes,
            **{name: {"train": c.train, "test": c.test} for name, c in codes.items()},
        },
        out / "latents.pt",
    )
    start = time.perf_counter()
    accuracy = classify(codes, glyphs, args)
    classify_seconds = time.perf_counter() - start
    _print_results(codes, accuracy, args)
    written = [
        draw_reconstructions(glyphs, codes, args, out / "reconstructions.png"),
        draw_pca(glyphs, codes, accuracy, out / "latents_pca.png", args.classes),
        draw_meta_training(history, out / "meta_training.png"),
    ]
    summary = {
        "classes": args.classes,
        "train_images": len(glyphs.train),
        "test_images": len(glyphs.test),
        "train_families": glyphs.train_families,
        "test_families": glyphs.test_families,
        "accuracy": accuracy,
        "test_psnr": {name: _psnr_summary(c.test_psnr) for name, c in codes.items()},
        "train_psnr_final_mean": {name: round(float(c.train_psnr[-1].mean()), 3) for name, c in codes.items()},
        "learned_inner_lr_mean": {
            name: {n: round(float(r.detach().mean()), 5) for n, r in learner.inner_lrs.items()}
            for name, learner in learners.items()
        },
        "outer_steps": {name: learner.step_count for name, learner in learners.items()},
        "train_batch_psnr_last_10pct": {
            name: round(_tail_mean(values), 3) for name, values in history.items() if values
        },
        "seconds": {
            "meta_training": {n: round(s, 1) for n, s in train_seconds.items()},
            "fitting_codes": round(fit_seconds, 1),
            "classifiers": round(classify_seconds, 1),
            "total": round(time.perf_counter() - wall, 1),
        },
        "torch_threads": torch.get_num_threads(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    names = [p.name for p in written if p is not None] + ["ecop.pt", "learnit.pt", "latents.pt", "summary.json"]
    print(f"wrote {', '.join(names)} in {out}/ ({summary['seconds']['total']:.0f} s in all)")
    return summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse flags, set threads and device, run."""
    args = build_parser().parse_args(argv)
    check_args(args)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if str(args.device).startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA device is available")
    return run(args)


if __name__ == "__main__":
    main()
