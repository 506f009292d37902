"""Loss combiners: worked examples, masked tasks, one-task degeneracy, multi-process parity."""
from __future__ import annotations

import copy
import itertools
import math
import socket
import time
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from mtlframe import get_registry
from mtlframe.combiners._grad import (all_reduce_mean, min_norm_weights, minimize_on_simplex,
                                      project_to_simplex)
from mtlframe.combiners.cagrad import CAGrad
from mtlframe.combiners.db_mtl import DBMTL
from mtlframe.combiners.dwa import DWA
from mtlframe.combiners.famo import FAMO
from mtlframe.combiners.gradnorm import GradNorm
from mtlframe.combiners.imtl import IMTL, imtl_g_weights
from mtlframe.combiners.mgda import MGDA
from mtlframe.combiners.nash_mtl import NashMTL, nash_bargaining_weights
from mtlframe.combiners.pcgrad import PCGrad
from mtlframe.combiners.rlw import RandomLossWeighting
from mtlframe.combiners.uncertainty import UncertaintyWeighting


def backward(loss: torch.Tensor) -> None:
    loss.backward()


@pytest.fixture(autouse=True)
def _solver_warnings_again():
    """Solvers warn once per process (see warn_once); every test starts afresh."""
    from mtlframe.combiners import _grad

    _grad._WARNED.clear()
    yield



