"""Backbones: the contract checked over every registered backbone, plus worked examples."""
from __future__ import annotations

import inspect
import math

import pytest
import torch
from torch import nn

from mtlframe.backbones.aitm import AITM, InformationTransfer
from mtlframe.backbones.base import AuxLoss, Backbone
from mtlframe.backbones.cgc import CGC
from mtlframe.backbones.cross_stitch import CrossStitch
from mtlframe.backbones.dselect_k import DSelectK, DSelectKGate, smooth_step
from mtlframe.backbones.escm2 import ESCM2
from mtlframe.backbones.esmm import ESMM
from mtlframe.backbones.funnel import FunnelBackbone
from mtlframe.backbones.omoe import OMoE
from mtlframe.backbones.ple import PLE
from mtlframe.backbones.single_task import SingleTask
from mtlframe.backbones.stem import STEM
from mtlframe.registry import get_registry

TASKS = ["a", "b", "c"]
D, B = 12, 16
BACKBONES = get_registry().all("backbone")
IDS = [c.name for c in BACKBONES]


def _build(component, **kwargs) -> Backbone:
    torch.manual_seed(0)
    cls = component.load()
    if issubclass(cls, FunnelBackbone) and not {"click", "conversion", "funnel"} & set(kwargs):
        kwargs["funnel"] = TASKS  # a funnel names its stages
    return cls(input_dim=D, task_names=TASKS, **kwargs)


