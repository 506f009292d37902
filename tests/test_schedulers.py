"""Learning-rate schedules (``optimizer.scheduler``): each built-in's curve against a hand
computation, every parameter group scheduled (dense and sparse tables, under automatic and
manual optimization), recipe validation, the registry and the contract check."""
from __future__ import annotations

import json
import sys

import pytest
import pytorch_lightning as pl
import torch

from mtlframe import cli
from mtlframe import run as run_mod
from mtlframe.encoders.numeric import NumericEncoder
from mtlframe.errors import RecipeError
from mtlframe.hookspecs import ComponentSpec, hookimpl
from mtlframe.recipe import recipe_from_dict
from mtlframe.registry import get_registry
from mtlframe.testing import check_scheduler, tiny_recipe, use_plugins

BUILTINS = ("cosine", "linear-warmup", "onecycle", "plateau", "step")


def _curve(name, total, steps, values=None, **args):
    """The rates of two groups (0.1 and 0.02) at t = 0 (built) and after each of ``steps`` steps."""
    schedule = get_registry().get("scheduler", name).load()(**args)
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(2)]
    opt = torch.optim.SGD([{"params": [params[0]], "lr": 0.1}, {"params": [params[1]], "lr": 0.02}])
    sch = schedule.build(opt, total, "max")
    rates = [opt.param_groups[0]["lr"]]
    for t in range(steps):
        opt.step()
        sch.step(values[t]) if values is not None else sch.step()
        rates.append(opt.param_groups[0]["lr"])
        assert opt.param_groups[1]["lr"] == pytest.approx(rates[-1] / 5, rel=1e-9)   # every group, same factor
    return rates


def test_each_schedule_follows_its_hand_computed_curve():
    # cosine, W = 2, r = 0.1, T = 6: t/W, then 0.1 + 0.9 * (1 + cos(pi (t - 2) / 4)) / 2
    assert _curve("cosine", 6, 6, warmup=2, min_lr_ratio=0.1) == pytest.approx(
        [0.0, 0.05, 0.1, 0.086819805, 0.055, 0.023180195, 0.01], abs=1e-9)
    # linear warm-up over 4 steps from 0.2: 0.2 + 0.8 t / 4, then constant
    assert _curve("linear-warmup", 10, 6, warmup=4, start_factor=0.2) == pytest.approx(
        [0.02, 0.04, 0.06, 0.08, 0.1, 0.1, 0.1], abs=1e-12)
    # step decay: x0.5 every 2 steps
    assert _curve("step", 10, 5, step_size=2, gamma=0.5) == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025])
    # plateau (max mode, patience 1): 1, 2 improve; then the 2nd validation without improvement halves it
    assert _curve("plateau", 10, 6, values=[1, 2, 2, 2, 2, 2], factor=0.5, patience=1) == pytest.approx(
        [0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.025])
    # one-cycle, T = 10, 30 % rising from 0.1 / 10 (linear), then down to 0.01 / 100 at the last step
    rates = _curve("onecycle", 10, 9, pct_start=0.3, div_factor=10, final_div_factor=100, anneal_strategy="linear")
    assert rates[:4] == pytest.approx([0.01, 0.055, 0.1, 0.1 - 0.0999 / 7])
    assert rates[-1] == pytest.approx(1e-4)


def test_the_contract_check_catches_a_schedule_that_leaves_a_group_out():
    """(Every built-in passes it in tests/test_registry.py.)"""
    from mtlframe.schedulers.base import LRSchedule
    from mtlframe.testing import ContractError

    class FirstGroupOnly(LRSchedule):
        def __init__(self, gamma: float = 0.5) -> None:
            self.gamma = gamma

        def build(self, optimizer, total_steps, mode="max"):
            return torch.optim.lr_scheduler.LambdaLR(optimizer, [lambda t: self.gamma ** t, lambda t: 1.0])

    with pytest.raises(ContractError, match="does not keep the groups' ratio"):
        check_scheduler(FirstGroupOnly)


def test_recipe_validation_names_the_scheduler_key():
    def problems(scheduler):
        with pytest.raises(RecipeError) as exc:
            recipe_from_dict(tiny_recipe(**{"optimizer.scheduler": scheduler}), "<tiny>")
        return [key for key, _ in exc.value.problems]

    assert problems({"name": "cosin"}) == ["optimizer.scheduler.name"]
    assert problems({"name": "cosine", "warmup": -1}) == ["optimizer.scheduler.warmup"]
    assert problems({"name": "cosine", "warmpu": 3}) == ["optimizer.scheduler.warmpu"]
    assert problems({"name": "plateau", "interval": "step"}) == ["optimizer.scheduler.interval"]
    assert problems({"name": "step", "interval": "batch"}) == ["optimizer.scheduler.interval"]
    recipe_from_dict(tiny_recipe(**{"optimizer.scheduler": {"name": "onecycle", "interval": "epoch"}}), "<tiny>")


