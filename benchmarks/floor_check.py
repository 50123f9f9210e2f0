"""Which matrix cells compare methods that learned next to nothing? The trivial floor of saved matrix results.

    python benchmarks/floor_check.py benchmarks/results/matrix_1000_*.json --json floors.json

For every cell of the given ``benchmarks/matrix`` JSON files, loads the cell's data as the matrix ran it (its
reproduce flags, ``--eval-size`` from the file) and prints each method's paired gain over the trivial floor on the
test signals: each signal's own mean value (per channel) predicted everywhere (``reproduce``'s ``floor_psnr``;
new matrix runs record it and flag such cells themselves, this reads the files written before). A method less
than ``FLOOR_DB`` (1 dB; ``reproduce.evaluation``) above it is marked ``AT FLOOR``. SDF cells (band PSNR)
have no floor and are skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from matrix.cells import DATA
from matrix.report import floor_gains
from reproduce import RunConfig, load_splits
from reproduce.evaluation import floor_psnr


def data_floor(data: str, eval_size: int, cache: dict[tuple[str, int], list[float] | None]) -> list[float] | None:
    """The test signals' floor PSNRs of one matrix data (None where it has none)."""
    key = (data, eval_size)
    if key not in cache:
        flags = [part for flag, value in DATA[data].flags.items() for part in (flag, value)]
        config = RunConfig.from_args([*flags, "--eval-size", str(eval_size), "--no-plot"])
        floor = floor_psnr(load_splits(config))
        cache[key] = None if floor is None else floor["test"]
    return cache[key]


def check(paths: list[str]) -> list[dict[str, Any]]:
    rows, cache = [], {}
    for path in paths:
        matrix = json.loads(Path(path).read_text())
        eval_size = int(matrix["_meta"]["eval_size"])
        for key, entry in matrix["cells"].items():
            if entry.get("status") != "ok" or entry.get("metric", "psnr") != "psnr":
                continue
            floor = data_floor(entry["data"], eval_size, cache)
            if floor is None:
                continue
            scores = {who: entry[who]["psnr_per_signal"] for who in ("ecop", "learnit")}
            for who, psnr in scores.items():
                if len(psnr) != len(floor):
                    raise SystemExit(f"{path} {key}: {len(psnr)} {who} scores against {len(floor)} floor signals")
            over, at_floor = floor_gains(floor, scores)
            row: dict[str, Any] = {"file": Path(path).name, "cell": key, "floor_db": sum(floor) / len(floor)}
            row |= {who: {"psnr": entry[who]["psnr"], "over_floor": over[who]} for who in scores}
            rows.append(row | {"at_floor": at_floor})
    return rows


def _gain(gap: dict[str, float]) -> str:
    return f"{gap['mean_db']:+.2f} ± {gap['stderr_db']:.2f}"


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("matrix_json", nargs="+", help="benchmarks/matrix --json files")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)
    rows = check(args.matrix_json)
    for r in rows:
        gains = "  ".join(f"{who} {r[who]['psnr']:.2f} ({_gain(r[who]['over_floor'])})" for who in ("ecop", "learnit"))
        flag = f"  AT FLOOR: {', '.join(r['at_floor'])}" if r["at_floor"] else ""
        print(f"{r['file']:34s} {r['cell']:18s} floor {r['floor_db']:6.2f}  {gains}{flag}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