def _task_outputs(model: Backbone, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Backbone -> linear towers -> the output-coupling hook if the backbone has one (as the model does)."""
    hs = model(x)
    torch.manual_seed(1)
    towers = {t: nn.Linear(model.output_dims[t], 1) for t in TASKS}
    outs = {t: towers[t](hs[t]).squeeze(-1) for t in TASKS}
    couple = getattr(model, "couple", None)
    return couple(outs) if couple is not None else outs


# -- the contract, for every registered backbone ------------------------------------------------

def test_registry_has_the_architectures():
    names = set(IDS)
    assert {"shared-bottom", "mmoe", "omoe", "cgc", "ple", "cross-stitch", "dselect-k", "single-task",
            "esmm", "escm2", "aitm", "stem"} <= names


@pytest.mark.parametrize("component", BACKBONES, ids=IDS)
def test_signature_is_a_schema(component):
    cls = component.load()
    assert issubclass(cls, Backbone)
    params = inspect.signature(cls.__init__).parameters
    assert not any(p.kind is p.VAR_KEYWORD for p in params.values()), "no **kwargs sinks"
    for name in ("input_dim", "task_names"):
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY


@pytest.mark.parametrize("component", BACKBONES, ids=IDS)
def test_shapes_gradients_and_gates(component):
    model = _build(component)
    assert set(model.output_dims) == set(TASKS)
    x = torch.randn(B, D, requires_grad=True)
    out = model(x)
    assert set(out) == set(TASKS)
    for t in TASKS:
        assert out[t].shape == (B, model.output_dims[t])
        (grad,) = torch.autograd.grad(out[t].sum(), x, retain_graph=True)
        assert grad.abs().sum() > 0, f"task {t}'s output does not depend on the input"
    for name, w in model.gate_weights.items():
        assert w.shape[0] == B, name
        assert (w >= 0).all(), name
        torch.testing.assert_close(w.sum(-1), torch.ones(B), msg=f"gate {name} rows must sum to 1")


# every registered backbone with its defaults, plus settings whose sharing differs from the defaults
SHARING_CASES = [(c, {}) for c in BACKBONES] + [
    (c, kw) for c in BACKBONES for name, kw in [
        ("esmm", {"hidden": [8]}), ("escm2", {"hidden": [8], "counterfactual": "dr"}),
        ("ple", {"num_levels": 3}), ("cross-stitch", {"hidden": [5, 4, 3], "activation": "tanh"}),
        ("dselect-k", {"per_example": True}), ("stem", {"num_task_experts": 2})] if c.name == name]


@pytest.mark.parametrize("component,kwargs", SHARING_CASES,
                         ids=[f"{c.name}{kw or ''}" for c, kw in SHARING_CASES])
def test_shared_parameters_are_exactly_those_used_by_several_tasks(component, kwargs):
    model = _build(component, **kwargs)
    params = list(model.parameters())
    shared = {id(p) for p in model.shared_parameters()}
    assert shared <= {id(p) for p in params}
    if not params:
        return
    outs = _task_outputs(model, torch.randn(B, D))
    users = {id(p): 0 for p in params}
    for t in TASKS:
        grads = torch.autograd.grad(outs[t].sum(), params, retain_graph=True, allow_unused=True)
        for p, g in zip(params, grads):
            users[id(p)] += int(g is not None and bool(g.abs().sum() > 0))
    names = {id(p): n for n, p in model.named_parameters()}
    expected = {i for i, n in users.items() if n > 1}
    assert shared == expected, (f"listed but not shared: {[names[i] for i in shared - expected]}; "
                                f"shared but not listed: {[names[i] for i in expected - shared]}")


@pytest.mark.parametrize("cls,kwargs", [
    (OMoE, {"num_experts": 0}), (CGC, {"num_shared_experts": 0, "num_task_experts": 0}),
    (CGC, {"num_task_experts": -1}), (PLE, {"num_levels": 0}), (PLE, {"expert_hidden": []}),
    (CrossStitch, {"alpha_off": 0.6}), (CrossStitch, {"alpha_off": -0.1}), (CrossStitch, {"hidden": []}),
    (DSelectK, {"num_experts": 4, "k": 5}), (DSelectK, {"k": 0}), (DSelectK, {"gamma": 0.0}),
    (SingleTask, {"hidden": []}), (ESMM, {"funnel": ["a", "b"]}), (ESMM, {"funnel": ["a", "a", "b"]}),
    (ESMM, {}), (ESMM, {"click": "a"}), (ESMM, {"click": "a", "conversion": "x"}),
    (ESCM2, {"counterfactual": "snips", "funnel": TASKS}), (ESCM2, {"propensity_min": 0.0, "funnel": TASKS}),
    (AITM, {"calibration_weight": -1.0, "funnel": TASKS}), (AITM, {}), (STEM, {"embedding_dim": 0}),
])
def test_bad_hyper_parameters_raise_value_error(cls, kwargs):
    with pytest.raises(ValueError):
        cls(**kwargs, input_dim=D, task_names=TASKS)


def test_funnel_models_need_two_tasks():
    with pytest.raises(ValueError, match="at least two"):
        ESMM(funnel=["ctr"], input_dim=D, task_names=["ctr"])


# -- worked examples ----------------------------------------------------------------------------

def _set_linear(lin: nn.Linear, weight, bias) -> None:
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(weight, dtype=torch.float32))
        lin.bias.copy_(torch.tensor(bias, dtype=torch.float32))


def test_cgc_hand_computed():
    # one task expert per task, one shared expert, each Linear(1 -> 1) + ReLU
    cgc = CGC(num_shared_experts=1, num_task_experts=1, expert_hidden=[1], input_dim=1, task_names=["a", "b"])
    layer = cgc.layer
    _set_linear(layer.task_experts["a"][0].net[0], [[1.0]], [0.0])    # relu(x)
    _set_linear(layer.task_experts["b"][0].net[0], [[1.5]], [0.0])    # relu(1.5 x)
    _set_linear(layer.shared_experts[0].net[0], [[2.0]], [1.0])       # relu(2x + 1)
    _set_linear(layer.task_gates["a"].linear, [[0.0], [0.0]], [0.0, math.log(3)])  # [1/4, 3/4]
    _set_linear(layer.task_gates["b"].linear, [[0.0], [0.0]], [math.log(3), 0.0])  # [3/4, 1/4]
    out = cgc(torch.tensor([[1.0], [0.5]]))
    # x=1:   experts a=1,   b=1.5,  shared=3  -> a: 1/4*1 + 3/4*3 = 2.5;  b: 3/4*1.5 + 1/4*3 = 1.875
    # x=0.5: experts a=0.5, b=0.75, shared=2  -> a: 0.125 + 1.5 = 1.625;  b: 0.5625 + 0.5 = 1.0625
    torch.testing.assert_close(out["a"], torch.tensor([[2.5], [1.625]]))
    torch.testing.assert_close(out["b"], torch.tensor([[1.875], [1.0625]]))
    torch.testing.assert_close(cgc.gate_weights["a"], torch.tensor([[0.25, 0.75]] * 2))


def test_ple_with_one_level_is_cgc():
    kwargs = dict(num_shared_experts=2, num_task_experts=1, expert_hidden=[5, 4], input_dim=D, task_names=TASKS)
    cgc, ple = CGC(**kwargs), PLE(num_levels=1, **kwargs)
    ple.levels[0].load_state_dict(cgc.layer.state_dict())
    x = torch.randn(B, D)
    a, b = cgc(x), ple(x)
    for t in TASKS:
        torch.testing.assert_close(a[t], b[t])
    ple2 = PLE(num_levels=3, **kwargs)
    ple2(x)
    assert set(ple2.gate_weights) == {f"level{l}/{t}" for l in (1, 2, 3) for t in TASKS} | {
        "level1/shared", "level2/shared"}
    assert ple2.gate_weights["level1/shared"].shape == (B, 3 * 1 + 2)
    assert ple2.gate_weights["level3/a"].shape == (B, 1 + 2)


def test_smooth_step_values():
    gamma = 2.0
    t = torch.tensor([-gamma, -gamma / 2, 0.0, gamma / 4, gamma / 2, gamma])
    # inside: -2/g^3 t^3 + 3/(2g) t + 1/2; at g/4: -1/32 + 3/8 + 1/2 = 0.84375
    torch.testing.assert_close(smooth_step(t, gamma), torch.tensor([0.0, 0.0, 0.5, 0.84375, 1.0, 1.0]))


def test_dselect_k_gate_selects_k_experts_when_binary():
    gamma = 1.0
    gate = DSelectKGate(input_dim=3, num_experts=4, k=2, gamma=gamma)
    with torch.no_grad():
        gate.z.copy_(torch.tensor([[gamma, -gamma],      # bits (1, 0) -> code 1 -> expert 1
                                   [-gamma, gamma]]))    # bits (0, 1) -> code 2 -> expert 2
        gate.alpha.copy_(torch.tensor([0.0, math.log(3)]))  # softmax -> [1/4, 3/4]
    w = gate(torch.randn(5, 3))
    torch.testing.assert_close(w, torch.tensor([[0.0, 0.25, 0.75, 0.0]] * 5))
    # E = 3 is not a power of two: code 3 = bits (1, 1) wraps to expert 0
    gate3 = DSelectKGate(input_dim=3, num_experts=3, k=1, gamma=gamma)
    with torch.no_grad():
        gate3.z.copy_(torch.tensor([[gamma, gamma]]))
    torch.testing.assert_close(gate3(torch.randn(2, 3)), torch.tensor([[1.0, 0.0, 0.0]] * 2))
    # at init every selector is near uniform: a dense distribution summing to 1
    fresh = DSelectKGate(input_dim=3, num_experts=5, k=2, gamma=gamma, per_example=True)
    w = fresh(torch.randn(4, 3))
    assert (w > 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(4))


def test_dselect_k_backbone_uses_only_selected_experts():
    model = DSelectK(num_experts=4, k=1, expert_hidden=[3], input_dim=D, task_names=["a", "b"])
    with torch.no_grad():
        model.gates["a"].z.copy_(torch.tensor([[-1.0, -1.0]]))  # code 0 -> expert 0
        model.gates["b"].z.copy_(torch.tensor([[1.0, 1.0]]))    # code 3 -> expert 3
    x = torch.randn(B, D)
    out = model(x)
    torch.testing.assert_close(out["a"], model.experts[0](x))
    torch.testing.assert_close(out["b"], model.experts[3](x))
    assert (model.gate_weights["a"] != 0).sum(-1).max() == 1


def test_cross_stitch_identity_units_are_independent_columns():
    model = CrossStitch(hidden=[6, 4], alpha_off=0.0, input_dim=D, task_names=TASKS)
    x = torch.randn(B, D)
    out = model(x)
    for t in TASKS:
        h = x
        for blocks in model.columns:
            h = blocks[t](h)
        torch.testing.assert_close(out[t], h)


def test_cross_stitch_hand_computed():
    model = CrossStitch(hidden=[1], alpha_off=0.25, input_dim=1, task_names=["a", "b"])
    torch.testing.assert_close(model.stitch[0].data, torch.tensor([[0.75, 0.25], [0.25, 0.75]]))
    _set_linear(model.columns[0]["a"].net[0], [[1.0]], [0.0])
    _set_linear(model.columns[0]["b"].net[0], [[2.0]], [0.0])
    out = model(torch.tensor([[1.0]]))
    # columns give a=1, b=2; a <- 0.75*1 + 0.25*2 = 1.25, b <- 0.25*1 + 0.75*2 = 1.75
    torch.testing.assert_close(out["a"], torch.tensor([[1.25]]))
    torch.testing.assert_close(out["b"], torch.tensor([[1.75]]))


def test_single_task_loss_a_ignores_tower_b():
    model = SingleTask(hidden=[8, 4], input_dim=D, task_names=TASKS)
    assert list(model.shared_parameters()) == []
    out = model(torch.randn(B, D))
    loss_a = out["a"].pow(2).mean()
    grads_b = torch.autograd.grad(loss_a, list(model.nets["b"].parameters()), retain_graph=True,
                                  allow_unused=True)
    assert all(g is None or torch.count_nonzero(g) == 0 for g in grads_b)
    grads_a = torch.autograd.grad(loss_a, list(model.nets["a"].parameters()))
    assert any(torch.count_nonzero(g) > 0 for g in grads_a)


def test_omoe_one_gate_for_all_tasks():
    model = OMoE(num_experts=3, expert_hidden=[4], input_dim=D, task_names=TASKS)
    out = model(torch.randn(B, D))
    assert out["a"] is out["b"] is out["c"]
    assert list(model.gate_weights) == ["shared"] and model.gate_weights["shared"].shape == (B, 3)


def test_esmm_ctcvr_is_ctr_times_cvr():
    model = ESMM(click="ctr", conversion="ctcvr", input_dim=D, task_names=["ctr", "ctcvr"])
    o = {"ctr": torch.randn(B, 1) * 3, "ctcvr": torch.randn(B, 1) * 3}
    p = model.probabilities(o)
    p_ctr, p_cvr = torch.sigmoid(o["ctr"]), torch.sigmoid(o["ctcvr"])
    assert torch.equal(p["ctr"], p_ctr)
    assert torch.equal(p["ctcvr"], p_ctr * p_cvr)
    logits = model.couple(o)
    assert torch.equal(logits["ctr"], o["ctr"])
    torch.testing.assert_close(torch.sigmoid(logits["ctcvr"]), p_ctr * p_cvr, rtol=1e-5, atol=1e-7)
    # by hand: pCTR = 0.5, pCVR = 0.75 -> pCTCVR = 0.375, logit = ln(0.375 / 0.625) = ln 0.6
    hand = model.couple({"ctr": torch.tensor([0.0]), "ctcvr": torch.tensor([math.log(3)])})
    torch.testing.assert_close(hand["ctcvr"], torch.tensor([math.log(0.6)]))


def test_esmm_through_the_multitask_model():
    from mtlframe.features import TaskSpec
    from mtlframe.model import MultiTaskModel
    from mtlframe.towers.mlp import MLPTower

    class Identity(nn.Module):
        output_dim = D

        def forward(self, batch):
            return batch["x"]

    tasks = [TaskSpec("ctr", "binary", "click"), TaskSpec("ctcvr", "binary", "buy")]
    backbone = ESMM(click="ctr", conversion="ctcvr", input_dim=D, task_names=["ctr", "ctcvr"])
    towers = {t.name: MLPTower(input_dim=D, output_dim=1) for t in tasks}
    model = MultiTaskModel([Identity()], backbone, towers, tasks)
    x = torch.randn(B, D)
    out = model({"x": x})
    q = {t: torch.sigmoid(towers[t](x).squeeze(-1)) for t in ("ctr", "ctcvr")}
    torch.testing.assert_close(torch.sigmoid(out["ctcvr"]), q["ctr"] * q["ctcvr"])
    # CTR 5 %, CTCVR 0.1 % -> the CVR tower should start at 2 %
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    priors = backbone.conditional_priors({"ctr": logit(0.05), "ctcvr": logit(0.001)})
    assert priors["ctr"] == pytest.approx(logit(0.05))
    assert priors["ctcvr"] == pytest.approx(logit(0.02), rel=1e-6)


def test_esmm_funnel_order_and_extreme_logits():
    model = ESMM(funnel=["c", "a", "b"], input_dim=D, task_names=TASKS)  # c -> a -> b
    o = {t: torch.tensor([[-60.0], [0.0], [60.0]], requires_grad=True) for t in TASKS}
    logits = model.couple(o)
    p = model.probabilities(o)
    assert torch.equal(p["b"], p["c"] * torch.sigmoid(o["a"]) * torch.sigmoid(o["b"]))
    for t in TASKS:
        assert torch.isfinite(logits[t]).all()
    sum(v.sum() for v in logits.values()).backward()
    assert all(torch.isfinite(o[t].grad).all() for t in TASKS)
    with pytest.raises(ValueError, match="binary"):
        model.couple({t: torch.zeros(2, 3) for t in TASKS})


def test_escm2_ips_hand_computed():
    model = ESCM2(counterfactual="ips", counterfactual_weight=1.0, click="ctr", conversion="ctcvr", input_dim=D,
                  task_names=["ctr", "ctcvr"])
    q = torch.zeros(3, requires_grad=True)
    coupled = model.couple({"ctr": torch.zeros(3), "ctcvr": q})   # pCTR = 0.5, pCVR = 0.5
    batch = {"label/ctr": torch.tensor([1.0, 0.0, 1.0]), "label/ctcvr": torch.tensor([1.0, 0.0, float("nan")]),
             "mask/ctcvr": torch.tensor([True, True, False])}     # no mask/ctr: every click label known
    aux = model.auxiliary_loss(batch, coupled)
    # row 3 is clicked with an unknown conversion: dropped. N = 2;
    # row 1: o=1, e = ln 2, propensity 0.5 -> 2 ln 2; row 2: o=0 -> 0.  R = ln 2
    assert list(aux) == ["escm2/ips"]
    torch.testing.assert_close(aux["escm2/ips"], torch.tensor(math.log(2)))
    aux["escm2/ips"].backward()
    assert q.grad[0] != 0 and q.grad[1] == 0 and q.grad[2] == 0  # IPS: only clicked rows train CVR


def test_escm2_dr_hand_computed():
    model = ESCM2(counterfactual="dr", counterfactual_weight=0.5, imputation_hidden=[], click="ctr",
                  conversion="ctcvr", input_dim=2, task_names=["ctr", "ctcvr"])
    with pytest.raises(RuntimeError, match="forward"):
        model.auxiliary_loss({}, {})
    _set_linear(model.imputation["ctcvr"].net[0], [[0.0, 0.0]], [0.0])  # pseudo-label 0.5 everywhere
    model(torch.randn(2, 2))
    q = torch.full((2,), math.log(3), requires_grad=True)           # pCVR = 0.75
    coupled = model.couple({"ctr": torch.zeros(2), "ctcvr": q})     # propensity 0.5
    batch = {"label/ctr": torch.tensor([1.0, 0.0]), "label/ctcvr": torch.tensor([1.0, 0.0])}
    aux = model.auxiliary_loss(batch, coupled)
    e = -math.log(0.75)                                            # CE(1, 0.75)
    e_hat = -(0.5 * math.log(0.75) + 0.5 * math.log(0.25))        # CE(0.5, 0.75)
    risk = ((e_hat + (e - e_hat) / 0.5) + e_hat) / 2
    imputation = ((e - e_hat) ** 2 / 0.5 + 0.0) / 2
    torch.testing.assert_close(aux["escm2/dr"], torch.tensor(0.5 * risk))
    torch.testing.assert_close(aux["escm2/imputation"], torch.tensor(imputation))
    sum(aux.values()).backward()
    assert q.grad[1] != 0  # DR: the un-clicked row trains the CVR tower through the imputed error
    assert model.imputation["ctcvr"].net[0].bias.grad.abs() > 0


def test_aitm_calibrator_hand_computed():
    model = AITM(tower_hidden=[4], calibration_weight=0.6, click="click", conversion="buy", input_dim=D,
                 task_names=["click", "buy"])
    outputs = {"click": torch.zeros(2), "buy": torch.tensor([math.log(3), -math.log(3)])}
    # row 1: p_buy 0.75 > p_click 0.5 -> 0.25; row 2: 0.25 < 0.5 -> 0.  mean 0.125, times 0.6
    aux = model.auxiliary_loss({}, outputs)
    assert list(aux) == ["aitm/calibration"]
    torch.testing.assert_close(aux["aitm/calibration"], torch.tensor(0.075))


# -- auxiliary losses as row sums and counts (the global mean under DDP) ---------------------------

def test_escm2_aux_sums_and_counts_per_funnel_step_hand_computed():
    """Three stages a -> b -> c, every logit 0 (each conditional probability 0.5): step a->b has
    propensity 0.5 and 3 usable rows, step b->c propensity 0.25 and 2 (its click b is unknown on
    row 3). One part per step, each over its own rows."""
    model = ESCM2(counterfactual="ips", counterfactual_weight=1.0, funnel=["a", "b", "c"], input_dim=D,
                  task_names=TASKS)
    coupled = model.couple({t: torch.zeros(3, requires_grad=True) for t in TASKS})
    nan = float("nan")
    batch = {"label/a": torch.tensor([1.0, 1.0, 0.0]), "label/b": torch.tensor([1.0, 0.0, nan]),
             "label/c": torch.tensor([1.0, nan, nan])}
    sums = model.auxiliary_loss_sums(batch, coupled)
    assert list(sums) == ["escm2/ips"]
    ln2 = math.log(2)
    # a->b: rows 1, 2 clicked (o e / 0.5 = 2 ln 2 each), row 3 not clicked (0; its b is not needed)
    # b->c: row 1 (1 * ln 2 / 0.25), row 2 not clicked (0), row 3 unknown click: left out
    torch.testing.assert_close(sums["escm2/ips"].sums, torch.tensor([4 * ln2, 4 * ln2]))
    assert sums["escm2/ips"].counts.tolist() == [3, 2]
    # the per-batch value is the sum of the two steps' means, not one pooled mean (8 ln 2 / 5)
    torch.testing.assert_close(model.auxiliary_loss(batch, coupled)["escm2/ips"], torch.tensor(4 * ln2 / 3 + 2 * ln2))


def test_escm2_dr_aux_sums_keep_their_names_on_a_batch_without_usable_rows():
    """A process whose batch has no row with a known click still reports every name, with zero
    sums and zero counts, and its sums stay in the graph (DDP needs every parameter's gradient)."""
    model = ESCM2(counterfactual="dr", counterfactual_weight=0.5, imputation_hidden=[], click="ctr",
                  conversion="ctcvr", input_dim=2, task_names=["ctr", "ctcvr"])
    _set_linear(model.imputation["ctcvr"].net[0], [[0.0, 0.0]], [0.0])
    model(torch.randn(2, 2))
    q = torch.full((2,), math.log(3))
    coupled = model.couple({"ctr": torch.zeros(2), "ctcvr": q})
    # labelled: the hand computation of test_escm2_dr_hand_computed, as sums over its 2 rows
    batch = {"label/ctr": torch.tensor([1.0, 0.0]), "label/ctcvr": torch.tensor([1.0, 0.0])}
    e, e_hat = -math.log(0.75), -(0.5 * math.log(0.75) + 0.5 * math.log(0.25))
    full = model.auxiliary_loss_sums(batch, coupled)
    torch.testing.assert_close(full["escm2/dr"].sums, torch.tensor([0.5 * ((e_hat + (e - e_hat) / 0.5) + e_hat)]))
    torch.testing.assert_close(full["escm2/imputation"].sums, torch.tensor([(e - e_hat) ** 2 / 0.5]))
    assert full["escm2/dr"].counts.tolist() == full["escm2/imputation"].counts.tolist() == [2]
    for empty in ({"label/ctr": torch.tensor([1.0, 0.0]), "label/ctcvr": torch.tensor([1.0, 0.0]),
                   "mask/ctr": torch.tensor([False, False])},              # no click known
                  {"label/ctr": torch.tensor([1.0, 0.0])}):                # conversion not in the batch
        model(torch.randn(2, 2))
        coupled = model.couple({"ctr": torch.zeros(2), "ctcvr": q})
        aux = model.auxiliary_loss_sums(empty, coupled)
        assert list(aux) == ["escm2/dr", "escm2/imputation"]
        for a in aux.values():
            assert a.sums.tolist() == [0.0] and a.counts.tolist() == [0]
        sum(a.sums.sum() for a in aux.values()).backward()
        assert model.imputation["ctcvr"].net[0].weight.grad is not None
        assert {k: float(v.detach()) for k, v in model.auxiliary_loss(empty, coupled).items()} == \
            {"escm2/dr": 0.0, "escm2/imputation": 0.0}


def test_aitm_aux_sum_and_count_hand_computed():
    model = AITM(tower_hidden=[4], calibration_weight=0.6, click="click", conversion="buy", input_dim=D,
                 task_names=["click", "buy"])
    outputs = {"click": torch.zeros(3), "buy": torch.tensor([math.log(3), -math.log(3), math.log(3)])}
    aux = model.auxiliary_loss_sums({}, outputs)
    # rows 1 and 3: p_buy 0.75 > p_click 0.5 -> 0.25 each; row 2: 0.  every row counts (label-free)
    torch.testing.assert_close(aux["aitm/calibration"].sums, torch.tensor([0.6 * 0.5]))
    assert aux["aitm/calibration"].counts.tolist() == [3]
    torch.testing.assert_close(model.auxiliary_loss({}, outputs)["aitm/calibration"], torch.tensor(0.1))


def test_a_backbone_with_only_the_mean_auxiliary_loss_still_trains_it():
    """A backbone written against ``auxiliary_loss`` (a per-batch mean) alone: its value is one
    part with count 1 (under DDP, the mean of the processes' means, as before)."""
    class Legacy(Backbone):
        def auxiliary_loss(self, batch, outputs):
            return {"legacy/l2": torch.tensor(0.25)}

    aux = Legacy().auxiliary_loss_sums({}, {})
    assert list(aux) == ["legacy/l2"] and aux["legacy/l2"].sums.tolist() == [0.25]
    assert aux["legacy/l2"].counts.tolist() == [1.0]
    assert Backbone().auxiliary_loss_sums({}, {}) == {} and Backbone().auxiliary_loss({}, {}) == {}
    assert float(AuxLoss(torch.tensor([3.0, 0.0]), torch.tensor([2, 0])).mean()) == 1.5


def test_auxiliary_losses_that_change_between_steps_are_refused():
    from mtlframe.errors import MTLFrameError
    from mtlframe.recipe import recipe_from_dict
    from mtlframe.run import build_system
    from mtlframe.testing import tiny_recipe

    _, module, _ = build_system(recipe_from_dict(tiny_recipe(), "<tiny>"))
    layouts = iter([{"x/a": AuxLoss(torch.zeros(2), torch.ones(2))}, {"x/a": AuxLoss(torch.zeros(1), torch.ones(1))},
                    {"x/b": AuxLoss(torch.zeros(3), torch.ones(2))}])
    module.model.backbone.auxiliary_loss_sums = lambda batch, outputs: next(layouts)
    outputs = {"task_0": torch.zeros(2)}
    names, sums, counts = module._auxiliary({}, outputs)
    assert names == ["x/a", "x/a"] and counts.dtype == torch.float64
    with pytest.raises(MTLFrameError, match=r"changed between training steps \('x/a' x2 then 'x/a'\)"):
        module._auxiliary({}, outputs)
    with pytest.raises(MTLFrameError, match=r"auxiliary loss 'x/b' has sums of shape \(3,\) and counts of "
                                            r"shape \(2,\)"):
        module._auxiliary({}, outputs)


def test_a_non_finite_auxiliary_part_is_named_once():
    from mtlframe.recipe import recipe_from_dict
    from mtlframe.run import build_system
    from mtlframe.testing import tiny_recipe

    _, module, _ = build_system(recipe_from_dict(tiny_recipe(), "<tiny>"))
    inf = float("inf")
    # [counts (2 tasks), sums (2), aux counts (3 parts), aux sums (3)]: parts x/a, x/a, x/b
    stats = [4.0, 0.0, 1.0, inf, 2.0, 0.0, 3.0, inf, float("nan"), 0.5]
    assert module._non_finite(stats, ["x/a", "x/a", "x/b"]) == ["aux/x/a"]  # task_1's inf: no row
    stats[3], stats[9] = 1.0, inf
    assert module._non_finite(stats, ["x/a", "x/a", "x/b"]) == ["aux/x/a", "aux/x/b"]


def test_aitm_information_transfer_hand_computed():
    ait = InformationTransfer(2)
    with torch.no_grad():
        for lin in (ait.h1, ait.h2, ait.h3):
            lin.weight.copy_(torch.eye(2))
    p, q = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    z, w = ait(p, q)
    s = torch.tensor([1.0, 4.0]) / math.sqrt(2)                    # <p,p>/sqrt 2, <q,q>/sqrt 2
    w_hand = torch.softmax(s, 0)
    torch.testing.assert_close(w, w_hand[None])
    torch.testing.assert_close(z, (w_hand[0] * p + w_hand[1] * q))


def test_aitm_first_step_ignores_later_steps():
    model = AITM(tower_hidden=[4], click="click", conversion="buy", input_dim=D, task_names=["click", "buy"])
    x = torch.randn(B, D)
    out = model(x)
    torch.testing.assert_close(out["click"], model.towers["click"](x))  # z_1 = q_1
    grads = torch.autograd.grad(out["click"].sum(), list(model.towers["buy"].parameters()), allow_unused=True)
    assert all(g is None for g in grads)
    assert set(model.gate_weights) == {"buy"}


def test_stem_all_forward_gate_stops_other_tasks_gradient():
    model = STEM(num_shared_experts=1, num_task_experts=1, expert_hidden=[4], embedding_dim=5,
                 input_dim=D, task_names=["a", "b"])
    x = torch.randn(B, D)
    out = model(x)
    assert model.gate_weights["a"].shape == (B, 2 * 1 + 1)
    b_params = list(model.layer.task_experts["b"].parameters()) + list(model.task_embeddings["b"].parameters())
    grads = torch.autograd.grad(out["a"].sum(), b_params, allow_unused=True)
    assert all(g is None or torch.count_nonzero(g) == 0 for g in grads)
    # ... yet task b's experts do feed task a's output forward
    with torch.no_grad():
        model.task_embeddings["b"].bias.add_(1.0)
    assert not torch.allclose(model(x)["a"], out["a"])


# -- experts and gates are built independently ----------------------------------------------------

def _units(model: nn.Module) -> dict[str, list[torch.Tensor]]:
    """Every expert and every gate of ``model`` with its parameters: ``{"<where>[i]": [tensors]}``.

    An :class:`~mtlframe.layers.ExpertBank` holds its experts as slices of shared tensors (one
    ``Linear(D, E*H)``): expert ``i``'s parameters are its rows / its entry of each batched weight.
    """
    from mtlframe.layers import MLP, ExpertBank

    units: dict[str, list[torch.Tensor]] = {}
    for name, m in model.named_modules(remove_duplicate=False):   # a module reused twice is seen twice
        if isinstance(m, ExpertBank):
            h1 = m.widths[0]
            for i in range(m.num_experts):
                units[f"{name}[{i}]"] = [m.first.weight[i * h1:(i + 1) * h1], m.first.bias[i * h1:(i + 1) * h1],
                                         *(w[i] for w in m.weights), *(b[i] for b in m.biases)]
        elif isinstance(m, nn.ModuleList) and "experts" in name and len(m) and all(isinstance(e, MLP) for e in m):
            for i, expert in enumerate(m):
                units[f"{name}[{i}]"] = list(expert.parameters())
        elif type(m).__name__.endswith("Gate"):
            units[name] = list(m.parameters())
    return units


def _independence_problems(model: nn.Module) -> list[str]:
    """What ties two experts or two gates together: a shared module or tensor, identical initial
    values, or a change to one that shows up in another (or in another expert's output)."""
    from mtlframe.layers import ExpertBank

    units = _units(model)
    problems = []
    # 1. no parameter tensor is shared between two units (bank slices share their bank's tensor but
    #    not a single element: checked by 3.)
    owners: dict[int, str] = {}
    for where, params in units.items():
        for p in params:
            if p._base is not None:           # a slice of an expert bank
                continue
            other = owners.setdefault(p.untyped_storage().data_ptr(), where)
            if other != where:
                problems.append(f"{where} and {other} share a parameter tensor")
    # 2. different initial values (units of one shape)
    names = list(units)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            pa, pb = units[a], units[b]
            if [p.shape for p in pa] == [p.shape for p in pb] and all(torch.equal(x, y) for x, y in zip(pa, pb)):
                problems.append(f"{a} and {b} start with identical parameters")
    # 3. changing one unit changes no other (elements, and other experts' outputs of a bank)
    banks = {n: m for n, m in model.named_modules() if isinstance(m, ExpertBank)}
    x = torch.randn(5, next(iter(banks.values())).first.in_features) if banks else None
    with torch.no_grad():
        for where, params in units.items():
            before = {w: [p.clone() for p in ps] for w, ps in units.items()}
            outputs = {n: bank(x).clone() for n, bank in banks.items()}
            for p in params:
                p.add_(1.0)
            for other, ps in units.items():
                if other != where and any(not torch.equal(p, q) for p, q in zip(ps, before[other])):
                    problems.append(f"changing {where} changes {other}")
            for n, bank in banks.items():
                changed = (bank(x) - outputs[n]).abs().amax(dim=(0, 2)) > 0        # per expert
                mine = {int(where.rsplit("[", 1)[1][:-1])} if where.startswith(n + "[") else set()
                if set(torch.nonzero(changed).flatten().tolist()) - mine:
                    problems.append(f"changing {where} changes the outputs of other experts of {n}")
            for p in params:
                p.sub_(1.0)
    return problems


def _gated_build(component) -> nn.Module:
    params = inspect.signature(component.load().__init__).parameters
    kwargs = {k: v for k, v in {"expert_hidden": [6, 5], "num_experts": 4, "num_task_experts": 2,
                                "num_shared_experts": 2, "k": 2}.items() if k in params}
    return _build(component, **kwargs)


GATED = [c for c in BACKBONES if any(type(m).__name__.endswith("Gate") for m in _gated_build(c).modules())]


def test_the_gated_backbones_are_found():
    assert {"mmoe", "omoe", "cgc", "ple", "dselect-k", "stem"} <= {c.name for c in GATED}


@pytest.mark.parametrize("component", GATED, ids=[c.name for c in GATED])
def test_experts_and_gates_are_built_independently(component):
    model = _gated_build(component)
    units = _units(model)
    assert sum("expert" in u for u in units) >= 4 and any("gate" in u for u in units), list(units)
    assert _independence_problems(model) == []


def test_the_independence_check_catches_shared_experts_and_gates():
    """The check above is not vacuous: experts or gates that are one object, or that start alike, fail it."""
    from mtlframe.backbones.mmoe import MMoE
    from mtlframe.layers import Gate

    torch.manual_seed(0)
    shared_gate = MMoE(num_experts=3, expert_hidden=[4], input_dim=D, task_names=TASKS)
    one = Gate(D, 3)
    shared_gate.gates = nn.ModuleDict({t: one for t in TASKS})           # one gate object for every task
    assert "gates.b and gates.a share a parameter tensor" in _independence_problems(shared_gate)
    aliased = CGC(num_shared_experts=2, num_task_experts=1, expert_hidden=[4], input_dim=D, task_names=TASKS)
    aliased.layer.shared_experts[1] = aliased.layer.shared_experts[0]   # [expert()] * n
    problems = _independence_problems(aliased)
    assert "layer.shared_experts[1] and layer.shared_experts[0] share a parameter tensor" in problems
    assert "changing layer.shared_experts[0] changes layer.shared_experts[1]" in problems
    cloned = CGC(num_shared_experts=2, num_task_experts=1, expert_hidden=[4], input_dim=D, task_names=TASKS)
    cloned.layer.shared_experts[1].load_state_dict(cloned.layer.shared_experts[0].state_dict())  # deepcopy'd
    assert "layer.shared_experts[0] and layer.shared_experts[1] start with identical parameters" in \
        _independence_problems(cloned)
    bank = MMoE(num_experts=3, expert_hidden=[4, 3], input_dim=D, task_names=TASKS)
    with torch.no_grad():                                               # expert 1 initialized as expert 0
        bank.experts.first.weight[4:8] = bank.experts.first.weight[0:4]
        bank.experts.first.bias[4:8] = bank.experts.first.bias[0:4]
        bank.experts.weights[0][1] = bank.experts.weights[0][0]
        bank.experts.biases[0][1] = bank.experts.biases[0][0]
    assert _independence_problems(bank) == ["experts[0] and experts[1] start with identical parameters"]
