"""The memory plan printed at the start of training: hand counts, the real optimizers' state, the warning."""
from __future__ import annotations

import io
import re
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from mtlframe import memory_plan
from mtlframe.layers import FusedEmbedding
from mtlframe.optim import build_optimizer, sparse_parameters
from mtlframe.recipe import OptimizerConfig, TrainerConfig


class _Encoder(nn.Module):
    def __init__(self, sparse: bool, dim: int = 8) -> None:   # the fixes named follow these parameters
        super().__init__()
        self.fused = FusedEmbedding([60, 40], dim=dim, sparse=sparse)   # one table [100, 8]


class _Model(nn.Module):
    """``model.encoders[0]``: an embedding table [100, 8] (800 values); a tower Linear(8, 1) (9 values)."""

    def __init__(self, sparse: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoders = nn.ModuleList([_Encoder(sparse)])
        self.tower = nn.Linear(8, 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.tower(self.encoders[0].fused(ids)).sum()


# (sparse, optimizer settings) -> bytes by hand: elements x 4 bytes x (1 weight + grad + states)
HAND = [
    (False, {"name": "adam"}, 800 * 4 * (1 + 1 + 2), 9 * 4 * (1 + 1 + 2)),
    (False, {"name": "sgd"}, 800 * 4 * (1 + 1 + 0), 9 * 4 * (1 + 1 + 0)),
    (False, {"name": "sgd", "momentum": 0.9}, 800 * 4 * (1 + 1 + 1), 9 * 4 * (1 + 1 + 1)),
    (False, {"name": "adagrad"}, 800 * 4 * (1 + 1 + 1), 9 * 4 * (1 + 1 + 1)),
    # sparse tables: no full-table gradient; SparseAdam 2 states per element, row-wise Adagrad 1 per row
    (True, {"name": "adam"}, 800 * 4 * (1 + 0 + 2), 9 * 4 * (1 + 1 + 2)),
    (True, {"name": "adam", "sparse_optimizer": "rowwise_adagrad"}, 800 * 4 + 100 * 4, 9 * 4 * (1 + 1 + 2)),
    (True, {"name": "adagrad"}, 800 * 4 * (1 + 0 + 1), 9 * 4 * (1 + 1 + 1)),
]


@pytest.mark.parametrize("sparse, opt, table_bytes, other_bytes", HAND)
def test_estimate_equals_the_hand_count_and_the_real_optimizer_state(sparse, opt, table_bytes, other_bytes):
    model = _Model(sparse)
    cfg = OptimizerConfig(lr=0.01, **opt)
    plan = memory_plan.estimate(model, cfg)
    table, other = plan.rows
    assert (table.name, table.shape, table.encoder) == ("model.encoders[0] fused.table", (100, 8), 0)
    assert (table.total, other.total, plan.total) == (table_bytes, other_bytes, table_bytes + other_bytes)

    # the optimizer mtlframe builds keeps exactly the state the plan counts, after a step
    optim = build_optimizer(cfg, [{"params": list(model.parameters())}], sparse_parameters(model))
    model(torch.tensor([[1, 70], [3, 61]])).backward()
    optim.step()
    state = {id(p): sum(t.numel() * t.element_size() for t in s.values() if torch.is_tensor(t) and t.dim() > 0)
             for p, s in optim.state.items()}
    weight = model.encoders[0].fused.table.weight
    assert state.get(id(weight), 0) == table.state
    assert sum(v for k, v in state.items() if k != id(weight)) == other.state


def _config(fraction: float = 0.5, **opt):
    return SimpleNamespace(optimizer=OptimizerConfig(**opt),
                           trainer=TrainerConfig(memory_warn_fraction=fraction, accelerator="cpu"))


def test_warning_names_the_table_and_the_fix_when_the_device_is_too_small():
    out = io.StringIO()
    with pytest.warns(UserWarning) as rec:
        plan = memory_plan.report(_Model(), _config(0.5), capacity=20_000, file=out)   # plan: 12,944 bytes
    msg = str(rec[0].message)
    assert plan.total == 12_944
    assert "12.6 KiB for training, 65% of the 19.5 KiB device memory" in msg
    assert "trainer.memory_warn_fraction=0.5" in msg
    assert "model.encoders[0] fused.table [100 x 8] 12.5 KiB (dense adam)" in msg
    assert "sparse: true on model.encoders[0]" in msg and "a smaller dim on model.encoders[0]" in msg
    assert "data.min_count" in msg
    printed = out.getvalue()
    assert printed.startswith("memory plan (weights + gradients + optimizer state):")
    assert re.search(r"model.encoders\[0\] fused.table\s+\[100 x 8\]\s+dense adam\s+3.1 KiB \+ 3.1 KiB \+ "
                     r"6.2 KiB = 12.5 KiB", printed)
    assert "total 12.6 KiB = 64.7% of 19.5 KiB device memory" in printed

    # a sparse table under SparseAdam: the fix is the row-wise optimizer, not sparse: true again
    with pytest.warns(UserWarning, match=r"\(sparse sparse_adam\) - fix: optimizer.sparse_optimizer: "
                                         r"rowwise_adagrad"):
        memory_plan.report(_Model(sparse=True), _config(0.1), capacity=20_000, file=io.StringIO())


def test_no_warning_below_the_threshold(recwarn):
    memory_plan.report(_Model(), _config(0.5), capacity=10**9, file=io.StringIO())
    assert not [w for w in recwarn if "memory plan" in str(w.message)]


def test_device_memory_on_cpu_is_the_system_ram():
    size, where = memory_plan.device_memory("cpu")
    with open("/proc/meminfo", encoding="ascii") as fh:
        kb = next(int(line.split()[1]) for line in fh if line.startswith("MemTotal:"))
    assert where == "system RAM" and abs(size - kb * 1024) < 0.01 * size


def test_train_prints_the_plan_and_warns_above_the_recipe_threshold(tmp_path, capsys):
    from mtlframe.recipe import recipe_from_dict
    from mtlframe.run import train
    from mtlframe.testing import tiny_recipe

    rec = recipe_from_dict(tiny_recipe(**{"trainer.memory_warn_fraction": 1e-9, "trainer.max_steps": 2}), "r")
    with pytest.warns(UserWarning, match=r"memory plan: .*Largest: model.encoders\[\d\] fused.table \[21 x \d+\]"):
        train(rec, tmp_path / "run")
    out = capsys.readouterr().out
    assert "memory plan (weights + gradients + optimizer state):" in out and "system RAM" in out