def test_plugins_lists_the_scheduler_kind(capsys):
    assert cli.main(["plugins", "--kind", "scheduler", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert sorted(c["name"] for c in listed["components"]["scheduler"]) == list(BUILTINS)


class _Rates(pl.Callback):
    """Every parameter group's rate by name, after each training batch."""

    def __init__(self) -> None:
        self.rates: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.rates.append({g["name"]: g["lr"] for g in trainer.optimizers[0].param_groups})


class OwnRateEncoder(NumericEncoder):
    """A numeric encoder whose projection trains at its own rate, in its own parameter group, as the
    mtlframe-text plugin's fine-tuned transformer does (``param_groups``, group ``text-lm``)."""

    def param_groups(self, lr: float) -> list[dict]:
        return [{"params": list(self.proj.parameters()), "lr": 0.003, "name": "text-lm"}]


@hookimpl
def mtlframe_encoders():
    return [ComponentSpec("numeric-own-rate", OwnRateEncoder, "numeric, own learning rate")]


@pytest.mark.parametrize("combiner", ["static", "pcgrad"])
def test_dense_and_sparse_groups_follow_the_schedule_under_both_optimizations(tmp_path, combiner):
    """8 steps per epoch, 2 epochs: cosine over T = 16 steps with W = 4 from lr 0.01 (dense),
    sparse_lr 0.05 (row-wise Adagrad tables) and an encoder's own rate 0.003; pcgrad trains under
    manual optimization."""
    with use_plugins(sys.modules[__name__]):
        recipe = recipe_from_dict(tiny_recipe(**{
            "data.dataset.num_rows": 600, "data.batch_size": 64, "trainer.max_epochs": 2,
            "model.encoders[0]": {"name": "numeric-own-rate", "features": [f"x_{i:03d}" for i in range(8)], "dim": 4},
            "model.encoders[1]": {"name": "embedding", "features": ["cat_0"], "dim": 4, "sparse": True},
            "model.shared": "backbone", "combiner": {"name": combiner}, "logger": {"name": "csv"},
            "optimizer": {"name": "adam", "lr": 0.01, "sparse_optimizer": "rowwise_adagrad", "sparse_lr": 0.05,
                          "scheduler": {"name": "cosine", "warmup": 4}}}), "<tiny>")
        rates = _Rates()
        run_mod.train(recipe, tmp_path / "run", progress=False, callbacks=[rates])
    cosine = get_registry().get("scheduler", "cosine").load()(warmup=4)
    assert len(rates.rates) == 16
    for t, seen in enumerate(rates.rates):   # after step t + 1
        f = cosine.factor(t + 1, 16)
        assert seen["dense"] == pytest.approx(0.01 * f) and seen["sparse"] == pytest.approx(0.05 * f)
        assert seen["text-lm"] == pytest.approx(0.003 * f)
    import pandas as pd

    logged = pd.read_csv(tmp_path / "run" / "logs" / "metrics.csv")
    assert {"train/lr/dense", "train/lr/sparse"} <= set(logged.columns)
    first = logged.dropna(subset=["train/lr/dense"]).iloc[0]   # logged at step 0, before its update
    assert first["train/lr/dense"] == pytest.approx(0.0) and first["train/lr/sparse"] == pytest.approx(0.0)


def test_onecycle_momentum_over_sparse_tables_is_refused_at_its_key():
    """torch's OneCycleLR reads beta1 / momentum from the optimizer's defaults, which the one optimizer
    over dense and sparse tables does not have: a ValueError from inside torch at train start, before."""
    from mtlframe.errors import ArgumentError
    from mtlframe.optim import HybridOptimizer, RowWiseAdagrad
    from mtlframe.registry import get_registry

    dense, table = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(4, 2))
    groups = [{"params": [dense], "sparse": False, "name": "dense", "lr": 0.01},
              {"params": [table], "sparse": True, "name": "sparse", "lr": 0.05}]
    onecycle = get_registry().get("scheduler", "onecycle").load()
    for make_sparse, why in ((lambda g: RowWiseAdagrad(g), "group 'sparse' has no momentum or beta1"),
                             (lambda g: torch.optim.SparseAdam(g), "dense and sparse")):
        opt = HybridOptimizer(groups, lambda g: torch.optim.Adam(g), make_sparse)
        with pytest.raises(ArgumentError, match=why) as exc:
            onecycle(cycle_momentum=True).build(opt, 10)
        assert exc.value.param == "cycle_momentum" and "cycle_momentum: false" in str(exc.value)
        onecycle().build(opt, 10)     # without it: fine
    # an ordinary Adam still cycles its beta1: 0.95 at the first step (torch's max_momentum)
    adam = torch.optim.Adam([dense], lr=0.01)
    onecycle(cycle_momentum=True).build(adam, 10)
    assert adam.param_groups[0]["betas"][0] == pytest.approx(0.95)
