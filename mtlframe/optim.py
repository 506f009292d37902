"""Optimizers for models with sparse embedding tables.

An ``nn.Embedding(sparse=True)`` (recipe: ``sparse: true`` on the ``embedding`` encoder) gets a
sparse gradient holding only the rows of the batch, so its update costs O(rows in the batch)
instead of O(rows in the table). ``torch.optim.Adam`` rejects sparse gradients and
``torch.optim.SparseAdam`` rejects dense ones, so :func:`build_optimizer` pairs them in a
:class:`HybridOptimizer`: Adam/AdamW on the dense parameters, SparseAdam on the sparse tables,
behind one ``torch.optim.Optimizer`` (one Lightning optimizer, automatic optimization unchanged).
Adagrad and SGD take sparse gradients themselves and are used as they are.

``optimizer.sparse_optimizer`` chooses the update of the sparse tables:

* ``auto``: ``SparseAdam`` under Adam/AdamW, the optimizer itself under Adagrad/SGD;
* ``sparse_adam``: ``torch.optim.SparseAdam`` (lazy Adam: moments of a row change only when the
  row is in the batch). State: two floats per table *element* (2x the table);
* ``rowwise_adagrad``: :class:`RowWiseAdagrad`, Adagrad with one accumulator per table *row*
  (as in DLRM / FBGEMM's row-wise Adagrad). State: one float per row (1/d of the table), the
  choice when optimizer memory matters.

``optimizer.sparse_lr`` sets their learning rate (default ``optimizer.lr``; row-wise Adagrad
usually wants a larger one, e.g. 0.01-0.1). Sparse tables get no weight decay (SparseAdam has
none; Adagrad refuses it on sparse gradients): ``optimizer.weight_decay`` applies to the dense
parameters only.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from mtlframe.errors import RecipeError

__all__ = ["HybridOptimizer", "RowWiseAdagrad", "build_optimizer", "check_sparse_support", "sparse_conflicts",
           "sparse_parameters"]


def sparse_parameters(module: nn.Module) -> list[nn.Parameter]:
    """Weights of every ``nn.Embedding`` / ``nn.EmbeddingBag`` in ``module`` built with ``sparse=True``."""
    out, seen = [], set()
    for m in module.modules():
        sparse = isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and m.sparse and m.weight.requires_grad
        if sparse and id(m.weight) not in seen:
            seen.add(id(m.weight))
            out.append(m.weight)
    return out


class RowWiseAdagrad(torch.optim.Optimizer):
    """Adagrad with one squared-gradient accumulator per row of a 2-D parameter.

    For a row ``i`` with gradient ``g_i [d]`` in the step: ``s_i += mean(g_i ** 2)``,
    ``w_i -= lr * g_i / (sqrt(s_i) + eps)``. Rows outside the batch (absent from a sparse
    gradient) are neither read nor written. Takes sparse (``nn.Embedding(sparse=True)``) and
    dense gradients.

    Args:
        params: 2-D parameters ``[rows, d]`` (or groups of them).
        lr: learning rate.
        eps: added to the root of the accumulator.

    State per parameter: ``sum`` ``[rows]`` float32.

    Raises:
        ValueError: ``lr`` or ``eps`` not positive, or a parameter is not 2-D.
    """

    def __init__(self, params, lr: float = 0.01, eps: float = 1e-10) -> None:
        if lr <= 0 or eps <= 0:
            raise ValueError(f"RowWiseAdagrad needs lr > 0 and eps > 0, got lr={lr}, eps={eps}")
        super().__init__(params, {"lr": lr, "eps": eps})
        bad = [tuple(p.shape) for g in self.param_groups for p in g["params"] if p.ndim != 2]
        if bad:
            raise ValueError(f"RowWiseAdagrad updates 2-D tables [rows, d]; got parameters of shape {bad}")

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "sum" not in state:
                    state["sum"] = torch.zeros(p.shape[0], dtype=p.dtype, device=p.device)
                acc = state["sum"]
                if p.grad.is_sparse and p.grad.sparse_dim() == 1:          # rows x dense [d] values
                    grad = p.grad.coalesce()
                    rows, values = grad.indices()[0], grad.values()          # (U,), (U, d)
                else:
                    rows = torch.arange(p.shape[0], device=p.device)
                    values = p.grad.to_dense() if p.grad.is_sparse else p.grad
                new = acc.index_select(0, rows).add_(values.pow(2).mean(dim=1))   # (U,)
                acc.index_copy_(0, rows, new)
                scale = new.sqrt_().add_(group["eps"]).reciprocal_().mul_(-group["lr"])
                p.index_add_(0, rows, values * scale.unsqueeze(1))
        return loss


class HybridOptimizer(torch.optim.Optimizer):
    """One optimizer over dense and sparse parameter groups, each kind stepped by its own torch optimizer.

    Groups carry a ``"sparse"`` flag. ``param_groups`` and ``state`` are this object's (so
    ``state_dict``/``load_state_dict``, learning-rate schedulers and Lightning see one ordinary
    optimizer); the inner optimizers share the same group dicts and state.

    Args:
        groups: parameter groups, each with ``"sparse": bool``.
        make_dense: builds the optimizer of the dense groups (e.g. ``lambda g: Adam(g, lr=1e-3)``).
        make_sparse: builds the optimizer of the sparse groups (e.g. ``SparseAdam``).

    Raises:
        ValueError: a group lacks the ``"sparse"`` flag.
    """

    def __init__(self, groups: Sequence[Mapping[str, Any]],
                 make_dense: Callable[[list[dict]], torch.optim.Optimizer],
                 make_sparse: Callable[[list[dict]], torch.optim.Optimizer]) -> None:
        if any("sparse" not in g for g in groups):
            raise ValueError("every parameter group of a HybridOptimizer needs a 'sparse' flag")
        self._make = {False: make_dense, True: make_sparse}
        self.inner: dict[bool, torch.optim.Optimizer] = {}
        super().__init__([dict(g) for g in groups], defaults={})
        self._link()

    def _link(self) -> None:
        """(Re)build the inner optimizers over this optimizer's group dicts and state."""
        self.inner = {}
        for kind in (False, True):
            groups = [g for g in self.param_groups if g["sparse"] == kind]
            if groups:
                opt = self._make[kind](groups)
                opt.state = self.state
                self.inner[kind] = opt

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._link()

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Run ``closure`` (if given) once, then step the dense and the sparse optimizer."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.inner.values():
            opt.step()
        return loss


