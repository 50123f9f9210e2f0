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
``--resume`` continues from them), the shareable initializations ``ecop-init/`` and ``learnit-init/``
(``ContextPruningMetaLearner.from_pretrained``), the fitted codes ``codes/<method>/<train|test>/`` written by
``GradScaledAdapter.encode`` (read them with ``ecop_wrap.data.LatentDataset``) and ``summary.json``.
Needs ``pip install 'ecop-wrap[examples]'``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Progress, add_flags, example_parser

from ecop_wrap import SELECTION_RULES, ContextPruningMetaLearner, GradScaledAdapter, ModulatedSiren
from ecop_wrap.data import FONT_FAMILIES, GLYPH_CLASSES, LatentDataset, SignalDataset, glyph_images
from ecop_wrap.plotting import plot_psnr_curves

ECOP, LEARNIT, PIXELS = "ECoP", "Learnit", "pixels"
#: font families held out for testing: a monospaced sans and a Times-like serif; the training families include
#: a proportional sans, two serifs and a typewriter face, so both test styles have relatives but not copies.
TEST_FAMILIES = ("DejaVu Sans Mono", "STIX General")


# --------------------------------------------------------------------------------------------------- flags
def build_parser() -> argparse.ArgumentParser:
    """The command line; every flag has a help text (``--help``)."""
    parser = example_parser(__doc__, "The defaults finish in a few minutes on a 2-core CPU (see README.md).")
    group = parser.add_argument_group("data (glyphs of matplotlib's fonts)")
    group.add_argument("--resolution", type=int, default=16, help="image side R (grayscale R x R glyphs)")
    group.add_argument(
        "--train-per-class", type=int, default=30, help="training images per character (meta-training, classifier)"
    )
    group.add_argument("--test-per-class", type=int, default=10, help="held-out images per character")
    group.add_argument(
        "--classes", default=GLYPH_CLASSES, help="the characters to classify, one class each (default: 0-9 and A-Z)"
    )
    group.add_argument(
        "--test-families",
        default=",".join(TEST_FAMILIES),
        help=f"comma-separated font families of the held-out images; the others of {list(FONT_FAMILIES)} "
        "are used for training",
    )
    group.add_argument("--max-rotation", type=float, default=12.0, help="glyphs are rotated by up to this many degrees")
    group = parser.add_argument_group("model (ModulatedSiren)")
    helps = {
        "hidden_features": "width of each modulated sine layer",
        "hidden_layers": "number of modulated sine layers",
    }
    add_flags(group, ("hidden_features", "hidden_layers"), helps, hidden_features=64)
    group.add_argument("--latent-dim", type=int, default=64, help="size of the per-image latent code")
    add_flags(group, ("w0",))
    group = parser.add_argument_group("meta-training (both methods; latent-only adaptation)")
    helps = {"batch_size": "images per outer step (B)", "outer_lr": "Adam learning rate of the shared weights"}
    add_flags(group, ("outer_steps", "batch_size", "outer_lr"), helps, batch_size=16)
    group.add_argument(
        "--rates-lr",
        type=float,
        default=3e-5,
        help="Adam learning rate of the learned inner rates (per-element rates learned at --outer-lr made "
        "ECoP's meta-gradient explode on these glyphs)",
    )
    add_flags(group, ("inner_lr",), {"inner_lr": "initial inner step size of the latent"}, inner_lr=0.03)
    group.add_argument("--max-inner-lr", type=float, default=1.0, help="learned inner rates are kept in [0, this]")
    group.add_argument(
        "--learn-inner-lr",
        choices=("per_element", "per_tensor", "none"),
        default="per_element",
        help="learned inner rates: one per latent element (Meta-SGD), one per inner step (MAML++), "
        "or none (a fixed --inner-lr)",
    )
    add_flags(group, ("max_grad_norm",))
    group = parser.add_argument_group("ECoP")
    lam = "weight lambda of the bootstrap distance (an unsquared norm, so its gradient has norm lambda whatever the "
    lam += "distance; the paper's 100 swamps the MSE of a 64-dim latent)"
    add_flags(group, ("gamma", "inner_steps", "bootstrap_steps", "lam"), {"lam": lam}, lam=0.1)
    group.add_argument(
        "--selection",
        choices=tuple(SELECTION_RULES),
        default="error",
        help="how ECoP prunes the context: largest errors (the paper), half of them largest errors and half "
        "uniform (mixed), drawn in proportion to the error (soft), at random, or GradNCP scores",
    )
    group.add_argument(
        "--boot-lr", type=float, default=None, help="step size of the bootstrap steps (default: --inner-lr)"
    )
    add_flags(parser.add_argument_group("Learnit baseline (full-context MAML)"), ("learnit_steps",))
    group = parser.add_argument_group("fitting the codes (GradScaledAdapter.encode, full context)")
    group.add_argument(
        "--fit-steps", type=int, default=16, help="test-time steps per image (ECoP gradient-scaled, Learnit unscaled)"
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
        "--classifier-seeds", type=int, default=3, help="classifiers per feature set (different seeds): mean and std"
    )
    group = parser.add_argument_group("output")
    group.add_argument(
        "--out", type=Path, default=Path("outputs") / "latents", help="folder for everything written (see above)"
    )
    group.add_argument(
        "--resume", action="store_true", help="load ecop.pt and learnit.pt from --out; train the remaining steps"
    )
    add_flags(group, ("show", "seed"), {"show": "held-out glyphs drawn in reconstructions.png"}, show=12)
    group.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads; the model is so small that one thread is as fast as two, and on a busy machine "
        "faster (0: PyTorch's choice)",
    )
    add_flags(group, ("device", "no_progress"))
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
    progress = Progress(max(0, args.outer_steps - done), "meta-training", args.no_progress, unit="step")
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
    """One method's fitted latents (as written by ``GradScaledAdapter.encode``) and held-out reconstructions."""

    train: LatentDataset  # N_train codes [latent_dim] with their labels; .psnr [N_train, fit_steps + 1]
    test: LatentDataset  # N_test codes
    test_recons: torch.Tensor  # [N_test, M, 1]


