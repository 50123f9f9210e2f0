"""Photographs the project never trained, validated or tested on, gathered from installed packages (issue 24).

    pip install scikit-learn        # only for its two sample photos; not a dependency of ecop-wrap
    python benchmarks/unseen_photos.py --out /tmp/unseen
    python benchmarks/matrix --cells siren:images,latent:images ... -- --test-images /tmp/unseen

Copies matplotlib's ``grace_hopper.jpg`` (a portrait) and, when scikit-learn is installed, its ``china.jpg`` (a
temple) and ``flower.jpg`` into ``--out``. None of them is among the scikit-image photos the builtin crops come
from, and nothing here downloads anything. ``benchmarks/reproduce --test-images FOLDER`` scores the held-out
test signals on windows of these photos, cropped as the builtin crops are, while training and validation stay on
the builtin photos: a check that settings picked on the builtin validation crops carry to other photographs.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import shutil
from pathlib import Path


def sources() -> dict[str, Path]:
    """File name -> path of every unseen photograph the installed packages hold."""
    found: dict[str, Path] = {}
    mpl = importlib.util.find_spec("matplotlib")
    if mpl is not None and mpl.origin is not None:
        found["grace_hopper.jpg"] = Path(mpl.origin).parent / "mpl-data" / "sample_data" / "grace_hopper.jpg"
    sklearn = importlib.util.find_spec("sklearn")
    if sklearn is not None and sklearn.origin is not None:
        for name in ("china.jpg", "flower.jpg"):
            found[name] = Path(sklearn.origin).parent / "datasets" / "images" / name
    return {name: path for name, path in found.items() if path.is_file()}


def main(argv: list[str] | None = None) -> dict[str, str]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder to copy the photographs to (created if missing)")
    args = parser.parse_args(argv)
    found = sources()
    if len(found) < 3:
        missing = "" if "china.jpg" in found else " (pip install scikit-learn adds china.jpg and flower.jpg)"
        print(f"note: {len(found)} unseen photograph(s) found{missing}")
    if not found:
        raise SystemExit("no unseen photographs found: install matplotlib (and scikit-learn)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    digests = {}
    for name, path in sorted(found.items()):
        shutil.copyfile(path, out / name)
        digests[name] = hashlib.sha256(path.read_bytes()).hexdigest()
        print(f"{name}  sha256 {digests[name][:16]}...  from {path}")
    (out / "sources.json").write_text(json.dumps({n: str(p) for n, p in found.items()} | {"sha256": digests}))
    return digests


if __name__ == "__main__":
    main()