def _split_sparse(groups: Iterable[Mapping[str, Any]], sparse_ids: set[int]) -> list[dict[str, Any]]:
    """Each group split into its dense part and its sparse part (``"sparse"`` flag, no weight decay)."""
    out = []
    for g in groups:
        dense = [p for p in g["params"] if id(p) not in sparse_ids]
        sparse = [p for p in g["params"] if id(p) in sparse_ids]
        if dense:
            out.append({**g, "params": dense, "sparse": False})
        if sparse:  # named after its group, for the logged learning rates (train/lr/<name>)
            name = g.get("name")
            out.append({**g, "params": sparse, "sparse": True, "weight_decay": 0.0,
                        "name": "sparse" if name in (None, "dense") else f"{name}-sparse"})
    return out


def build_optimizer(cfg, groups: Sequence[Mapping[str, Any]],
                    sparse: Sequence[nn.Parameter] = ()) -> torch.optim.Optimizer:
    """The optimizer of a recipe's ``optimizer`` section over ``groups``.

    Args:
        cfg: :class:`~mtlframe.recipe.OptimizerConfig` (``name``, ``lr``, ``weight_decay``,
            ``momentum``, ``fused``).
        groups: parameter groups (``{"params": [...], **overrides}``).
        sparse: parameters that receive sparse gradients (see :func:`sparse_parameters`).

    Returns:
        ``Adam``/``AdamW`` (fused when supported and ``cfg.fused`` is not False), ``Adagrad`` or
        ``SGD``; with sparse parameters, a :class:`HybridOptimizer` that updates them as
        ``cfg.sparse_optimizer`` says (see the module docstring), unless that is ``auto`` under
        Adagrad/SGD (which take sparse gradients themselves).

    Raises:
        RuntimeError / TypeError / ValueError: ``cfg.fused`` is True and the fused kernel is unavailable.
    """
    sparse_ids = {id(p) for p in sparse}
    if sparse_ids:
        groups = _split_sparse(groups, sparse_ids)

    def dense(gs: list[dict]) -> torch.optim.Optimizer:
        if cfg.name in ("adam", "adamw"):
            cls = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
            if cfg.fused is not False:
                try:  # one fused kernel instead of a Python loop over parameters (torch >= 2.4 on CPU)
                    return cls(gs, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
                except (RuntimeError, TypeError, ValueError):
                    if cfg.fused:
                        raise
            return cls(gs, lr=cfg.lr, weight_decay=cfg.weight_decay)
        if cfg.name == "adagrad":
            return torch.optim.Adagrad(gs, lr=cfg.lr, weight_decay=cfg.weight_decay)
        return torch.optim.SGD(gs, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)

    kind = getattr(cfg, "sparse_optimizer", "auto")
    if not sparse_ids or (kind == "auto" and cfg.name in ("adagrad", "sgd")):
        return dense(list(groups))
    lr = getattr(cfg, "sparse_lr", None) or cfg.lr
    for g in groups:  # the sparse groups follow sparse_lr, not the dense learning rate
        if g["sparse"]:
            g["lr"] = lr

    def sparse_opt(gs: list[dict]) -> torch.optim.Optimizer:
        if kind == "rowwise_adagrad":
            return RowWiseAdagrad(gs, lr=lr)
        return torch.optim.SparseAdam(gs, lr=lr)

    return HybridOptimizer(groups, dense, sparse_opt)


def sparse_conflicts(keys: Sequence[str], *, combiner: str, manual_backward: bool, shared: str,
                     gradient_clip_val: Any) -> list[tuple[str, str]]:
    """Recipe settings that cannot train the sparse embedding tables of the encoders at ``keys``.

    * a gradient-level combiner (``manual_backward``) whose shared parameters include the
      encoders (``shared`` other than ``backbone``): it would densify one full-table gradient per
      task each step (fix: ``model.shared: backbone``, or drop ``sparse``);
    * gradient-norm clipping (``trainer.gradient_clip_val``): torch cannot take the norm of a
      sparse gradient.

    Returns:
        ``(recipe key, message)`` problems; empty when there is none. Used by recipe validation
        (on probe-built encoders) and by :func:`check_sparse_support` (on the real ones).
    """
    if not keys:
        return []
    where = ", ".join(f"{k} (sparse)" for k in keys)
    problems = []
    if manual_backward and shared != "backbone":
        problems.append(("combiner.name", (
            f"combiner '{combiner}' works on per-task gradients of the shared parameters (model.shared: "
            f"{shared}), which include the sparse embedding tables of {where}; it would "
            "build a dense full-table gradient per task every step. Set model.shared: backbone (the combiner "
            "then balances the backbone and the tables get ordinary sparse gradients), or drop sparse: true.")))
    if gradient_clip_val:
        problems.append(("trainer.gradient_clip_val", (
            f"gradient-norm clipping does not support the sparse gradients of {where}; remove "
            "trainer.gradient_clip_val or drop sparse: true.")))
    return problems


def check_sparse_support(recipe, encoders: Sequence[nn.Module], model: nn.Module, combiner) -> None:
    """Reject recipe settings that cannot train sparse embedding tables (see :func:`sparse_conflicts`).

    Raises:
        RecipeError: naming the encoder keys with sparse tables and the conflicting key.
    """
    keys = [f"model.encoders[{i}]" for i, enc in enumerate(encoders) if sparse_parameters(enc)]
    if not keys:
        return
    sparse_ids = {id(p) for p in sparse_parameters(model)}
    shares_sparse = any(id(p) in sparse_ids for p in model.shared_parameters())
    problems = sparse_conflicts(keys, combiner=recipe.config.combiner["name"],
                                manual_backward=combiner.requires_manual_backward and shares_sparse,
                                shared=recipe.config.model.shared,
                                gradient_clip_val=recipe.config.trainer.gradient_clip_val)
    if problems:
        raise RecipeError(problems, recipe.source, recipe.lines)
