"""Faithful STEM: per-task embedding tables (``embedding`` with ``task_specific``) read by ``stem``.

Su et al., "STEM: Unleashing the Power of Embeddings for Multi-task Recommendation", AAAI 2024:
each task has its own embedding tables beside the shared ones, so a task's loss never reaches
another task's embedding rows.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from mtlframe.backbones.base import TaskInputs
from mtlframe.backbones.stem import STEM
from mtlframe.encoders.embedding import EmbeddingEncoder
from mtlframe.encoders.numeric import NumericEncoder
from mtlframe.errors import RecipeError
from mtlframe.features import FeatureInfo, TaskSpec
from mtlframe.model import MultiTaskModel
from mtlframe.optim import sparse_parameters
from mtlframe.recipe import load_recipe, recipe_from_dict
from mtlframe.run import build_system, load_checkpoint, predict_frame, train
from mtlframe.testing import tiny_recipe, train_tiny
from mtlframe.towers.mlp import MLPTower

REPO = Path(__file__).resolve().parents[1]
TASKS = ["a", "b"]
B = 16
INFO = {
    "user": FeatureInfo("user", "categorical", cardinality=50),
    "item": FeatureInfo("item", "categorical", cardinality=30),
    "tags": FeatureInfo("tags", "multi_categorical", cardinality=12, max_len=3),
    "age": FeatureInfo("age", "numeric"),
}


def _model(task_specific=True, **stem) -> MultiTaskModel:
    torch.manual_seed(0)
    emb = EmbeddingEncoder(["user", "item", "tags"], dim=4, task_specific=task_specific, feature_info=INFO,
                           task_names=TASKS)
    num = NumericEncoder(["age"], feature_info=INFO)
    d = emb.output_dim + num.output_dim
    backbone = STEM(num_shared_experts=1, num_task_experts=1, expert_hidden=[8], input_dim=d, task_names=TASKS,
                    task_inputs=bool(emb.per_task), **stem)
    towers = {t: MLPTower(hidden=[4], input_dim=8, output_dim=1) for t in TASKS}
    return MultiTaskModel([emb, num], backbone, towers, [TaskSpec(t, "binary", t) for t in TASKS])


def _batch(model: MultiTaskModel) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    emb = model.encoders[0]
    cols = {"user": torch.randint(0, 50, (B,), generator=g), "item": torch.randint(0, 30, (B,), generator=g)}
    batch = dict(emb.featurize(cols))
    batch["tags"] = torch.randint(0, 12, (B, 3), generator=g)
    batch["age"] = torch.randn(B, generator=g)
    batch.update(model.encoders[1].featurize({"age": batch.pop("age")}))
    return batch


def _grad(loss: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    (g,) = torch.autograd.grad(loss, [param], retain_graph=True, allow_unused=True)
    return torch.zeros_like(param) if g is None else g


def test_task_loss_reaches_its_own_and_the_shared_tables_only():
    """Worked example: task a's loss gives task b's table rows exactly zero gradient, and non-zero
    gradient to the looked-up rows of a's own table and of the shared table (rows not in the batch: 0)."""
    model = _model()
    emb = model.encoders[0]
    batch = _batch(model)
    loss_a = model(batch)["a"].sum()
    ids = batch[emb.key].long().reshape(-1)                      # fused-table rows of the batch
    used = torch.zeros(emb.fused.table.num_embeddings, dtype=torch.bool)
    used[ids] = True
    for owner in ("shared", "a", "b"):
        tables = emb if owner == "shared" else emb.task_tables[owner]
        fused = tables.fused.table.weight if owner == "shared" else tables["fused"].table.weight
        bag = tables.bags["tags"].weight if owner == "shared" else tables["bags"]["tags"].weight
        g_rows = _grad(loss_a, fused).abs().sum(1)               # (rows,)
        g_bag = _grad(loss_a, bag)
        if owner == "b":
            assert torch.count_nonzero(g_rows) == 0 and torch.count_nonzero(g_bag) == 0
        else:
            assert (g_rows[used] > 0).all(), f"{owner}: every looked-up row gets task a's gradient"
            assert torch.count_nonzero(g_rows[~used]) == 0
            assert g_bag.abs().sum() > 0
    # the same holds the other way round
    loss_b = model(batch)["b"].sum()
    assert torch.count_nonzero(_grad(loss_b, emb.task_tables["a"]["fused"].table.weight)) == 0
    assert _grad(loss_b, emb.task_tables["b"]["fused"].table.weight).abs().sum() > 0


