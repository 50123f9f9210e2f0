"""The README's "Your own loss and data" block runs as written (a registered loss, a ragged DataLoader batch)."""

from __future__ import annotations

import math
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _section_block(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    section = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, flags=re.MULTILINE | re.DOTALL)
    assert section, f"README.md has no section {title!r}"
    block = re.search(r"```python\n(.*?)```", section.group(1), flags=re.DOTALL)
    assert block, f"the README section {title!r} has no python block"
    return block.group(1)


def test_readme_own_loss_and_data_block_runs(capsys):
    namespace: dict = {}
    exec(compile(_section_block("Your own loss and data"), "README.md", "exec"), namespace)
    stats, fit = namespace["stats"], namespace["fit"]
    assert "psnr" not in stats and math.isfinite(stats["fit_loss"]) and stats["skipped"] == 0.0
    assert set(fit.history) == {"loss", "scale"} and fit.history["loss"].shape == (5, 3)
    assert bool((fit.history["loss"][-1] < fit.history["loss"][0]).all())  # every signal's loss went down
    assert capsys.readouterr().out.strip()
