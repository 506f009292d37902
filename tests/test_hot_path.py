"""The training hot path: fused gates, the embedding lookup, the static sum, device transfer,
``trainer.compile`` and the ``mtlframe benchmark`` command. Values, not timings."""
from __future__ import annotations

import types
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

from mtlframe import cli
from mtlframe.combiners.static import StaticCombiner
from mtlframe.datamodule import RecDataModule
from mtlframe.layers import FusedEmbedding, Gate, gated_mixtures, mix_experts
from mtlframe.recipe import CompileConfig, load_recipe


def _reference_gate(gate: Gate, x: torch.Tensor) -> torch.Tensor:
    return torch.softmax(F.linear(x, gate.linear.weight, gate.linear.bias), dim=-1)


def test_gate_is_a_softmax_over_experts():
    torch.manual_seed(0)
    gate, x = Gate(6, 4), torch.randn(5, 6)
    w = gate(x)
    torch.testing.assert_close(w, _reference_gate(gate, x))
    assert w.shape == (5, 4) and w.is_contiguous()
    torch.testing.assert_close(w.sum(-1), torch.ones(5))
    x3 = torch.randn(2, 5, 6)  # more leading dimensions: the plain path
    torch.testing.assert_close(gate(x3), _reference_gate(gate, x3))


@pytest.mark.parametrize("tasks", [1, 2, 3])
def test_gated_mixtures_match_gate_by_gate(tasks):
    torch.manual_seed(tasks)
    gates = [Gate(6, 4) for _ in range(tasks)]
    x = torch.randn(7, 6, requires_grad=True)
    experts = torch.randn(7, 4, 3, requires_grad=True)
    w, h = gated_mixtures(gates, x, experts)
    assert w.shape == (7, tasks, 4) and h.shape == (7, tasks, 3)
    expected = [mix_experts(_reference_gate(g, x), experts) for g in gates]
    for t, g in enumerate(gates):
        torch.testing.assert_close(w[:, t], _reference_gate(g, x))
        torch.testing.assert_close(h[:, t], expected[t])
    # the same gradients for the input, the experts and every gate's parameters
    seed = torch.randn(7, tasks, 3)
    grads = torch.autograd.grad((h * seed).sum(), [x, experts, *(p for g in gates for p in g.parameters())])
    ref = torch.autograd.grad(sum((e * seed[:, t]).sum() for t, e in enumerate(expected)),
                              [x, experts, *(p for g in gates for p in g.parameters())])
    for a, b in zip(grads, ref):
        torch.testing.assert_close(a, b)


def test_mmoe_uses_the_fused_gates_with_the_same_values():
    from mtlframe.backbones.mmoe import MMoE

    torch.manual_seed(0)
    mmoe = MMoE(num_experts=3, expert_hidden=[5], input_dim=4, task_names=["a", "b"])
    x = torch.randn(6, 4)
    out = mmoe(x)
    experts = mmoe.experts(x)
    for t in ("a", "b"):
        w = _reference_gate(mmoe.gates[t], x)
        torch.testing.assert_close(mmoe.gate_weights[t], w)
        torch.testing.assert_close(out[t], mix_experts(w, experts))


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_fused_embedding_lookup_and_gradient(dtype):
    torch.manual_seed(0)
    emb = FusedEmbedding([3, 5], dim=4)
    ids = torch.tensor([[0, 3], [2, 7], [0, 3], [1, 4]], dtype=dtype)
    out = emb(ids)
    torch.testing.assert_close(out, F.embedding(ids.long(), emb.table.weight))
    seed = torch.randn(4, 2, 4)
    (grad,) = torch.autograd.grad((out * seed).sum(), emb.table.weight)
    (ref,) = torch.autograd.grad((F.embedding(ids.long(), emb.table.weight) * seed).sum(), emb.table.weight)
    torch.testing.assert_close(grad, ref)
    # a repeated id accumulates; an unused row gets zero
    torch.testing.assert_close(grad[0], seed[0, 0] + seed[2, 0])
    assert not grad[5].any()
    # a transposed (feature-major) id block gives the same rows
    torch.testing.assert_close(emb(ids.t().contiguous().t()), out)


def test_sparse_fused_embedding_keeps_sparse_gradients():
    emb = FusedEmbedding([3, 5], dim=4, sparse=True)
    emb(torch.tensor([[0, 3]])).sum().backward()
    assert emb.table.weight.grad.is_sparse


def test_static_sum():
    losses = {"a": torch.tensor(2.0, requires_grad=True), "b": torch.tensor(3.0, requires_grad=True),
              "c": torch.tensor(5.0, requires_grad=True)}
    plain = StaticCombiner(task_names=list(losses))
    assert plain(losses).item() == 10.0
    assert plain({"b": losses["b"]}) is losses["b"]  # one task: its loss itself, no operation
    assert plain({}) == 0
    weighted = StaticCombiner(task_names=list(losses), weights={"a": 0.5, "c": 2.0})
    total = weighted(losses)
    assert total.item() == 0.5 * 2 + 3 + 2 * 5
    total.backward()
    assert [v.grad.item() for v in losses.values()] == [0.5, 1.0, 2.0]
    normalized = StaticCombiner(True, task_names=list(losses), weights={"a": 0.5, "c": 2.0})
    assert normalized(losses).item() == 14.0 / 3.5