def fit_codes(
    learners: dict[str, ContextPruningMetaLearner], glyphs: Glyphs, args: argparse.Namespace, out: Path
) -> dict[str, Codes]:
    """Fit every training and held-out image from each learner's initialization (ECoP gradient-scaled, Learnit
    unscaled); the codes go to ``out/codes/<method>/<split>/``."""
    codes = {}
    for name, learner in learners.items():
        adapter = GradScaledAdapter(learner, steps=args.fit_steps, scaling="norm" if name == ECOP else "none")
        splits = {}
        sets = (("train", glyphs.train, glyphs.train_labels), ("test", glyphs.test, glyphs.test_labels))
        for split, dataset, labels in sets:
            folder = out / "codes" / name.lower() / split
            splits[split] = adapter.encode(
                dataset, args.fit_batch, folder, labels=labels, progress=not args.no_progress, overwrite=True
            )
        with torch.no_grad():  # every held-out glyph at its code: the latent is batched [N, latent_dim]
            latents = splits["test"].codes["latent"].to(args.device)
            recons = torch.func.functional_call(
                learner.model, {"latent": latents}, (glyphs.test.coords.to(args.device),)
            )
        codes[name] = Codes(splits["train"], splits["test"], recons.cpu())
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
    features = {name: (c.train.features(), c.test.features()) for name, c in codes.items()}
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
                ax.set_title(f"{float(codes[label].test.psnr[index, -1]):.1f} dB", fontsize=7)
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

    features = {name: (c.train.features(), c.test.features()) for name, c in codes.items()}
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
    """Training-batch PSNR after each method's inner loop (running mean of the last 20 finite values)."""
    if not any(history.values()):
        return None
    curves = {}
    for name, values in history.items():
        finite = [[v for v in values[: i + 1] if math.isfinite(v)][-20:] for i in range(len(values))]
        curves[name] = [sum(kept) / len(kept) if kept else float("nan") for kept in finite]
    title = "training-batch PSNR after each method's inner loop (running mean)"
    return Path(plot_psnr_curves(curves, path, title=title, xlabel="outer step (this run)"))


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
        psnr = f"{float(codes[name].test.psnr[:, -1].mean()):.2f} dB" if name in codes else "-"
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
    codes = fit_codes(learners, glyphs, args, out)
    fit_seconds = time.perf_counter() - start
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
        "test_psnr": {name: _psnr_summary(c.test.psnr.T) for name, c in codes.items()},
        "train_psnr_final_mean": {name: round(float(c.train.psnr[:, -1].mean()), 3) for name, c in codes.items()},
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
    side = args.resolution
    data = f"{len(glyphs.train)} {side}x{side} glyphs of {args.classes!r} in the fonts {glyphs.train_families}"
    for name, learner in learners.items():
        results = {"held-out PSNR after the fit (dB)": summary["test_psnr"][name]["final_mean"]}
        results["MLP accuracy on the held-out codes"] = accuracy[name]["test_accuracy_mean"]
        learner.save_pretrained(out / f"{name.lower()}-init", training_data=data, results=results)
    names = [p.name for p in written if p is not None] + ["ecop.pt", "learnit.pt", "*-init/", "codes/", "summary.json"]
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
