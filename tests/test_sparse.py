"""Sparse embedding tables and their optimizers; the memory-relevant facts of the data path."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from mtlframe.batching import ColumnBatches, take
from mtlframe.errors import RecipeError
from mtlframe.optim import HybridOptimizer, RowWiseAdagrad, build_optimizer, sparse_parameters
from mtlframe.preprocess import LabelSpec, Preprocessor
from mtlframe.recipe import OptimizerConfig, recipe_from_dict
from mtlframe.testing import tiny_datamodule, tiny_recipe, train_tiny


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(10, 4, sparse=True)
        self.out = nn.Linear(4, 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(self.emb(ids)).sum()


def _step(net: _Net, opt: torch.optim.Optimizer, ids=(1, 3, 3)) -> None:
    opt.zero_grad()
    net(torch.tensor(ids)).backward()
    opt.step()


@pytest.mark.parametrize("kind", ["sparse_adam", "rowwise_adagrad"])
def test_sparse_optimizers_update_only_the_rows_of_the_batch(kind):
    net = _Net()
    cfg = OptimizerConfig(name="adam", lr=0.01, sparse_optimizer=kind)
    opt = build_optimizer(cfg, [{"params": list(net.parameters())}], sparse_parameters(net))
    assert isinstance(opt, HybridOptimizer) and sparse_parameters(net) == [net.emb.weight]
    table, bias = net.emb.weight.detach().clone(), net.out.bias.detach().clone()
    _step(net, opt)
    assert net.emb.weight.grad is None or net.emb.weight.grad.is_sparse
    changed = (net.emb.weight.detach() != table).any(dim=1)
    assert changed.nonzero().flatten().tolist() == [1, 3]          # rows outside the batch untouched
    assert not torch.equal(net.out.bias.detach(), bias)             # the dense part steps too (Adam)
    state = opt.state[net.emb.weight]
    if kind == "rowwise_adagrad":
        assert state["sum"].shape == (10,)                          # one accumulator per row
    else:
        assert state["exp_avg"].shape == (10, 4)


def test_rowwise_adagrad_matches_its_formula_for_sparse_and_dense_gradients():
    torch.manual_seed(0)
    w0 = torch.randn(5, 3)
    g = torch.zeros(5, 3)
    g[2] = torch.tensor([1.0, -2.0, 2.0])
    g[4] = torch.tensor([0.5, 0.5, 0.5])
    results = []
    for grad in (g.to_sparse(1), g.to_sparse(), g):                    # embedding layout, fully sparse, dense
        w = nn.Parameter(w0.clone())
        opt = RowWiseAdagrad([w], lr=0.1)
        for _ in range(2):
            w.grad = grad.clone()
            opt.step()
        results.append(w.detach())
    s = torch.stack([g.pow(2).mean(1), 2 * g.pow(2).mean(1)])          # accumulator after step 1, 2
    expected = w0 - 0.1 * g / (s[0].sqrt() + 1e-10).unsqueeze(1) - 0.1 * g / (s[1].sqrt() + 1e-10).unsqueeze(1)
    expected[[0, 1, 3]] = w0[[0, 1, 3]]
    for got in results:
        torch.testing.assert_close(got, expected)
    with pytest.raises(ValueError, match="2-D"):
        RowWiseAdagrad([nn.Parameter(torch.zeros(3))])


def test_hybrid_optimizer_state_round_trip_continues_identically():
    nets = [_Net(), _Net()]
    cfg = OptimizerConfig(name="adam", lr=0.01)                      # auto: SparseAdam for the table
    opts = [build_optimizer(cfg, [{"params": list(n.parameters())}], sparse_parameters(n)) for n in nets]
    _step(nets[0], opts[0])
    nets[1].load_state_dict(nets[0].state_dict())
    buf = io.BytesIO()                                               # as a checkpoint does
    torch.save(opts[0].state_dict(), buf)
    buf.seek(0)
    opts[1].load_state_dict(torch.load(buf, weights_only=True))
    assert opts[1].inner[True].state is opts[1].state                # inner optimizers see the loaded state
    for net, opt in zip(nets, opts):
        _step(net, opt, ids=(3, 7))
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(a, b)


def test_adagrad_and_sgd_take_sparse_tables_natively_without_weight_decay():
    net = _Net()
    opt = build_optimizer(OptimizerConfig(name="adagrad", lr=0.1, weight_decay=0.01),
                          [{"params": list(net.parameters())}], sparse_parameters(net))
    assert type(opt) is torch.optim.Adagrad
    assert [g["weight_decay"] for g in opt.param_groups if g["sparse"]] == [0.0]
    table = net.emb.weight.detach().clone()
    _step(net, opt)
    assert (net.emb.weight.detach() != table).any(dim=1).nonzero().flatten().tolist() == [1, 3]


def test_sparse_lr_applies_to_the_tables_only():
    net = _Net()
    opt = build_optimizer(OptimizerConfig(name="adam", lr=1e-3, sparse_optimizer="rowwise_adagrad", sparse_lr=0.05),
                          [{"params": list(net.parameters())}], sparse_parameters(net))
    assert sorted((g["sparse"], g["lr"]) for g in opt.param_groups) == [(False, 1e-3), (True, 0.05)]


def _sparse_recipe(**overrides):
    return tiny_recipe(**{"model.encoders[1]": {"name": "embedding", "features": ["cat_0"], "dim": 4,
                                                "sparse": True}}, **overrides)


def test_sparse_tables_refuse_gradient_combiners_on_shared_tables_and_clipping():
    from mtlframe.run import build_system
    with pytest.raises(RecipeError) as err:
        build_system(recipe_from_dict(_sparse_recipe(combiner={"name": "pcgrad"}), "r"))
    assert "combiner.name" in str(err.value) and "model.encoders[1]" in str(err.value)
    assert "model.shared: backbone" in str(err.value)
    with pytest.raises(RecipeError, match="trainer.gradient_clip_val"):
        build_system(recipe_from_dict(_sparse_recipe(**{"trainer.gradient_clip_val": 1.0}), "r"))


@pytest.mark.parametrize("combiner", ["pcgrad", "mgda"])
def test_gradient_combiners_train_sparse_tables_outside_the_shared_set(tmp_path, combiner):
    rec = _sparse_recipe(combiner={"name": combiner}, **{"model.shared": "backbone"})
    result = train_tiny(tmp_path / combiner, rec)
    assert result.metrics["test"]["task_1_bin"]["auc"] > 0.7


def test_sparse_tables_learn_as_well_as_dense(tmp_path):
    aucs = {}
    for name, rec in {
        "dense": tiny_recipe(**{"trainer.max_epochs": 3}),
        "sparse_adam": _sparse_recipe(**{"trainer.max_epochs": 3}),
        "rowwise": _sparse_recipe(**{"trainer.max_epochs": 3, "optimizer.sparse_optimizer": "rowwise_adagrad",
                                     "optimizer.sparse_lr": 0.05}),
    }.items():
        aucs[name] = train_tiny(tmp_path / name, rec).metrics["test"]["task_1_bin"]["auc"]
    assert aucs["dense"] > 0.8
    assert aucs["sparse_adam"] > aucs["dense"] - 0.02
    assert aucs["rowwise"] > aucs["dense"] - 0.02


# -- memory-relevant facts of the data path --------------------------------------------------------


def _frame(n=1000):
    rng = np.random.default_rng(0)
    return pd.DataFrame({"id": rng.integers(0, 50, n).astype(np.int32), "city": rng.choice(["a", "b", None], n),
                         "x": rng.standard_normal(n).astype(np.float32),
                         "y": rng.integers(0, 2, n).astype(np.float32), "keep": np.arange(n)})


def test_preprocessor_outputs_compact_dtypes_and_keeps_integer_vocabularies_as_arrays():
    frame = _frame()
    pre = Preprocessor({"id": "categorical", "city": "categorical", "x": "numeric"},
                       [LabelSpec("t", "y", "binary")]).fit(frame)
    out = pre.transform(frame)
    assert {k: v.dtype for k, v in out.items()} == {
        "id": torch.int32, "city": torch.int32, "x": torch.float32, "label/t": torch.float32, "mask/t": torch.bool}
    assert isinstance(pre.vocab["id"], np.ndarray) and pre.vocab["id"].dtype == np.int64
    assert pre.vocab["city"] == ["a", "b"] or pre.vocab["city"] == ["b", "a"]
    counts = frame["id"].value_counts()
    assert pre.vocab["id"].tolist() == counts.index.tolist()                   # frequency order
    state = Preprocessor.from_state_dict(pre.state_dict())
    assert isinstance(pre.state_dict()["vocab"]["id"], torch.Tensor)       # loads with weights_only=True
    assert torch.equal(state.transform(frame)["id"], out["id"])


def test_transform_splits_equals_per_split_frames_and_releases_columns():
    frame = _frame()
    pre = Preprocessor({"id": "categorical", "city": "categorical", "x": "numeric"}, [LabelSpec("t", "y", "binary")])
    index = {"train": np.arange(0, 800), "val": np.arange(800, 900), "test": np.arange(900, 1000)}
    pre.fit(frame, rows=index["train"])
    fitted_on_copy = Preprocessor(pre.features, pre.labels).fit(frame.iloc[:800].reset_index(drop=True))
    assert pre.vocab["id"].tolist() == fitted_on_copy.vocab["id"].tolist() and pre.stats == fitted_on_copy.stats
    expected = {k: pre.transform(frame.iloc[v].reset_index(drop=True)) for k, v in index.items()}
    out = pre.transform_splits(frame, index, release=["id", "city", "x", "y"])
    assert list(frame.columns) == ["keep"]                                  # used columns released
    for k in index:
        assert list(out[k]) == list(expected[k])
        for c in out[k]:
            assert torch.equal(out[k][c], expected[k][c])


def test_datamodule_holds_each_column_once_in_model_ready_form():
    from mtlframe.build import Builder
    dm = tiny_datamodule()
    assert "cat_0" not in dm.table.frame.columns and "x_000" not in dm.table.frame.columns
    assert dm.splits["train"]["cat_0"].dtype == torch.int32
    b = Builder(dm.recipe)
    dm.attach_encoders(b.encoders(dm.feature_info()), dm.task_specs())
    assert "cat_0" not in dm.splits["train"] and "label/task_0" in dm.splits["train"]
    dtypes = {k: v.dtype for k, v in dm.columns["train"].items()}
    assert dtypes["cat:cat_0"] == torch.int32 and dtypes["num:" + ",".join(f"x_{i:03d}" for i in range(8))] == torch.float32


def test_shuffled_batches_gathered_in_blocks_equal_one_permuted_copy(monkeypatch):
    import mtlframe.batching as batching
    monkeypatch.setattr(batching, "GATHER_ROWS", 8)                          # blocks of 2 batches of 4
    cols = {"a": torch.arange(30), "b": torch.arange(60).reshape(30, 2).float()}
    got = list(ColumnBatches(cols, 4, shuffle=True, seed=3))
    perm = torch.randperm(30, generator=torch.Generator().manual_seed(3))
    full = take(cols, perm)
    assert [len(b["a"]) for b in got] == [4] * 7 + [2]
    for i, b in enumerate(got):
        for k in cols:
            assert torch.equal(b[k], full[k][4 * i:4 * i + 4])