def test_projection_fallback_lets_every_task_reach_the_tables():
    """Without per-task tables (e_t = W_t x), task a's loss reaches the one table: the conflict the tables remove."""
    model = _model(task_specific=False)
    assert not model.task_inputs and not model.backbone.task_inputs
    loss_a = model(_batch(model))["a"].sum()
    assert _grad(loss_a, model.encoders[0].fused.table.weight).abs().sum() > 0
    assert {n for n, _ in model.backbone.named_parameters() if "embedding" in n} >= {
        "task_embeddings.a.weight", "task_embeddings.b.weight", "shared_embedding.weight"}


def test_shapes_and_task_inputs():
    model = _model()
    emb, num = model.encoders
    batch = _batch(model)
    x = model.encode(batch)
    assert isinstance(x, TaskInputs)
    d = emb.output_dim + num.output_dim
    assert x.shared.shape == (B, d) and set(x.tasks) == set(TASKS)
    assert all(v.shape == (B, d) for v in x.tasks.values())
    own = emb.forward_tasks(batch)
    assert {t: v.shape for t, v in own.items()} == {t: (B, 3 * 4) for t in TASKS}
    for t in TASKS:  # task input = the task's own embeddings, then the shared numeric encoder's output
        torch.testing.assert_close(x.tasks[t], torch.cat([own[t], num(batch)], 1))
    torch.testing.assert_close(x.shared, torch.cat([emb(batch), num(batch)], 1))
    out = model(batch)
    assert {t: v.shape for t, v in out.items()} == {t: (B,) for t in TASKS}
    assert model.backbone.gate_weights["a"].shape == (B, 2 + 1)
    assert not hasattr(model.backbone, "task_embeddings")       # no projection with per-task tables


def test_tables_for_some_tasks_only():
    model = _model(task_specific=["b"])
    emb = model.encoders[0]
    assert emb.per_task == ("b",) and list(emb.task_tables) == ["b"]
    x = model.encode(_batch(model))
    torch.testing.assert_close(x.tasks["a"], x.shared)            # task a reads the shared tables
    assert not torch.allclose(x.tasks["b"], x.shared)


def test_shared_parameters_are_exactly_those_used_by_several_tasks():
    model = _model()
    outs = model(_batch(model))
    params = [p for n, p in model.named_parameters() if not n.startswith("towers.")]
    users = {id(p): 0 for p in params}
    for t in TASKS:
        grads = torch.autograd.grad(outs[t].sum(), params, retain_graph=True, allow_unused=True)
        for p, g in zip(params, grads):
            users[id(p)] += int(g is not None and bool(g.abs().sum() > 0))
    shared = {id(p) for p in model.shared_parameters()}
    names = {id(p): n for n, p in model.named_parameters()}
    expected = {i for i, n in users.items() if n > 1}
    assert shared == expected, sorted(names[i] for i in shared ^ expected)
    emb = model.encoders[0]
    assert id(emb.fused.table.weight) in shared
    assert not shared & {id(p) for p in emb.task_tables.parameters()}


def test_backbone_without_task_inputs_is_refused_by_the_model():
    emb = EmbeddingEncoder(["user"], dim=4, task_specific=True, feature_info=INFO, task_names=TASKS)
    from mtlframe.backbones.mmoe import MMoE
    with pytest.raises(ValueError, match="reads only the shared input"):
        MultiTaskModel([emb], MMoE(input_dim=4, task_names=TASKS), {t: MLPTower(input_dim=64, output_dim=1)
                       for t in TASKS}, [TaskSpec(t, "binary", t) for t in TASKS])
    stem = STEM(input_dim=4, task_names=TASKS, task_inputs=True)
    with pytest.raises(ValueError, match="per-task"):
        stem(torch.randn(2, 4))


@pytest.mark.parametrize("change,key,match", [
    ({"model.backbone": {"name": "mmoe"}}, "model.encoders[1].task_specific", "need a backbone that reads per-task"),
    ({"model.encoders[1].task_specific": ["task_0", "nope"]}, "model.encoders[1].task_specific", "'nope', not a task"),
    ({"model.backbone": {"name": "stem", "embedding_dim": 8}}, "model.backbone.embedding_dim", "remove embedding_dim"),
])
def test_bad_recipes_name_the_key(change, key, match):
    recipe = tiny_recipe(**{"model.backbone": {"name": "stem", "expert_hidden": [8]},
                            "model.encoders[1].task_specific": True, **change})
    with pytest.raises(RecipeError, match=match) as info:  # recipe validation: before any data is read
        recipe_from_dict(recipe, "r")
    assert [k for k, _ in info.value.problems] == [key]


