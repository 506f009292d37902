"""The MMoE paper's synthetic benchmark (Ma et al., KDD 2018, sec. 3.2 / 5.3), small enough for CI.

Two regression tasks whose weight vectors have cosine 0.5 (``recipes/synthetic_mmoe.yaml``):
MMoE (8 experts of 16 units) against a shared bottom of 113 units (about the same number of
parameters, 14.8k vs 13.3k, as in the paper), both with towers of 8 units.

Measured here (10,000 rows, 20 epochs, Adam lr 0.002, batch 128; recipe seed = data seed),
mean test RMSE over the two tasks:

    seed   shared-bottom   mmoe     mmoe / shared-bottom
    0      0.380           0.262    0.69
    1      0.639           0.579    0.91
    mean   0.510           0.421    0.82

The test asserts MMoE wins on both and by at least 8 % on the mean (slack for other platforms'
floating point). It takes about 40 s on 2 busy cores. Seeds 0 and 1 were the first tried, but
single runs at this scale are noisy (the paper averages 200 runs). On 20,000 rows (before MMoE moved to the fused expert bank, which
changed its initialization) MMoE won on data seeds 0 and 1 (-12 %, -30 %) and lost on seed 2
(0.229 vs 0.179). The paper's trend (the gap grows as the correlation falls) does NOT show at
this size: MMoE also wins at correlation 0.9 and 1.0, by as much or more (docs/benchmarks.md), so
this test shows the win at low correlation, not the paper's explanation of it.
"""
from __future__ import annotations

import pytest
import torch

from mtlframe.recipe import load_recipe
from mtlframe.run import train

BACKBONES = {"shared-bottom": "{name: shared-bottom, hidden: [113]}",
             "mmoe": "{name: mmoe, num_experts: 8, expert_hidden: [16]}"}


@pytest.fixture
def one_thread():
    """Tiny matrices: one intra-op thread is several times faster than oversubscribed cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_mmoe_beats_shared_bottom_at_low_correlation(repo, tmp_path, one_thread):
    rmse: dict[tuple[str, int], float] = {}
    for seed in (0, 1):
        for name, backbone in BACKBONES.items():
            recipe = load_recipe(repo / "recipes/synthetic_mmoe.yaml", [
                "data.dataset.num_rows=10000", "data.dataset.correlation=0.5", f"data.dataset.seed={seed}",
                f"seed={seed}", "trainer.max_epochs=20", "optimizer.lr=0.002", "data.batch_size=128",
                f"model.backbone={backbone}"])
            test = train(recipe, tmp_path / f"{name}-{seed}", progress=False).metrics["test"]
            rmse[name, seed] = (test["task_0"]["rmse"] + test["task_1"]["rmse"]) / 2
    for seed in (0, 1):
        assert rmse["mmoe", seed] < rmse["shared-bottom", seed], rmse
    sb = (rmse["shared-bottom", 0] + rmse["shared-bottom", 1]) / 2
    mmoe = (rmse["mmoe", 0] + rmse["mmoe", 1]) / 2
    assert mmoe < 0.92 * sb, rmse
