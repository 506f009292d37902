"""Building blocks shared by the gradient-level combiners.

Everything a gradient-level method needs besides its own rule lives here, once:

* :func:`task_gradients` — one flattened gradient per task on the shared parameters (or on a
  shared representation), by ``torch.autograd.grad(..., retain_graph=True)``, synchronized over
  processes in a single collective.
* :func:`all_reduce_mean` — mean over processes when ``torch.distributed`` is initialized,
  identity otherwise.
* :class:`GradientCombiner` — the base of gradient-level combiners: argument checks, the
  one-task shortcut, and the two ways of ending a step (:meth:`~GradientCombiner._backward_weighted`
  for methods that only choose task weights, :meth:`~GradientCombiner._backward_direction` for
  methods that build a new shared gradient).
* solvers on small ``[K, K]`` Gram matrices: :func:`min_norm_weights` (Frank-Wolfe),
  :func:`minimize_on_simplex` (interior-point Newton, to a duality-gap tolerance), :func:`project_to_simplex`, and the
  buffer-backed :func:`adam_step` used by methods that learn their weights internally.

**Multi-process training (DDP).** Per-task ``autograd.grad`` does not trigger DDP's gradient
all-reduce, so :func:`task_gradients` averages the per-task gradient matrix ``G [T, P]`` (all the
model's tasks, fixed order: the same collective on every process) over the processes itself,
together with the loss values. The module passes every process the same tasks (those labelled on
at least one process), each process's ``L_t`` being its share of the global masked mean
(``sum of its labelled rows' losses / global labelled count * world size``; see
:class:`~mtlframe.combiners.base.LossCombiner`): the process mean of ``L_t`` and of ``grad L_t``
is then exactly the global batch's, however the labelled rows are spread over the processes
(none at all on some). Every process derives identical weights or directions from identical
numbers. The step ends with one ordinary ``manual_backward`` on every process, so DDP
synchronizes task-specific parameters and precision plugins (loss scaling) apply:

* weight methods backpropagate ``sum_t w_t L_t`` with detached ``w``; the shared gradient is then
  ``sum_t w_t mean_r(g_t^r)`` — the gradient one process would get on the global batch;
* direction methods backpropagate ``sum_t L_t + <theta_shared, d - sum_t G_t>``: the network
  part gives shared parameters ``sum_t G_t`` (DDP-averaged), the second term replaces it by the
  wanted direction ``d``, and task-specific parameters get their own task's gradient. Nothing is
  written into ``.grad`` by hand, so loss scaling, DDP buckets and accumulation stay correct.

Both equal one process on the global batch (``tests/test_ddp_sparse.py`` trains two processes
through Lightning with tasks labelled on one process, both or neither, and compares the weights).

**Gradient accumulation.** The combination is computed per backward call, i.e. per micro-batch;
resolving conflicts on micro-batches is not the same method as on the effective batch, so the
gradient-level combiners declare ``supports_gradient_accumulation = False``.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.distributed as dist

from mtlframe.combiners.base import LossCombiner

# --------------------------------------------------------------------------------------------
# processes


def world_size() -> int:
    """Number of processes in the default group (1 when ``torch.distributed`` is not in use)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of ``tensor`` over all processes; ``tensor`` itself when not distributed.

    Every process must call it with a tensor of the same shape and dtype (it is a collective).
    The input is not modified.
    """
    n = world_size()
    if n == 1:
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.div_(n)


# --------------------------------------------------------------------------------------------
# per-task gradients


def present_tasks(losses: Mapping[str, torch.Tensor], task_names: Sequence[str]) -> list[str]:
    """The tasks of ``losses`` in ``task_names`` order.

    Raises:
        ValueError: ``losses`` names a task the combiner was not built for, or is empty.
    """
    unknown = [t for t in losses if t not in task_names]
    if unknown:
        raise ValueError(f"losses for unknown task(s) {unknown}; the combiner was built for "
                         f"tasks {list(task_names)}")
    if not losses:
        raise ValueError("losses is empty: no task has a labelled row in this batch. Skip the "
                         "batch (on every process) instead of calling the combiner.")
    return [t for t in task_names if t in losses]


def unique_trainable(tensors: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """Tensors that require grad, each once, in first-seen order."""
    seen: set[int] = set()
    out = []
    for p in tensors:
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def flat_grad(loss: torch.Tensor, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """``d loss / d inputs`` flattened to ``[P]`` (zeros for inputs the loss does not use).

    The graph is retained so the caller can differentiate other losses and backpropagate the
    combined loss afterwards. Sparse gradients (``nn.Embedding(sparse=True)``) are densified.
    """
    grads = torch.autograd.grad(loss, inputs, retain_graph=True, allow_unused=True)
    parts = []
    for x, g in zip(inputs, grads):
        if g is None:
            parts.append(torch.zeros(x.numel(), dtype=x.dtype, device=x.device))
        else:
            parts.append((g.to_dense() if g.is_sparse else g).reshape(-1))
    return torch.cat(parts)


def split_like(flat: torch.Tensor, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Cut a flat ``[P]`` vector into views shaped like ``tensors`` (the inverse of flattening)."""
    out, offset = [], 0
    for t in tensors:
        out.append(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()
    return out


@dataclass
class TaskGradients:
    """Per-task gradients of one step, identical on every process.

    Attributes:
        tasks: tasks present on at least one process, in task-name order (``K`` of them).
        grads: ``[K, P]`` per-task gradients, the mean over all processes (the global batch's
            gradient), or the global batch's ``[K, K]`` Gram matrix when computed on a
            representation.
        losses: ``[K]`` loss values (detached), the mean over processes: the global batch's loss.
        is_gram: ``grads`` holds the ``[K, K]`` Gram matrix (``gram_only=True``).
    """

    tasks: list[str]
    grads: torch.Tensor
    losses: torch.Tensor
    is_gram: bool = False

    def gram(self) -> torch.Tensor:
        """``G G^T`` as float64 on the CPU (``[K, K]``, small: the solvers run there).

        The product is taken in ``grads``' dtype (no float64 copy of the ``[K, P]`` matrix).
        """
        if self.is_gram:
            return self.grads.double().cpu()
        return (self.grads @ self.grads.T).double().cpu()


def task_gradients(losses: Mapping[str, torch.Tensor], task_names: Sequence[str],
                   inputs: Sequence[torch.Tensor], *, gram_only: bool = False) -> TaskGradients:
    """Per-task gradients of ``losses`` w.r.t. ``inputs``, averaged over processes.

    Args:
        losses: ``{task: scalar loss}``, the same tasks on every process, each this process's
            share of the global-batch loss (the mean over processes is the global loss; see
            :class:`~mtlframe.combiners.base.LossCombiner`). A task missing on a process counts
            as a zero loss there.
        task_names: all tasks of the model (fixes the row order on every process).
        inputs: shared parameters, or shared representation tensors ``[B, ...]``.
        gram_only: synchronize the ``[K, K]`` Gram matrix instead of ``G`` (for representation
            gradients, whose rows belong to different samples on different processes). With
            ``W`` processes the global batch's Gram matrix is ``(1 / W) mean_r(G_r G_r^T)`` (the
            global loss is ``mean_r L^r`` and each ``L^r`` depends only on its own rows), which is
            what is returned: the same as one process on the global batch.

    Returns:
        :class:`TaskGradients` with rows for the tasks of ``losses`` (on any process), in
        ``task_names`` order.

    Raises:
        ValueError: ``inputs`` is empty (nothing is shared, nothing to balance).
    """
    if not inputs:
        raise ValueError("a gradient-level combiner needs shared parameters (or a shared "
                         "representation) that require grad; got none")
    names = list(task_names)
    local = {t: flat_grad(losses[t], inputs) for t in names if t in losses}
    ref = next(iter(local.values()))
    g = torch.stack([local[t] if t in local else torch.zeros_like(ref) for t in names])  # (T, P)
    if g.dtype in (torch.float16, torch.bfloat16):
        g = g.float()
    if gram_only:
        g = g.double() @ g.double().T                                          # (T, T)
    values = torch.stack([losses[t].detach().reshape(()).to(g.dtype) if t in losses
                          else torch.zeros((), dtype=g.dtype, device=g.device) for t in names])
    share = torch.tensor([t in losses for t in names], dtype=g.dtype, device=g.device)
    n = world_size()
    if n > 1:                                              # one collective for all three
        packed = all_reduce_mean(torch.cat([g, values[:, None], share[:, None]], dim=1))
        g, values, share = packed[:, :-2], packed[:, -2], packed[:, -1]
    keep = (share > 0).nonzero().flatten()
    if gram_only:
        g = g[keep][:, keep] / n
        return TaskGradients([names[i] for i in keep.tolist()], g, values[keep], is_gram=True)
    return TaskGradients([names[i] for i in keep.tolist()], g[keep], values[keep])


def sync_task_values(values: Mapping[str, torch.Tensor], task_names: Sequence[str]
                     ) -> dict[str, torch.Tensor]:
    """Mean over processes of scalar per-task values (e.g. detached losses).

    ``values`` holds the same tasks on every process (a task missing on a process counts as 0
    there); with the module's per-process loss shares the result is the global batch's loss.
    Returns ``{task: value}`` for the tasks present on any process. One fixed-size collective.
    """
    names = list(task_names)
    device = next(iter(values.values())).device
    v = torch.stack([values[t].detach().reshape(()).double() if t in values
                     else torch.zeros((), dtype=torch.float64, device=device) for t in names])
    present = torch.tensor([t in values for t in names], dtype=torch.float64, device=device)
    packed = all_reduce_mean(torch.stack([v, present], dim=1))
    return {t: packed[i, 0] for i, t in enumerate(names) if packed[i, 1] > 0}


# --------------------------------------------------------------------------------------------
# small solvers


def project_to_simplex(v: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of ``v [K]`` onto ``{w : w >= 0, sum(w) = 1}`` (sort-based, exact)."""
    u, _ = torch.sort(v, descending=True)
    css = torch.cumsum(u, 0) - 1
    k = torch.arange(1, v.numel() + 1, dtype=v.dtype, device=v.device)
    rho = int((u - css / k > 0).nonzero().max())
    return (v - css[rho] / (rho + 1)).clamp_min(0)


def min_norm_weights(gram: torch.Tensor, max_iter: int = 250, tol: float = 1e-10) -> torch.Tensor:
    """Weights of the min-norm point of the convex hull of ``K`` vectors.

    Solves ``min_{w in simplex} w^T M w`` for the Gram matrix ``M = G G^T [K, K]``, as Sener &
    Koltun (2018, Alg. 2) do with Frank-Wolfe and exact line search. This uses the *pairwise*
    variant: move weight from the worst vertex in the support (``argmax (M w)``) to the best one
    (``argmin (M w)``) with the exact step on the quadratic,
    ``gamma = clip(((M w)_s - (M w)_t) / (M_tt + M_ss - 2 M_ts), 0, w_s)``, for up to
    ``max_iter`` steps; with two vectors the first step is exact. Where that has not converged
    (nearly dependent gradients, norms that differ by orders of magnitude: Frank-Wolfe slows to a
    crawl there), the interior-point Newton solver :func:`minimize_on_simplex` (gradient ``2 M w``,
    Hessian ``2 M``) finishes the job in a few dozen ``[K, K]`` solves.

    Converged means a duality gap ``w^T M w - min_t (M w)_t`` of at most
    ``tol * max(w^T M w, 1e-8 max diag M)``: relative to the squared norm of the min-norm point
    (``|G^T w - G^T w*|^2 <= gap``, so the point is found to a relative accuracy of about
    ``sqrt(tol)`` however different the vectors' norms are), with an absolute floor for hulls
    that contain 0.

    Returns:
        ``w [K]`` on the simplex (float64).

    Warns:
        RuntimeWarning: neither solver reached ``tol`` (once per process; the warning gives the gap).
    """
    m = gram.detach().double().cpu()
    k = m.shape[0]
    w = torch.full((k,), 1.0 / k, dtype=m.dtype)
    floor = 1e-8 * float(m.diagonal().max().clamp_min(1e-300))
    for _ in range(max_iter):
        mw = m @ w
        t = int(torch.argmin(mw))
        value = float(w @ mw)
        if value - float(mw[t]) <= tol * max(value, floor):
            return w
        support = (w > 0).nonzero().flatten()
        s = int(support[torch.argmax(mw[support])])
        curvature = float(m[t, t] + m[s, s] - 2 * m[t, s])
        if s == t or curvature <= 0:
            return w
        step = max(float(mw[s] - mw[t]) / curvature, 0.0)
        if step >= float(w[s]):                                              # vertex s leaves
            w[t] += w[s]
            w[s] = 0.0
        else:
            w[t] += step
            w[s] -= step
    # not converged: the Newton solver, with the gap target in the objective's units
    value = float(w @ m @ w)
    return minimize_on_simplex(lambda v: v @ m @ v, k, tol=tol * max(value, floor) * 0.5, max_iter=200,
                               name="min-norm solver (MGDA)", derivatives=lambda v: (2.0 * (m @ v), 2.0 * m))


def simplex_gap(w: torch.Tensor, grad: torch.Tensor) -> float:
    """Frank-Wolfe duality gap ``grad . w - min_i grad_i`` of ``w`` on the simplex.

    For a convex objective with gradient ``grad`` at ``w``, ``f(w) - min_simplex f <= gap``: a
    certified bound on the suboptimality (0 exactly at the optimum).
    """
    return float(grad @ w - grad.min())


def minimize_on_simplex(objective: Callable[[torch.Tensor], torch.Tensor], k: int,
                        max_iter: int = 100, tol: float = 1e-9,
                        dtype: torch.dtype = torch.float64,
                        device: torch.device | None = None, name: str = "simplex solver",
                        derivatives: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
                        ) -> torch.Tensor:
    """Minimize a convex, twice-differentiable ``objective(w)`` over the probability simplex in ``R^k``.

    Log-barrier interior-point method: Newton's method (gradient and ``[k, k]`` Hessian by
    autograd) on ``objective(w) - mu sum_i log w_i`` restricted to ``sum(w) = 1``, with a step
    kept inside ``w > 0`` and Armijo backtracking, for decreasing ``mu``. Newton steps are
    invariant to the conditioning of the problem, so ill-conditioned objectives converge as
    fast as well-conditioned ones (typically 15-40 steps). It stops as soon as the Frank-Wolfe
    duality gap (:func:`simplex_gap`), a certified bound on ``objective(w) - min objective``, is
    at most ``tol``, after ``max_iter`` Newton steps, or when rounding stops all progress. Meant
    for the tiny ``K``-dimensional problems of MTL methods.

    Args:
        objective: maps ``w [k]`` to a scalar tensor; convex on the simplex.
        k: dimension.
        max_iter: cap on the total number of Newton steps.
        tol: target duality gap, in the objective's units (> 0).
        name: what to call the solver in the warning (e.g. the combiner's name).
        derivatives: optional closed form ``w -> (gradient [k], Hessian [k, k])`` of the
            objective (faster than autograd); autograd is used when ``None``.

    Returns:
        the best ``w [k]`` found (detached), on the simplex.

    Raises:
        ValueError: ``tol <= 0``.

    Warns:
        RuntimeWarning: the duality gap is still above ``tol`` when the solver stops (cap
        reached or no more progress); the warning gives the gap reached.
    """
    if not tol > 0:
        raise ValueError(f"{name}: tol must be > 0, got {tol}")

    def value(v: torch.Tensor) -> float:
        with torch.no_grad():
            return float(objective(v))

    def by_autograd(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v = v.detach()
        with torch.enable_grad():
            g = torch.autograd.functional.jacobian(objective, v, vectorize=True)
            h = torch.autograd.functional.hessian(objective, v, vectorize=True)
        return g.detach(), 0.5 * (h + h.T).detach()

    derivatives = derivatives or by_autograd
    w = torch.full((k,), 1.0 / k, dtype=dtype, device=device)
    if k == 1:
        return w
    g, h = derivatives(w)
    gap = simplex_gap(w, g)
    best_w, best_gap = w, gap
    mu = max(gap, tol) / k
    floor = 1e-3 * tol / k
    steps = stalled = 0
    while gap > tol and steps < max_iter:
        steps += 1
        # Newton step on phi(w) = f(w) - mu sum log w restricted to 1^T dw = 0, solved as a KKT
        # system in the scaled variable dw = w * u (well conditioned however small some w_i get)
        grad_phi = g - mu / w
        kkt = torch.zeros(k + 1, k + 1, dtype=dtype, device=device)
        kkt[:k, :k] = w[:, None] * h * w[None, :] + mu * torch.eye(k, dtype=dtype, device=device)
        kkt[:k, k] = kkt[k, :k] = w
        rhs = torch.cat([-w * grad_phi, torch.zeros(1, dtype=dtype, device=device)])
        dw = w * torch.linalg.solve(kkt, rhs)[:k]
        decrement = float(-(grad_phi @ dw)) / mu             # Newton decrement^2 of phi / mu
        t = 1.0
        neg = dw < 0
        if bool(neg.any()):
            t = min(1.0, 0.99 * float((w[neg] / -dw[neg]).min()))
        cand = w + t * dw
        phi0 = value(w) - mu * float(torch.log(w).sum())
        slack = 1e-14 * (abs(phi0) + 1.0)                    # Armijo up to rounding
        while value(cand) - mu * float(torch.log(cand).sum()) > phi0 - 1e-4 * t * mu * decrement + slack:
            t *= 0.5
            if t < 1e-14:
                cand = w
                break
            cand = w + t * dw
        w = cand / cand.sum()
        g, h = derivatives(w)
        gap = simplex_gap(w, g)
        stalled = stalled + 1 if mu <= floor and gap >= 0.5 * best_gap else 0
        if gap < best_gap:
            best_w, best_gap = w, gap
        if stalled >= 10:                                    # rounding floor: no more progress
            break
        if decrement <= 1.0 or t < 1e-14:                   # (nearly) centred: next mu
            mu = max(mu / 30.0, floor)
    if best_gap > tol:
        why = (f"max_iter={max_iter} Newton steps" if steps >= max_iter
               else f"{steps} Newton steps (no more progress)")
        warn_once(name, f"{name}: stopped after {why} with duality gap {best_gap:.3g} > tol={tol:g}: "
                        f"the objective may be off by that much; raise tol (or max_iter). Later steps that "
                        "stop short are not reported again.")
    return best_w.detach()


_WARNED: set[str] = set()


def warn_once(key: str, message: str) -> None:
    """A ``RuntimeWarning`` the first time ``key`` warns in this process: solvers run every
    training step, and a message carrying numbers would otherwise repeat every step."""
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def adam_step(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor,
              exp_avg_sq: torch.Tensor, steps: torch.Tensor, index: torch.Tensor, lr: float,
              betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
              weight_decay: float = 0.0) -> None:
    """One Adam step on the entries ``index`` of a 1-D buffer, in place.

    The state (``exp_avg``, ``exp_avg_sq``, per-entry ``steps``) lives in the caller's buffers so
    it is saved in checkpoints and untouched by the model's optimizer. Entries outside ``index``
    (tasks absent from the batch) keep their value and state. ``weight_decay`` is L2 (added to the
    gradient), as in ``torch.optim.Adam``.

    Args:
        param, exp_avg, exp_avg_sq, steps: ``[T]`` buffers.
        grad: ``[len(index)]`` gradient of the selected entries.
        index: long tensor of entries to update.
    """
    b1, b2 = betas
    g = grad + weight_decay * param[index]
    steps[index] += 1
    m = exp_avg[index].mul(b1).add(g, alpha=1 - b1)
    v = exp_avg_sq[index].mul(b2).addcmul(g, g, value=1 - b2)
    exp_avg[index], exp_avg_sq[index] = m, v
    n = steps[index]
    m_hat = m / (1 - b1 ** n)
    v_hat = v / (1 - b2 ** n)
    param[index] = param[index] - lr * m_hat / (v_hat.sqrt() + eps)


# --------------------------------------------------------------------------------------------
# base class


class GradientCombiner(LossCombiner):
    """Base of gradient-level combiners (``requires_manual_backward = True``).

    Subclasses implement :meth:`backward`, usually as: get the per-task gradients with
    :meth:`_task_gradients` (which takes the one-task shortcut itself), compute weights or a direction, and end with :meth:`_backward_weighted` or :meth:`_backward_direction`
    (exactly one ``manual_backward`` per call on every process).

    With a single task present (in the model, or in the batch on all processes) there is nothing
    to balance: the step is a plain ``manual_backward`` of that task's loss.

    :meth:`forward` returns ``sum_t L_t``, only for logging (e.g. a validation loss); the update
    itself is made by :meth:`backward`.

    Attributes:
        requires_representation: the module must pass ``representation=`` to :meth:`backward`
            (MGDA-UB); ``False`` for the others.
    """

    requires_manual_backward: ClassVar[bool] = True
    supports_gradient_accumulation: ClassVar[bool] = False
    requires_representation: bool = False

    def __init__(self, task_names: Sequence[str], weights: Mapping[str, float] | None = None) -> None:
        super().__init__(task_names, weights)
        self._last_weights: dict[str, float] = {t: 1.0 for t in self.task_names}

    def forward(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        present_tasks(losses, self.task_names)
        return sum(losses.values())  # type: ignore[return-value]

    def current_weights(self) -> dict[str, float]:
        """The weight each task's loss got in the last step (0.0 for a task absent from it)."""
        return dict(self._last_weights)

    # -- helpers for subclasses --------------------------------------------------------------
    def _prepare(self, losses: Mapping[str, torch.Tensor],
                 shared_parameters: Iterable[torch.Tensor]) -> tuple[list[str], list[torch.Tensor]]:
        tasks = present_tasks(losses, self.task_names)
        return tasks, unique_trainable(shared_parameters)

    def _is_single_task(self, losses: Mapping[str, torch.Tensor]) -> bool:
        """The model has one task, or the step has one task (every process passes the same
        tasks, so this is known without a collective and is the same on every process)."""
        return len(self.task_names) == 1 or len(losses) == 1

    def _single_task(self, losses: Mapping[str, torch.Tensor],
                     manual_backward: Callable[[torch.Tensor], None]) -> bool:
        """Plain backward if :meth:`_is_single_task`; True if done."""
        if self._is_single_task(losses):
            self._backward_weighted(losses, {t: 1.0 for t in losses}, manual_backward)
            return True
        return False

    def _single_after_sync(self, tg: TaskGradients, losses: Mapping[str, torch.Tensor],
                           manual_backward: Callable[[torch.Tensor], None]) -> bool:
        """Plain backward when only one task is present on all processes together (a caller
        that passes different tasks on different processes); True if done."""
        if len(tg.tasks) == 1:
            self._backward_weighted(losses, {tg.tasks[0]: 1.0}, manual_backward)
            return True
        return False

    def _task_gradients(self, losses: Mapping[str, torch.Tensor], shared_parameters: Iterable[torch.Tensor],
                        manual_backward: Callable[[torch.Tensor], None]
                        ) -> tuple[TaskGradients, list[torch.Tensor]] | None:
        """Per-task gradients of the shared parameters (averaged over processes), or ``None``
        after a plain backward when there is only one task to balance."""
        _, params = self._prepare(losses, shared_parameters)
        if self._single_task(losses, manual_backward):
            return None
        tg = task_gradients(losses, self.task_names, params)
        if self._single_after_sync(tg, losses, manual_backward):
            return None
        return tg, params

    def _set_weights(self, weights: Mapping[str, float]) -> None:
        self._last_weights = {t: float(weights.get(t, 0.0)) for t in self.task_names}

    def _backward_weighted(self, losses: Mapping[str, torch.Tensor], weights: Mapping[str, float],
                           manual_backward: Callable[[torch.Tensor], None],
                           extra: torch.Tensor | None = None) -> None:
        """``manual_backward(sum_t w_t L_t [+ extra])`` over the local tasks; ``w`` are plain floats.

        ``extra`` is a term for the combiner's own parameters (e.g. IMTL-L's loss scales).
        """
        self._set_weights(weights)
        total = sum(float(weights.get(t, 0.0)) * loss for t, loss in losses.items())
        manual_backward(total if extra is None else total + extra)  # type: ignore[arg-type]

    def _backward_coefficients(self, losses: Mapping[str, torch.Tensor], tg: TaskGradients,
                               params: Sequence[torch.Tensor], coef: torch.Tensor,
                               manual_backward: Callable[[torch.Tensor], None]) -> None:
        """End a step whose shared update is ``coef^T G`` (PCGrad, CAGrad): the shared parameters get
        that direction, task-specific ones their plain gradient; ``coef`` is logged as the weights."""
        direction = coef.to(tg.grads) @ tg.grads                              # (P,)
        self._set_weights({t: float(v) for t, v in zip(tg.tasks, coef)})
        self._backward_direction(sum(losses.values()), params, direction, tg.grads.sum(0), manual_backward)

    def _backward_direction(self, total: torch.Tensor, params: Sequence[torch.Tensor],
                            direction: torch.Tensor, reference: torch.Tensor,
                            manual_backward: Callable[[torch.Tensor], None]) -> None:
        """Backpropagate ``total`` so that the shared parameters receive ``direction`` instead.

        Args:
            total: the loss whose gradient task-specific parameters should get (``sum_t L_t``).
            params: the shared parameters, in the order ``direction`` is flattened.
            direction: ``[P]`` wanted shared gradient.
            reference: ``[P]`` the shared gradient that ``total`` produces (averaged over
                processes), i.e. ``sum_t G_t`` of :func:`task_gradients` on ``total``'s terms.
        """
        delta = (direction - reference).detach()
        correction = sum((p * d.to(p.dtype)).sum() for p, d in zip(params, split_like(delta, params)))
        manual_backward(total + correction)
