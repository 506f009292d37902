"""The training hot path: fused gates, the embedding lookup, the static sum. Values, not timings."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mtlframe.combiners.static import StaticCombiner
from mtlframe.layers import FusedEmbedding, Gate, gated_mixtures, mix_experts


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
