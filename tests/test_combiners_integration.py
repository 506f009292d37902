"""Combiners inside the Lightning module: the recipe's choice of shared parameters is honoured."""
from __future__ import annotations

import math

import pytest

from mtlframe.recipe import load_recipe
from mtlframe.run import build_system, train


@pytest.mark.parametrize("shared", ["encoders+backbone", "backbone", "encoders"])
def test_shared_parameter_scope(shared, repo, monkeypatch):
    monkeypatch.chdir(repo)
    dm, module, _ = build_system(load_recipe("recipes/adult_mmoe.yaml", [f"model.shared={shared}"]))
    ids = {id(p) for p in module.model.shared_parameters()}
    enc = {id(p) for e in module.model.encoders for p in e.parameters()}
    experts = {id(p) for p in module.model.backbone.experts.parameters()}
    gates = {id(p) for p in module.model.backbone.gates.parameters()}
    assert (enc <= ids) == (shared != "backbone")
    assert (experts <= ids) == (shared != "encoders")
    assert not gates & ids  # task-specific gates are never shared


def test_gradient_combiner_trains_through_module(repo, monkeypatch, tmp_path):
    monkeypatch.chdir(repo)
    recipe = load_recipe("recipes/adult_mmoe.yaml", ["combiner.name=pcgrad", "model.shared=backbone",
                                                     "trainer.max_epochs=1", "trainer.limit_train_batches=10", "trainer.log_every_n_steps=2",
                                                     "logger.name=csv"])
    result = train(recipe, tmp_path, progress=False)
    assert result.metrics["test"]["income"]["auc"] > 0.75
    log = (tmp_path / "logs" / "metrics.csv").read_text()
    assert "train/weight/income" in log and "train/weight/never_married" in log
    assert all(math.isfinite(v["auc"]) for v in result.metrics["test"].values())
