"""Test-time fitting alone with ``graph_free_dtype`` None vs bfloat16, from one saved initialization.

Usage: ``python benchmarks/device/bf16_test_time.py INIT.pt [N_CROPS] [--device cpu|cuda]``

INIT.pt: a file of ``ContextPruningMetaLearner.save`` for the ``benchmarks/speed --fit`` SIREN (3x128, w0 30), e.g.
from ``benchmarks/speed --fit --fit-train-steps 1000 --fit-save-checkpoint INIT.pt``. Fits ``N_CROPS`` (32) builtin
test crops with 16 norm-scaled full-context steps and prints the mean PSNR of both and their paired gap.
docs/benchmarks.md's -11.3 dB is this script on the code before the fix (commit dee052d); since the fix the
adapter runs no bf16 pass without ``pruned_steps`` and the gap is 0.
"""

from __future__ import annotations

import argparse
import warnings

import torch

from ecop_wrap import ContextPruningMetaLearner, GradScaledAdapter, Siren
from ecop_wrap.data import skimage_crops


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("init")
    ap.add_argument("n", type=int, nargs="?", default=32)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = Siren(2, 3, 128, 3, w0=30.0).to(args.device)
    learner = ContextPruningMetaLearner.from_checkpoint(model, args.init, outer_lr=3e-4, seed=0)
    test = skimage_crops("test", resolution=32, n=args.n, seed=1)
    signal = (test.coords.to(args.device), torch.as_tensor(test.values).to(args.device))
    final = {}
    for name, dtype in (("float32", None), ("bfloat16", torch.bfloat16)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the emulated-bf16 warning on CPUs without native bf16
            history = GradScaledAdapter(learner, steps=16, graph_free_dtype=dtype).fit(signal).history
        final[name] = history["psnr"][-1]
        scales = [round(float(s), 3) for s in history["scale"][:4].mean(dim=1)]
        print(f"{name}: mean PSNR {float(final[name].mean()):.2f} dB; mean scale of steps 0-3: {scales}")
    gap = final["bfloat16"] - final["float32"]
    print(
        f"bf16 - float32 at test time: {float(gap.mean()):+.3f} dB +- {float(gap.std() / len(gap) ** 0.5):.3f} (se), "
        f"{int((gap > 0).sum())}/{len(gap)} crops better"
    )


if __name__ == "__main__":
    main()