# -- device transfer ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def module():
    from mtlframe.run import build_system

    recipe = load_recipe("recipes/adult_mmoe.yaml", ["trainer.max_epochs=1"])
    return build_system(recipe)[1]


def test_cpu_batches_pass_through_untouched(module):
    batch = {"x": torch.zeros(3), "y": torch.ones(3, 2)}
    assert module.transfer_batch_to_device(batch, torch.device("cpu"), 0) is batch


def test_cuda_transfer_is_non_blocking(module):
    batch = {"x": torch.zeros(3), "y": torch.ones(3, 2)}
    calls = []

    def fake_to(self, device, non_blocking=False):
        calls.append((device, non_blocking))
        return self

    with mock.patch.object(torch.Tensor, "to", fake_to):
        out = module.transfer_batch_to_device(batch, torch.device("cuda", 0), 0)
    assert set(out) == {"x", "y"}
    assert calls == [(torch.device("cuda", 0), True)] * 2
    # other batch types take Lightning's default
    moved = module.transfer_batch_to_device([torch.zeros(2)], torch.device("cpu"), 0)
    assert isinstance(moved, list) and moved[0].device.type == "cpu"


def test_pinned_blocks_only_on_cuda():
    dm = RecDataModule(load_recipe("recipes/adult_mmoe.yaml"), dataset=None)
    assert dm._pin() is False  # no trainer yet

    def accelerator(name):
        return type(name, (), {})()

    dm.trainer = types.SimpleNamespace(accelerator=accelerator("CUDAAccelerator"))
    assert dm._pin() is True
    dm.trainer = types.SimpleNamespace(accelerator=accelerator("CPUAccelerator"))
    assert dm._pin() is False


# -- trainer.compile ----------------------------------------------------------------------------


def test_compile_option_validation():
    assert load_recipe("recipes/adult_mmoe.yaml").config.trainer.compile is None
    assert load_recipe("recipes/adult_mmoe.yaml", ["trainer.compile=false"]).config.trainer.compile is None
    assert load_recipe("recipes/adult_mmoe.yaml", ["trainer.compile=true"]).config.trainer.compile == CompileConfig()
    cfg = load_recipe("recipes/adult_mmoe.yaml", ["trainer.compile={mode: max-autotune, dynamic: false}"]).config
    assert (cfg.trainer.compile.mode, cfg.trainer.compile.dynamic) == ("max-autotune", False)
    from mtlframe.errors import RecipeError

    with pytest.raises(RecipeError, match=r"trainer\.compile\.modes.*Did you mean 'mode'"):
        load_recipe("recipes/adult_mmoe.yaml", ["trainer.compile={modes: default}"])
    with pytest.raises(RecipeError, match=r"trainer\.compile.*true, false or a mapping"):
        load_recipe("recipes/adult_mmoe.yaml", ["trainer.compile=3"])


def test_compile_parts_compiles_in_place(module):
    from mtlframe.build import Builder

    recipe = load_recipe("recipes/adult_mmoe.yaml")
    b = Builder(recipe)
    model = b.model(list(module.model.encoders), module.tasks)  # a fresh model on the same encoders
    keys = list(model.state_dict())
    model.compile_parts(dynamic=False)
    parts = [*model.encoders, model.backbone, *model.towers.values()]
    assert all(p._compiled_call_impl is not None for p in parts)
    assert list(model.state_dict()) == keys  # checkpoints keep their parameter names


@pytest.mark.slow
def test_training_with_compile(tmp_path):
    from mtlframe.run import load_checkpoint, train

    recipe = load_recipe("recipes/adult_mmoe.yaml", ["trainer.max_epochs=1", "trainer.limit_train_batches=3",
                                                      "trainer.limit_val_batches=1", "trainer.compile=true",
                                                      "trainer.accelerator=cpu", "logger.name=none"])
    result = train(recipe, tmp_path / "run", progress=False)
    assert 0.5 < result.metrics["test"]["income"]["auc"] <= 1.0
    loaded = load_checkpoint(result.best_checkpoint)  # an uncompiled model takes the weights
    assert loaded.recipe.config.trainer.compile == CompileConfig()


# -- mtlframe benchmark -------------------------------------------------------------------------


def test_benchmark_command_runs_the_harness(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["benchmark", "--help"])
    assert exc.value.code == 0
    assert "usage: mtlframe benchmark" in capsys.readouterr().out


def test_benchmark_command_outside_a_checkout(tmp_path, monkeypatch, capsys):
    import mtlframe

    monkeypatch.setattr(mtlframe, "__file__", str(tmp_path / "site-packages" / "mtlframe" / "__init__.py"))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["benchmark", "--quick"]) == 2
    err = capsys.readouterr().err
    assert "source checkout" in err and "pip install -e" in err