def test_trains_saves_and_predicts(tmp_path):
    """A tiny recipe with per-task tables trains, and its checkpoint loads back into the same predictions."""
    recipe = tiny_recipe(**{"model.backbone": {"name": "stem", "expert_hidden": [16]},
                            "model.encoders[1].task_specific": True})
    result = train_tiny(tmp_path, recipe)
    loaded = load_checkpoint(result.best_checkpoint)
    emb = loaded.model.encoders[1]
    assert emb.per_task == ("task_0", "task_1_bin") and loaded.model.task_inputs
    state = torch.load(result.best_checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    torch.testing.assert_close(emb.task_tables["task_1_bin"]["fused"].table.weight,
                               state["model.encoders.1.task_tables.task_1_bin.fused.table.weight"])
    assert not torch.equal(emb.task_tables["task_0"]["fused"].table.weight, emb.fused.table.weight)
    frame = pd.DataFrame({**{f"x_{i:03d}": [0.1, -1.0, 2.0] for i in range(8)}, "cat_0": ["3", "7", "new"]})
    pred = predict_frame(loaded, frame)
    assert list(pred.columns) == ["task_0", "task_1_bin"] and len(pred) == 3
    assert pred["task_1_bin"].between(0, 1).all() and pred.notna().all().all()


@pytest.mark.parametrize("combiner", [{"name": "pcgrad"}, {"name": "mgda", "upper_bound": True}])
def test_gradient_level_combiners_train_with_task_tables(tmp_path, combiner):
    recipe = tiny_recipe(**{"model.backbone": {"name": "stem", "expert_hidden": [16]},
                            "model.encoders[1].task_specific": True}, combiner=combiner)
    result = train_tiny(tmp_path, recipe)
    assert result.metrics["test"]["task_1_bin"]["auc"] > 0.5


def test_mgda_upper_bound_representation_covers_every_task_input(tmp_path, monkeypatch):
    """With per-task tables MGDA-UB differentiates w.r.t. the shared input and every task's input:
    the numeric encoder's output reaches the task experts only through the task inputs."""
    from mtlframe.combiners.mgda import MGDA

    seen = []
    real = MGDA.backward

    def spy(self, losses, shared, manual_backward, representation=None):
        seen.append(representation)
        return real(self, losses, shared, manual_backward, representation=representation)

    monkeypatch.setattr(MGDA, "backward", spy)
    recipe = tiny_recipe(**{"model.backbone": {"name": "stem", "expert_hidden": [16]},
                            "model.encoders[1].task_specific": True, "trainer.limit_train_batches": 2},
                         combiner={"name": "mgda", "upper_bound": True})
    train_tiny(tmp_path, recipe)
    assert seen and all(isinstance(r, list) and len(r) == 1 + len(recipe["tasks"]) for r in seen)
    shared, *tasks = seen[0]
    assert all(t.shape == shared.shape for t in tasks)


def test_sparse_task_tables(tmp_path):
    """sparse: true makes every copy sparse; the task tables are not shared, so only the shared
    table counts against gradient-level combiners (model.shared: backbone lifts that, as before)."""
    base = {"model.backbone": {"name": "stem", "expert_hidden": [16]},
            "model.encoders[1]": {"name": "embedding", "features": ["cat_0"], "dim": 4, "sparse": True,
                                  "task_specific": True}}
    _, module, _ = build_system(recipe_from_dict(tiny_recipe(**base), "r"))
    emb = module.model.encoders[1]
    assert len(sparse_parameters(emb)) == 3
    with pytest.raises(RecipeError, match="sparse embedding tables"):
        build_system(recipe_from_dict(tiny_recipe(**base, combiner={"name": "pcgrad"}), "r"))
    result = train_tiny(tmp_path, tiny_recipe(**base, combiner={"name": "pcgrad"}, **{"model.shared": "backbone"}))
    assert result.metrics["test"]["task_1_bin"]["auc"] > 0.5


def test_movielens_learns_with_task_tables(ml100k, tmp_path):
    """MovieLens-100k, STEM with per-task tables on the embedding encoder: past stated targets."""
    recipe = load_recipe(REPO / "recipes" / "movielens_stem.yaml", [f"data.dataset.path={ml100k}"])
    result = train(recipe, tmp_path, progress=False)
    test = result.metrics["test"]
    assert test["rating"]["rmse"] <= 0.93    # the targets of recipes/movielens_mmoe.yaml
    assert test["like"]["auc"] >= 0.78
