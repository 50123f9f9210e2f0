"""The command line, made from :class:`RunConfig`'s fields, and :func:`main`: run, merge or compare results."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import types
import typing
from collections.abc import Sequence
from typing import Any

from ecop_wrap import LOSSES

from .config import BATCHING_BENCHMARK_ENV, DATA, RunConfig
from .methods import METHOD_TABLE, METHODS
from .models import MODELS
from .report import compare_files, format_gaps, format_table, paired_gaps, save_plot
from .run import run
from .sdf import register_losses
from .workers import merge_results, run_parallel


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _value_type(annotation: Any) -> Any:
    """The class a flag's values have: ``X`` of ``X | None``, the element type of a homogeneous tuple."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return _value_type(args[0])
    if typing.get_origin(annotation) is tuple:
        return args[0] if isinstance(args[0], type) else None
    return annotation


def _add_option(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, spec: dataclasses.Field[Any], annotation: Any
) -> None:
    """``add_argument`` for one field: type from its annotation, default, help and extras from its metadata."""
    extras = dict(spec.metadata["argparse"])
    default = list(spec.default) if isinstance(spec.default, tuple) else spec.default
    value_type = _value_type(annotation)
    if value_type is bool:
        extras.setdefault("action", "store_true")
    else:
        extras.setdefault("type", value_type)
    parser.add_argument(_flag(spec.name), default=default, help=spec.metadata["help"], **extras)


def _cli_fields() -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(RunConfig) if f.metadata.get("cli", True)]


def make_parser() -> argparse.ArgumentParser:
    """The parser: one flag per :class:`RunConfig` field, in declaration order, grouped as their metadata says."""
    description = sys.modules[__package__].__doc__ or ""
    parser = argparse.ArgumentParser(
        description=description.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    groups: dict[str | None, argparse.ArgumentParser | argparse._ArgumentGroup] = {
        None: parser,
        DATA: parser.add_mutually_exclusive_group(),
    }
    annotations = typing.get_type_hints(RunConfig)
    for spec in _cli_fields():
        title = spec.metadata["group"]
        if title not in groups:
            groups[title] = parser.add_argument_group(title)
        _add_option(groups[title], spec, annotations[spec.name])
    return parser


def _requested_methods(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[str, ...]:
    """``--methods`` (default: every method that applies to the data) and the models evaluation rows test."""
    video_only = {m for m in METHODS if MODELS[METHOD_TABLE[m].model].frames}  # a NeRV decodes video frames
    chosen = args.methods or [m for m in METHODS if args.video or m not in video_only]
    if not args.video and video_only.intersection(chosen):
        parser.error("the nerv_* methods decode video frames: run them with --video")
    # an evaluation-only method tests another method's model, which is then trained too
    sources = {METHOD_TABLE[m].trained_as for m in chosen}
    requested = set(chosen) | {m for m in sources if m is not None}
    return tuple(m for m in METHODS if m in requested)


def parse_config(argv: Sequence[str] | None = None) -> RunConfig:
    """Parse and check the command line (``sys.argv[1:]`` when ``argv`` is None); exits on bad flags."""
    parser = make_parser()
    args = parser.parse_args(argv)
    values: dict[str, Any] = {}
    for spec in _cli_fields():
        value = getattr(args, spec.name)
        bound = spec.metadata["at_least"]
        if bound is not None and value < bound:
            parser.error(f"{_flag(spec.name)} must be >= {bound}")
        values[spec.name] = tuple(value) if isinstance(value, list) else value
    values["methods"] = _requested_methods(parser, args)
    if not args.sdf_clamp > 0 or not args.sdf_band > 0:
        parser.error("--sdf-clamp and --sdf-band must be > 0")
    register_losses(args.sdf_clamp)  # --loss clamped_l1
    if args.loss not in LOSSES:
        parser.error(f"--loss must be one of {tuple(LOSSES)} (or a name registered in ecop_wrap.LOSSES)")
    if not args.huber_delta > 0:
        parser.error("--huber-delta must be > 0")
    if not 0.0 <= args.mask_fraction < 1.0:
        parser.error("--mask-fraction must be in [0, 1)")
    if args.mask_fraction > 0 and (args.audio or args.sphere or args.video or args.sdf):
        parser.error("--mask-fraction hides blocks of images: use it with --images")
    if args.mask_fraction > 0 and args.mask_block >= args.resolution:
        parser.error("--mask-block must be smaller than --resolution (some pixels must stay observed)")
    if args.test_images is not None:
        if args.audio or args.sphere or args.video or args.sdf:
            parser.error("--test-images replaces the test split of images: use it with --images")
        if args.aspect_crops is not None or args.mask_fraction > 0:
            parser.error("--test-images does not combine with --aspect-crops or --mask-fraction")
    if args.aspect_crops is not None:
        if not args.aspect_crops >= 1:  # also refuses NaN
            parser.error("--aspect-crops MAX_ASPECT must be >= 1")
        if args.images != "builtin" or args.audio or args.sphere or args.video or args.sdf:
            parser.error("--aspect-crops crops the built-in photos: use it with --images builtin (the default)")
        if args.mask_fraction > 0:
            parser.error("--aspect-crops and --mask-fraction do not combine")
        if args.resolution < 2:
            parser.error("--aspect-crops needs --resolution >= 2")
    if args.audio or args.sphere or args.video or args.sdf:
        values["images"] = None
    return RunConfig(**values, argv=tuple(sys.argv[1:] if argv is None else argv))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the comparison (or ``--merge`` / ``--paired`` result files), print the tables, write ``--json``."""
    config = parse_config(argv)
    if not config.timed_batching:  # before any learner exists; worker processes inherit it
        os.environ[BATCHING_BENCHMARK_ENV] = "0"
    started = time.perf_counter()

    def log(text: str) -> None:
        print(text, flush=True)

    if config.paired:
        return compare_files(*config.paired, log)
    if config.merge:
        results = merge_results(config.merge)
    else:
        results = run_parallel(config, log) if config.workers > 1 else run(config, log)
        results["_meta"]["wall_seconds"] = round(time.perf_counter() - started, 1)
    print(format_table(results))
    floor = results["_meta"].get("floor_psnr_per_signal")
    if floor:
        test, val = (sum(floor[k]) / len(floor[k]) for k in ("test", "val"))
        print(f"trivial floor (each held-out signal's own mean everywhere): {test:.2f} dB on test, {val:.2f} on val")
    for split in (None, "val"):
        gaps = paired_gaps(results, split)
        if gaps:
            results[f"_paired_gaps{'_' + split if split else ''}"] = gaps
            print(format_gaps(gaps, f"paired PSNR gaps on the {'validation' if split else 'held-out'} signals:"))
    if config.json is not None:
        config.json.parent.mkdir(parents=True, exist_ok=True)
        config.json.write_text(json.dumps(results, indent=1, allow_nan=True))
        if not config.no_plot:
            save_plot(results, config.json.with_suffix(".png"))
        print(f"wrote {config.json}")
    return results
