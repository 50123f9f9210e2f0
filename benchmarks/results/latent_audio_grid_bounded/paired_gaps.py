"""Paired per-clip PSNR gaps between the runs of this folder.

Usage: ``python benchmarks/results/latent_audio_grid_bounded/paired_gaps.py e03:l1 e01:l1``. A run's tag is the
method (``e``: ECoP, scored under its calibrated test rule; ``l``: Learnit) and its inner lr (``001`` 0.01, ``01``
0.1, ``03`` 0.3, ``1`` 1). Prints each run's validation and test PSNR and its mean gain over the trivial floor,
then for each ``a:b`` pair the mean of a - b over the clips, its standard error and the clips where a is better.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).parent


def load() -> tuple[dict[str, tuple[str, dict]], dict[str, list[float]]]:
    runs, floor = {}, {}
    for path in sorted(HERE.glob("grid64x8_*.json")):
        payload = json.loads(path.read_text())
        floor = payload["_meta"]["floor_psnr_per_signal"]
        methods = [m for m in payload if not m.startswith("_")]
        scored = next((m for m in methods if m.endswith("_test_calibrated")), methods[0])
        runs[path.stem.split("grid64x8_")[1]] = (scored, payload[scored])
    return runs, floor


def per_clip(record: dict, split: str) -> list[float]:
    return record["psnr_per_signal"] if split == "test" else record["val"]["psnr_per_signal"]


def gap(a: dict, b: dict, split: str) -> str:
    diffs = [x - y for x, y in zip(per_clip(a, split), per_clip(b, split), strict=True)]
    se = statistics.stdev(diffs) / math.sqrt(len(diffs))
    return f"{statistics.mean(diffs):+.2f} +- {se:.2f} ({sum(d > 0 for d in diffs)}/{len(diffs)})"


def main() -> None:
    runs, floor = load()
    print("floors", {split: round(statistics.mean(v), 2) for split, v in floor.items()})
    for tag, (method, record) in runs.items():
        over = statistics.mean(x - f for x, f in zip(record["psnr_per_signal"], floor["test"], strict=True))
        scores = f"val {record['val']['psnr']:.2f} test {record['psnr']:.2f}"
        print(f"{tag:6s} {method:28s} {scores}  over test floor {over:+.2f}")
    for pair in sys.argv[1:]:
        a, b = pair.split(":")
        print(a, "-", b, "test", gap(runs[a][1], runs[b][1], "test"), "val", gap(runs[a][1], runs[b][1], "val"))


if __name__ == "__main__":
    main()