class Toy(nn.Module):
    """A shared Linear + one Linear head per task (regression)."""

    def __init__(self, tasks, d_in=4, d_h=6, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.shared = nn.Linear(d_in, d_h)
        self.heads = nn.ModuleDict({t: nn.Linear(d_h, 1) for t in tasks})

    def losses(self, x, ys):
        h = torch.relu(self.shared(x))                                    # (B, H)
        return {t: ((self.heads[t](h).squeeze(-1) - y) ** 2).mean() for t, y in ys.items()}


def linear_losses(theta, grads):
    """Losses ``g_t . theta`` whose gradients on ``theta`` are exactly ``g_t``."""
    return {t: (g * theta).sum() for t, g in grads.items()}


def build(name, tasks, **kwargs):
    cls = get_registry().get("combiner", name).load()
    return cls(task_names=list(tasks), weights={t: 1.0 for t in tasks}, **kwargs)


def step(combiner, losses, shared):
    if combiner.requires_manual_backward:
        combiner.backward(losses, shared, backward)
    else:
        combiner(losses).backward()


COMBINERS = [c.name for c in get_registry().all("combiner")]


# -- worked examples ------------------------------------------------------------------------


def test_pcgrad_projects_conflicting_gradients():
    theta = nn.Parameter(torch.zeros(2))
    grads = {"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([-1.0, 1.0])}
    comb = PCGrad(task_names=["a", "b"])
    comb.backward(linear_losses(theta, grads), [theta], backward)
    # g_a' = g_a - (g_a.g_b / |g_b|^2) g_b = (0.5, 0.5); g_b' = g_b - (g_b.g_a / |g_a|^2) g_a = (0, 1)
    torch.testing.assert_close(theta.grad, torch.tensor([0.5, 1.5]))
    assert comb.current_weights() == pytest.approx({"a": 2.0, "b": 1.5})


def test_pcgrad_leaves_agreeing_gradients_alone_and_heads_get_their_own_gradient():
    theta = nn.Parameter(torch.zeros(2))
    head = nn.Parameter(torch.tensor(3.0))
    grads = {"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([1.0, 1.0])}
    losses = linear_losses(theta, grads)
    losses["b"] = losses["b"] + head ** 2                                  # head of task b
    PCGrad(task_names=["a", "b"], reduction="mean").backward(losses, [theta], backward)
    torch.testing.assert_close(theta.grad, torch.tensor([1.0, 0.5]))
    torch.testing.assert_close(head.grad, torch.tensor(6.0))


def test_mgda_gives_min_norm_point_of_convex_hull():
    theta = nn.Parameter(torch.zeros(2))
    grads = {"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([-1.0, 1.0])}
    comb = MGDA(task_names=["a", "b"])
    comb.backward(linear_losses(theta, grads), [theta], backward)
    # |w (1,0) + (1-w)(-1,1)|^2 = (2w-1)^2 + (1-w)^2 is minimal at w = 0.6 -> (0.2, 0.4)
    torch.testing.assert_close(theta.grad, torch.tensor([0.2, 0.4]))
    assert comb.current_weights() == pytest.approx({"a": 0.6, "b": 0.4})


def test_min_norm_solver_three_vectors_and_simplex_projection():
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    w = min_norm_weights(g @ g.T)
    torch.testing.assert_close(w @ g, torch.tensor([0.5, 0.5], dtype=torch.float64), atol=1e-6, rtol=0)
    assert w.min() >= 0 and w.sum() == pytest.approx(1.0)
    p = project_to_simplex(torch.tensor([0.5, 2.0, -1.0]))
    torch.testing.assert_close(p, torch.tensor([0.0, 1.0, 0.0]))
    # strongly convex (modulus 2): |w - w*|^2 <= gap <= tol
    w = minimize_on_simplex(lambda v: ((v - torch.tensor([0.7, 0.3, 0.0], dtype=v.dtype)) ** 2).sum(), 3,
                            tol=1e-12)
    torch.testing.assert_close(w, torch.tensor([0.7, 0.3, 0.0], dtype=torch.float64), atol=1e-6, rtol=0)


def test_mgda_upper_bound_uses_representation():
    model = Toy(["a", "b"])
    x, ys = torch.randn(16, 4), {"a": torch.randn(16), "b": torch.randn(16)}
    comb = MGDA(upper_bound=True, normalization="l2", task_names=["a", "b"])
    assert comb.requires_representation
    with pytest.raises(ValueError, match="representation"):
        comb.backward(model.losses(x, ys), list(model.shared.parameters()), backward)
    h = torch.relu(model.shared(x))
    losses = {t: ((model.heads[t](h).squeeze(-1) - y) ** 2).mean() for t, y in ys.items()}
    ga, gb = (torch.autograd.grad(losses[t], h, retain_graph=True)[0].flatten() for t in "ab")
    comb.backward(losses, list(model.shared.parameters()), backward, representation=h)
    w = comb.current_weights()
    # the applied direction on the representation is the min-norm point of the normalized gradients
    d = w["a"] * ga + w["b"] * gb
    u = torch.stack([ga / ga.norm(), gb / gb.norm()])
    torch.testing.assert_close(d, (min_norm_weights(u.double() @ u.double().T).float() @ u), atol=1e-5, rtol=1e-4)


def test_imtl_g_equal_projections_on_orthogonal_gradients():
    theta = nn.Parameter(torch.zeros(2))
    grads = {"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([0.0, 2.0])}
    comb = IMTL(task_names=["a", "b"])
    comb.backward(linear_losses(theta, grads), [theta], backward)
    # alpha = (2/3, 1/3): d = (2/3, 2/3), projection 2/3 on both unit directions
    torch.testing.assert_close(theta.grad, torch.tensor([2 / 3, 2 / 3]))
    u_a, u_b = grads["a"], grads["b"] / 2
    assert float(theta.grad @ u_a) == pytest.approx(float(theta.grad @ u_b))


def test_imtl_g_equal_projections_three_tasks():
    g = torch.randn(3, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    alpha = imtl_g_weights(g @ g.T)
    d = alpha @ g
    proj = (g / g.norm(dim=1, keepdim=True)) @ d
    torch.testing.assert_close(proj, proj.mean().expand(3))
    assert float(alpha.sum()) == pytest.approx(1.0)


def test_imtl_loss_scaling_learns_scales():
    model = Toy(["a", "b"])
    comb = IMTL(loss_scaling=True, task_names=["a", "b"])
    x, ys = torch.randn(16, 4), {"a": torch.randn(16), "b": 10 * torch.randn(16)}
    comb.backward(model.losses(x, ys), list(model.shared.parameters()), backward)
    assert comb.log_scales.grad is not None
    # d/ds (e^s L - s) = e^s L - 1 at s = 0
    losses = model.losses(x, ys)
    torch.testing.assert_close(comb.log_scales.grad,
                               torch.stack([losses["a"] - 1, losses["b"] - 1]).detach())


def test_cagrad_with_c_zero_is_mean_gradient():
    theta = nn.Parameter(torch.zeros(3))
    grads = {"a": torch.tensor([1.0, 0.0, 2.0]), "b": torch.tensor([-1.0, 1.0, 0.0]),
             "c": torch.tensor([0.0, -3.0, 1.0])}
    CAGrad(c=0.0, task_names=list(grads)).backward(linear_losses(theta, grads), [theta], backward)
    torch.testing.assert_close(theta.grad, torch.stack(list(grads.values())).mean(0))


def test_cagrad_improves_worst_task_within_the_ball():
    g = {"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([-0.8, 0.3])}
    theta = nn.Parameter(torch.zeros(2))
    c = 0.5
    CAGrad(c=c, rescale="none", task_names=["a", "b"]).backward(linear_losses(theta, g), [theta], backward)
    d, g0 = theta.grad, (g["a"] + g["b"]) / 2
    assert float((d - g0).norm()) <= c * float(g0.norm()) + 1e-5
    assert min(float(d @ v) for v in g.values()) > min(float(g0 @ v) for v in g.values())


def _ill_conditioned_gradients():
    """Four task gradients whose norms span 3.5 orders of magnitude (Gram condition ~1e8)."""
    g = torch.randn(4, 5, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    return g * torch.tensor([[30.0], [1.0], [0.03], [0.01]], dtype=torch.float64)


def _cagrad_dual(g, c):
    """CAGrad's dual on the mean-diagonal-normalized Gram, with its gradient written by hand."""
    m = g @ g.T
    m = m / m.diagonal().mean()
    b = m.mean(1)
    sqrt_phi = c * float(b.mean()) ** 0.5

    def f(w):
        return float(w @ b + sqrt_phi * (w @ m @ w + 1e-12).sqrt())

    def grad(w):
        return b + sqrt_phi * (m @ w) / (w @ m @ w + 1e-12).sqrt()
    return f, grad, sqrt_phi


def test_cagrad_dual_converges_on_ill_conditioned_gradients():
    # the update is d = g_0 + sqrt(phi) g_w / |g_w| (rescale none); its dual w is checked by its
    # KKT gap (hand-written gradient) and against scipy's SLSQP run to machine tolerance
    g, c = _ill_conditioned_gradients(), 0.5
    f, grad, sqrt_phi = _cagrad_dual(g, c)
    names = list("abcd")
    theta = nn.Parameter(torch.zeros(5, dtype=torch.float64))
    comb = CAGrad(c=c, rescale="none", task_names=names)
    comb.backward(linear_losses(theta, dict(zip(names, g))), [theta], backward)
    coef = torch.tensor([comb.current_weights()[t] for t in names], dtype=torch.float64)
    lam_w = coef - 0.25                                       # coef = 1/K + lambda w
    w = lam_w / lam_w.sum()
    gw = grad(w)
    assert float(gw @ w - gw.min()) <= 1e-8                   # certified: f(w) - f* <= gap
    torch.testing.assert_close(theta.grad, coef @ g)
    optimize = pytest.importorskip("scipy.optimize")
    res = optimize.minimize(lambda x: f(torch.from_numpy(x)), [0.25] * 4, method="SLSQP",
                            jac=lambda x: grad(torch.from_numpy(x)).numpy(), bounds=[(0, 1)] * 4,
                            constraints={"type": "eq", "fun": lambda x: 1 - x.sum()},
                            options={"ftol": 1e-16, "maxiter": 1000})
    w_ref = torch.from_numpy(res.x)
    assert f(w) <= f(w_ref) + 1e-8                           # CAGrad's default tol
    gs = g / float((g @ g.T).diagonal().mean()) ** 0.5
    d, d_ref = (gs.mean(0) + sqrt_phi * (v @ gs) / (v @ gs).norm() for v in (w, w_ref))
    assert float((d - d_ref).norm() / d_ref.norm()) < 1e-4     # was 0.41 with 200 PGD steps
    torch.testing.assert_close(w, w_ref, rtol=0, atol=1e-5)


def test_simplex_solver_reports_a_cap_hit_and_checks_tol():
    g, c = _ill_conditioned_gradients(), 0.5
    f, _, _ = _cagrad_dual(g, c)
    m = g @ g.T
    m = m / m.diagonal().mean()
    sqrt_phi = c * float(m.mean()) ** 0.5
    with pytest.warns(RuntimeWarning, match=r"cagrad: stopped after max_iter=2 Newton steps with duality gap"):
        minimize_on_simplex(lambda w: w @ m.mean(1) + sqrt_phi * (w @ m @ w + 1e-12).sqrt(), 4,
                            max_iter=2, name="cagrad")
    with pytest.raises(ValueError, match="tol"):
        CAGrad(tol=0.0, task_names=["a", "b"])
    with pytest.raises(ValueError, match="max_iter"):
        CAGrad(max_iter=0, task_names=["a", "b"])


def _min_norm_exact(m):
    """min w^T M w on the simplex by enumerating supports (KKT on each; an independent oracle)."""
    k, best = m.shape[0], None
    for r in range(1, k + 1):
        for support in itertools.combinations(range(k), r):
            idx = list(support)
            kkt = torch.zeros(r + 1, r + 1, dtype=m.dtype)
            kkt[:r, :r], kkt[:r, r], kkt[r, :r] = 2 * m[idx][:, idx], 1.0, 1.0
            rhs = torch.zeros(r + 1, dtype=m.dtype)
            rhs[r] = 1.0
            sol = torch.linalg.lstsq(kkt, rhs).solution
            w = torch.zeros(k, dtype=m.dtype)
            w[idx] = sol[:r]
            if bool((w >= -1e-14).all()) and (best is None or float(w @ m @ w) < float(best @ m @ best)):
                best = w.clamp_min(0) / w.clamp_min(0).sum()
    return best


def test_min_norm_solver_is_accurate_when_gradient_norms_differ_by_orders_of_magnitude():
    gen = torch.Generator().manual_seed(146)
    g = torch.randn(6, 7, generator=gen, dtype=torch.float64)
    g = g * torch.tensor([[40.0], [0.3], [0.25], [60.0], [0.02], [20.0]], dtype=torch.float64)
    m = g @ g.T
    w = min_norm_weights(m)
    w_ref = _min_norm_exact(m)
    d, d_ref = w @ g, w_ref @ g
    assert float((d - d_ref).norm() / d_ref.norm()) < 1e-4
    # 3 Frank-Wolfe steps leave it far off; the Newton solver finishes (no warning, same point)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        w3 = min_norm_weights(m, max_iter=3)
    assert float((w3 @ g - d_ref).norm() / d_ref.norm()) < 1e-4


def test_nearly_dependent_gradients_solve_fast_and_a_cap_hit_warns_once():
    """Frank-Wolfe crawls when one gradient is nearly the mean of two others (1 s and a warning
    per training step with a 20,000-step cap); the Newton solver ends it in milliseconds. A solver
    that does stop short warns once per process, not every step."""
    gen = torch.Generator().manual_seed(0)
    g1, g2 = torch.randn(50, generator=gen, dtype=torch.float64), torch.randn(50, generator=gen, dtype=torch.float64)
    g = torch.stack([g1, g2, 0.5 * (g1 + g2) + 1e-4 * torch.randn(50, generator=gen, dtype=torch.float64)])
    m = g @ g.T
    start = time.perf_counter()
    w = min_norm_weights(m)
    assert time.perf_counter() - start < 0.5
    mw = m @ w
    assert float(w @ mw - mw.min()) <= 1e-10 * float(w @ mw)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for _ in range(3):
            minimize_on_simplex(lambda v: v @ m @ v, 3, max_iter=1, tol=1e-30, name="capped solver")
    assert [str(r.message)[:47] for r in record] == ["capped solver: stopped after max_iter=1 Newton "]


def test_nash_mtl_alpha_solves_bargaining_system():
    g = torch.randn(4, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    m = g @ g.T
    alpha = nash_bargaining_weights(m)
    assert bool((alpha > 0).all())
    torch.testing.assert_close(m @ alpha, 1 / alpha, rtol=1e-5, atol=1e-8)


def _nash_step(grads, **kwargs):
    """One Nash-MTL step on losses ``g_t . theta``: (alpha [K] float64, shared update d [P])."""
    theta = nn.Parameter(torch.zeros(grads.shape[1], dtype=torch.float64))
    names = [f"t{i}" for i in range(grads.shape[0])]
    comb = NashMTL(task_names=names, **kwargs)
    comb.backward(linear_losses(theta, dict(zip(names, grads))), [theta], backward)
    return torch.tensor([comb.current_weights()[t] for t in names], dtype=torch.float64), theta.grad


def test_nash_mtl_worked_example_on_the_unnormalized_gram():
    # (G G^T) alpha = 1/alpha with G G^T = diag(1, 16): alpha = (1, 1/4), d = 1*(1,0) + 1/4*(0,4)
    g = torch.tensor([[1.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
    alpha, d = _nash_step(g)
    torch.testing.assert_close(alpha, torch.tensor([1.0, 0.25], dtype=torch.float64), rtol=0, atol=1e-10)
    torch.testing.assert_close(d, torch.tensor([1.0, 1.0], dtype=torch.float64), rtol=0, atol=1e-10)


def test_nash_mtl_non_orthogonal_gradients_satisfy_the_bargaining_condition():
    g = torch.tensor([[3.0, 1.0, 0.0], [-1.0, 2.0, 0.5], [0.2, 0.3, 7.0]], dtype=torch.float64)
    alpha, d = _nash_step(g)
    m = g @ g.T
    torch.testing.assert_close(m @ alpha, 1 / alpha, rtol=0, atol=1e-8)
    torch.testing.assert_close(d, alpha @ g, rtol=0, atol=1e-10)
    torch.testing.assert_close(g @ d, 1 / alpha, rtol=0, atol=1e-8)       # g_i . d = 1 / alpha_i
    assert abs(float(d @ d) - 3.0) < 1e-8                                # |d|^2 = K


@pytest.mark.parametrize("s", [1e-3, 0.5, 20.0, 1e4])
def test_nash_mtl_is_scale_equivariant(s):
    # alpha(s G) = alpha(G) / s and the update d = alpha^T G does not depend on the scale
    g = torch.tensor([[3.0, 1.0, 0.0], [-1.0, 2.0, 0.5], [0.2, 0.3, 7.0]], dtype=torch.float64)
    alpha, d = _nash_step(g)
    alpha_s, d_s = _nash_step(s * g)
    torch.testing.assert_close(alpha_s, alpha / s, rtol=1e-9, atol=0)
    torch.testing.assert_close(d_s, d, rtol=0, atol=1e-9)


def test_nash_mtl_max_norm_clips_only_the_shared_update():
    g = torch.tensor([[1.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
    alpha, d = _nash_step(g, max_norm=1.0)                                # |d| = sqrt(2) > 1
    torch.testing.assert_close(alpha, torch.tensor([1.0, 0.25], dtype=torch.float64), rtol=0, atol=1e-10)
    torch.testing.assert_close(d, torch.tensor([1.0, 1.0], dtype=torch.float64) / 2 ** 0.5,
                               rtol=0, atol=1e-10)
    _, d = _nash_step(g, max_norm=2.0)                                    # shorter: untouched
    torch.testing.assert_close(d, torch.tensor([1.0, 1.0], dtype=torch.float64), rtol=0, atol=1e-10)
    # task-specific parameters keep alpha_t times their own gradient
    model = Toy(["a", "b"])
    x, ys = torch.randn(8, 4), {"a": torch.randn(8), "b": 3 * torch.randn(8)}
    comb = NashMTL(max_norm=1e-3, task_names=["a", "b"])
    comb.backward(model.losses(x, ys), list(model.shared.parameters()), backward)
    shared = torch.cat([p.grad.flatten() for p in model.shared.parameters()])
    assert abs(float(shared.norm()) - 1e-3) < 1e-7
    head_grads = {t: model.heads[t].weight.grad.clone() for t in "ab"}
    for t in "ab":
        model.zero_grad()
        model.losses(x, ys)[t].backward()
        torch.testing.assert_close(head_grads[t], comb.current_weights()[t] * model.heads[t].weight.grad)
    with pytest.raises(ValueError, match="max_norm"):
        NashMTL(max_norm=-1.0, task_names=["a", "b"])
    with pytest.warns(RuntimeWarning, match="nash-mtl: max_iter=1 Newton iterations"):
        nash_bargaining_weights(torch.tensor([[4.0, -1.0], [-1.0, 1.0]], dtype=torch.float64), max_iter=1)


def test_db_mtl_balances_log_gradient_magnitudes():
    theta = nn.Parameter(torch.zeros(2))
    grads = {"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([-1.0, 1.0])}
    losses = {t: torch.exp((g * theta).sum()) for t, g in grads.items()}  # grad log L_t = g_t
    comb = DBMTL(beta=0.0, task_names=["a", "b"])
    comb.backward(losses, [theta], backward)
    # d = max|g| * sum g/|g| = sqrt(2) (1, 0) + (-1, 1)
    torch.testing.assert_close(theta.grad, torch.tensor([math.sqrt(2) - 1, 1.0]), atol=1e-5, rtol=0)
    assert comb.current_weights() == pytest.approx({"a": math.sqrt(2), "b": 1.0})


def test_dwa_weights_from_epoch_losses():
    comb = DWA(temperature=2.0, task_names=["a", "b"])
    assert comb.current_weights() == {"a": 1.0, "b": 1.0}
    comb.on_train_epoch_end({"a": 1.0, "b": 2.0})
    assert comb.current_weights() == {"a": 1.0, "b": 1.0}                # one epoch: no rate yet
    comb.on_train_epoch_end({"a": 0.5, "b": 1.8})                         # r = (0.5, 0.9)
    ea, eb = math.exp(0.5 / 2), math.exp(0.9 / 2)
    expected = {"a": 2 * ea / (ea + eb), "b": 2 * eb / (ea + eb)}
    assert comb.current_weights() == pytest.approx(expected)
    assert sum(comb.current_weights().values()) == pytest.approx(2.0)
    la, lb = torch.tensor(0.3), torch.tensor(0.7)
    assert float(comb({"a": la, "b": lb})) == pytest.approx(expected["a"] * 0.3 + expected["b"] * 0.7)
    comb.load_state_dict(copy.deepcopy(comb.state_dict()))               # weights are checkpointed


def test_uncertainty_noisier_task_gets_larger_log_variance():
    torch.manual_seed(0)
    model = Toy(["clean", "noisy"])
    comb = UncertaintyWeighting(task_names=["clean", "noisy"],
                                task_types={"clean": "regression", "noisy": "regression"})
    opt = torch.optim.Adam(list(model.parameters()) + list(comb.parameters()), lr=0.03)
    w = torch.randn(4)
    for _ in range(200):
        x = torch.randn(64, 4)
        y = x @ w
        loss = comb(model.losses(x, {"clean": y + 0.05 * torch.randn(64), "noisy": y + torch.randn(64)}))
        opt.zero_grad()
        loss.backward()
        opt.step()
    s = dict(zip(comb.task_names, comb.log_vars.tolist()))
    assert s["noisy"] > s["clean"] + 1.0
    weights = comb.current_weights()
    assert weights["clean"] > weights["noisy"]


def test_gradnorm_weights_stay_positive_and_sum_to_task_count():
    torch.manual_seed(0)
    model = Toy(["a", "b"])
    comb = GradNorm(alpha=1.5, lr=0.05, task_names=["a", "b"])
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    shared = list(model.shared.parameters())
    w = torch.randn(4)
    history = []
    for _ in range(50):
        x = torch.randn(32, 4)
        losses = model.losses(x, {"a": x @ w, "b": 20 * (x @ w).sin()})
        opt.zero_grad()
        comb.backward(losses, shared, backward)
        opt.step()
        weights = comb.task_weights(["a", "b"])
        assert min(weights.values()) > 0
        assert sum(weights.values()) == pytest.approx(2.0)
        history.append(weights)
    assert history[-1]["a"] != pytest.approx(1.0, abs=1e-3)              # the weights did move
    assert sum(comb.current_weights().values()) == pytest.approx(2.0)


def test_rlw_weights_are_seeded_softmax_and_uniform_in_eval():
    a, b = torch.tensor(1.0), torch.tensor(3.0)
    c1, c2 = (RandomLossWeighting(seed=7, task_names=["a", "b"]) for _ in range(2))
    for _ in range(3):
        t1, t2 = c1({"a": a, "b": b}), c2({"a": a, "b": b})
        assert float(t1) == float(t2)
        assert sum(c1.current_weights().values()) == pytest.approx(1.0)
    c1.eval()
    assert float(c1({"a": a, "b": b})) == pytest.approx(2.0)


def test_famo_gives_more_weight_to_the_task_that_improves_less():
    comb = FAMO(lr=0.1, gamma=0.0, task_names=["fast", "slow"])
    for k in range(30):
        comb({"fast": torch.tensor(1.0 * 0.8 ** k), "slow": torch.tensor(1.0)})
    z = torch.softmax(comb.logits, 0)
    assert z[1] > z[0]
    weights = comb.current_weights()
    assert sum(weights.values()) == pytest.approx(1.0)


# -- contract properties over every registered combiner ----------------------------------------


@pytest.mark.parametrize("name", COMBINERS)
def test_one_task_is_plain_training(name):
    model = Toy(["a"])
    plain = copy.deepcopy(model)
    x, ys = torch.randn(16, 4), {"a": torch.randn(16)}
    plain.losses(x, ys)["a"].backward()
    comb = build(name, ["a"])
    step(comb, model.losses(x, ys), list(model.shared.parameters()))
    for (n, p), q in zip(model.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=f"{name}: {n}")
    weights = comb.current_weights()
    assert set(weights) == {"a"} and all(isinstance(v, float) for v in weights.values())


@pytest.mark.parametrize("name", COMBINERS)
def test_absent_task_gets_no_gradient(name):
    model = Toy(["a", "b", "c"])
    comb = build(name, ["a", "b", "c"])
    shared = list(model.shared.parameters())
    for _ in range(2):                                                    # second step: stateful paths
        model.zero_grad(set_to_none=True)
        x = torch.randn(16, 4)
        losses = model.losses(x, {"a": torch.randn(16), "b": torch.randn(16)})
        step(comb, losses, shared)
        for p in model.heads["c"].parameters():
            assert p.grad is None or bool((p.grad == 0).all())
        for p in list(model.heads["a"].parameters()) + shared:
            assert p.grad is not None and bool(torch.isfinite(p.grad).all())
    weights = comb.current_weights()
    assert set(weights) == {"a", "b", "c"} and all(isinstance(v, float) for v in weights.values())


@pytest.mark.parametrize("name", [n for n in COMBINERS if n != "static"])
def test_unknown_task_is_reported(name):
    model = Toy(["a", "zz"])
    comb = build(name, ["a", "b"])
    losses = model.losses(torch.randn(4, 4), {"a": torch.randn(4), "zz": torch.randn(4)})
    with pytest.raises(ValueError, match="zz"):
        step(comb, losses, list(model.shared.parameters()))


def test_declared_capabilities():
    for comp in get_registry().all("combiner"):
        cls = comp.load()
        if comp.name == "static":
            continue
        assert isinstance(cls.supports_gradient_accumulation, bool), comp.name
        if cls.requires_manual_backward:
            assert cls.supports_gradient_accumulation is False


def test_all_reduce_mean_without_process_group_is_identity():
    t = torch.randn(3)
    assert all_reduce_mean(t) is t


# -- two processes on half batches == one process on the whole batch ---------------------------

PARITY = ["pcgrad", "mgda", "cagrad", "nash-mtl", "imtl", "gradnorm", "db-mtl", "famo"]


def _run_steps(name, rank, world, port, out):
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world)
    try:
        results = {}
        for n in name:
            model = Toy(["a", "b"], seed=1)
            comb = build(n, ["a", "b"])
            opt = torch.optim.SGD(list(model.parameters()), lr=0.1)
            gen = torch.Generator().manual_seed(5)

            def synced_backward(loss):                               # what DDP does in backward
                loss.backward()
                for p in model.parameters():
                    if p.grad is not None:
                        p.grad.copy_(all_reduce_mean(p.grad))

            for _ in range(3):
                x = torch.randn(8, 4, generator=gen)
                ys = {"a": torch.randn(8, generator=gen), "b": 5 * torch.randn(8, generator=gen)}
                rows = slice(rank * 8 // world, (rank + 1) * 8 // world)
                losses = model.losses(x[rows], {t: y[rows] for t, y in ys.items()})
                opt.zero_grad()
                if comb.requires_manual_backward:
                    comb.backward(losses, list(model.shared.parameters()), synced_backward)
                else:
                    synced_backward(comb(losses))
                opt.step()
            results[n] = [p.detach().clone() for p in model.parameters()]
        if rank == 0:
            out.put({k: [t.tolist() for t in v] for k, v in results.items()})
    finally:
        if world > 1:
            dist.barrier()
            dist.destroy_process_group()


def _worker(rank, names, port, queue):
    torch.set_num_threads(1)
    _run_steps(names, rank, 2, port, queue)


def test_two_processes_match_one_process_on_the_global_batch():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, PARITY, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    two = queue.get(timeout=120)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    class _Box:
        def put(self, v):
            self.v = v

    box = _Box()
    _run_steps(PARITY, 0, 1, port, box)
    for name in PARITY:
        for a, b in zip(two[name], box.v[name]):
            torch.testing.assert_close(torch.tensor(a), torch.tensor(b), rtol=1e-4, atol=1e-5,
                                       msg=name)
