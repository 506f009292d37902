"""Task relations: correlation of task predictions and cosine of per-task gradients on shared parameters.

The gradient cosine is the conflict measure of Yu, Kumar, Gupta, Levine, Hausman, Finn, "Gradient
Surgery for Multi-Task Learning" (PCGrad), NeurIPS 2020: two tasks conflict on the shared
parameters when their loss gradients have a negative cosine. :class:`TaskGradientCosine` logs it
during training (recipe key ``track.task_gradients``).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn


def prediction_correlation(preds: Mapping[str, np.ndarray]) -> dict[str, dict[str, float | None]]:
    """Pearson correlation of every pair of task predictions over the same rows.

    Args:
        preds: ``{task: [N]}`` predictions (probabilities, values).

    Returns:
        ``{a: {b: r}}`` for every pair (``None`` when a task's predictions are constant).
    """
    names = list(preds)
    out: dict[str, dict[str, float | None]] = {a: {} for a in names}
    for a in names:
        for b in names:
            x, y = np.asarray(preds[a], np.float64), np.asarray(preds[b], np.float64)
            if x.std() == 0 or y.std() == 0:
                out[a][b] = None
            else:
                out[a][b] = float(np.corrcoef(x, y)[0, 1])
    return out


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``<a, b>`` for dense or sparse (COO, from sparse embedding tables) gradients."""
    if a.is_sparse or b.is_sparse:
        a = a.coalesce() if a.is_sparse else a.to_sparse()
        b = b.coalesce() if b.is_sparse else b.to_sparse()
        return (a * b).coalesce().values().double().sum()
    return (a.double() * b.double()).sum()


def gradient_cosines(grads: Mapping[str, Sequence[torch.Tensor | None]]) -> dict[str, dict[str, float | None]]:
    """Cosine of every pair of per-task gradients.

    Args:
        grads: ``{task: [gradient of each shared parameter]}`` (``None``: the task does not reach it,
            a zero gradient).

    Returns:
        ``{a: {b: cos}}``; ``None`` for a task whose gradient is zero.
    """
    names = list(grads)
    norms = {t: math.sqrt(sum(float(_dot(g, g)) for g in grads[t] if g is not None)) for t in names}
    out: dict[str, dict[str, float | None]] = {a: {} for a in names}
    for i, a in enumerate(names):
        for b in names[i:]:
            if norms[a] == 0 or norms[b] == 0:
                c = None
            else:
                dot = sum(float(_dot(ga, gb)) for ga, gb in zip(grads[a], grads[b])
                          if ga is not None and gb is not None)
                c = dot / (norms[a] * norms[b])
            out[a][b] = out[b][a] = c
    return out


def task_gradients(module: Any, batch: Mapping[str, torch.Tensor], params: Sequence[nn.Parameter],
                   tasks: Iterable[str] | None = None, *, training_batch: bool = True
                   ) -> dict[str, list[torch.Tensor | None]]:
    """Each task's gradient of its summed row loss on ``params``, for one batch.

    Uses the training losses (:meth:`mtlframe.module.MultiTaskModule.task_loss_sums`); the model
    runs as it is (train or eval mode). ``.grad`` of the parameters is left untouched
    (``torch.autograd.grad``), so it can run between training steps. Unlike the combiners'
    :func:`~mtlframe.combiners._grad.flat_grad`, gradients stay per parameter and sparse ones
    (sparse embedding tables) stay sparse: no dense copy of a large table per task.

    ``training_batch``: the batch is a training batch (it carries the item codes a retrieval task's
    model-side negative sampler needs); with ``False`` (evaluation batches) retrieval tasks are
    left out.

    Returns ``{task: [grad or None per parameter]}`` for the tasks (default all) with at least one
    labelled row in the batch.
    """
    model = module.model
    x = model.encode(batch)
    vectors: dict[str, Any] | None = {} if training_batch else None
    outputs = model.forward_from(x, vectors)
    sums, counts = module.task_loss_sums(batch, outputs, vectors)
    wanted = set(tasks) if tasks is not None else None
    chosen = [(t.name, s) for t, s, c in zip(module.tasks, sums, counts.tolist())
              if c > 0 and (wanted is None or t.name in wanted) and (training_batch or t.type != "retrieval")]
    out: dict[str, list[torch.Tensor | None]] = {}
    for i, (name, s) in enumerate(chosen):
        g = torch.autograd.grad(s, params, retain_graph=i < len(chosen) - 1, allow_unused=True)
        out[name] = [None if v is None else v.detach() for v in g]
    return out


def add_gradients(total: dict[str, list], new: Mapping[str, Sequence[torch.Tensor | None]]) -> None:
    """``total[task][i] += new[task][i]`` (in place; ``None`` is zero)."""
    for t, gs in new.items():
        cur = total.setdefault(t, [None] * len(gs))
        for i, g in enumerate(gs):
            if g is not None:
                cur[i] = g.clone() if cur[i] is None else cur[i] + g


def shared_parameter_list(model: nn.Module) -> list[nn.Parameter]:
    """The model's shared parameters that train, each once (``model.shared``: encoders and/or the
    backbone's shared part, :meth:`~mtlframe.model.MultiTaskModel.shared_parameters`)."""
    from mtlframe.combiners._grad import unique_trainable

    return unique_trainable(model.shared_parameters())


def plot_relations(corr: Mapping, cos: Mapping | None, path) -> None:
    """Write the prediction-correlation and gradient-cosine matrices side by side as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(title, mat) for title, mat in (("Pearson r of predictions", corr),
                                              ("cosine of task gradients\n(shared parameters)", cos))
              if mat and len(mat) > 1]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.8), squeeze=False)
    for ax, (title, mat) in zip(axes[0], panels):
        names = list(mat)
        m = np.array([[np.nan if mat[a].get(b) is None else mat[a][b] for b in names] for a in names], float)
        im = ax.imshow(np.ma.masked_invalid(m), cmap="RdBu_r", vmin=-1, vmax=1)
        for i in range(len(names)):
            for j in range(len(names)):
                if np.isfinite(m[i, j]):
                    ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=8,
                            color="white" if abs(m[i, j]) > 0.6 else "black")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _callback_base():
    import pytorch_lightning as pl
    return pl.Callback


class TaskGradientCosine(_callback_base()):
    """Log the cosine of every pair of task gradients on the shared parameters every N steps.

    Enabled by the recipe key ``track: {task_gradients: {every_n_steps: N}}``; logged as
    ``train/grad_cos/<task_a>~<task_b>`` (tasks in recipe order, ``a`` before ``b``). At every
    N-th optimizer step (``global_step % N == 0``, before the step), the training batch is run
    once more through the model in eval mode (no dropout; batch norm reads its running
    statistics), each task's summed row loss is differentiated with ``torch.autograd.grad`` on
    the shared parameters (``model.shared``: :meth:`~mtlframe.model.MultiTaskModel.shared_parameters`),
    and the pairwise cosines are logged. The random number generators (torch's and the negative
    sampler's) are restored and ``.grad`` is untouched, so training is the same with and
    without it, for automatic and manual-optimization (gradient-level) combiners alike.

    Cost: one forward and ``T`` backward passes every N steps; nothing when the key is absent
    (no callback is added). Under DDP each process measures its own batch and process 0's
    values are logged.

    Raises:
        ValueError: ``every_n_steps < 1``.
    """

    def __init__(self, every_n_steps: int = 100) -> None:
        super().__init__()
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = int(every_n_steps)
        #: the cosines of the last measurement ``{"a~b": cos}`` (for tests and inspection)
        self.last: dict[str, float] = {}
        self._measured = -1

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if step % self.every_n_steps or step == self._measured:  # once per step (gradient accumulation)
            return
        self._measured = step
        model = pl_module.model
        params = shared_parameter_list(model)
        if not params:
            return
        modes = {m: m.training for m in model.modules()}
        gen = getattr(pl_module, "_negative_generator", None)
        gen_state = gen.get_state() if gen is not None else None
        devices = [batch_device(batch)] if batch_device(batch).type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices), torch.enable_grad():
                model.eval()
                grads = task_gradients(pl_module, batch, params)
        finally:
            for m, mode in modes.items():
                m.train(mode)
            if gen is not None:
                gen.set_state(gen_state)
        cos = gradient_cosines(grads)
        names = [t.name for t in pl_module.tasks if t.name in grads]
        self.last = {f"{a}~{b}": cos[a][b] for i, a in enumerate(names) for b in names[i + 1:]
                     if cos[a][b] is not None}
        # straight to the loggers, at this step only (``self.log`` from a callback would repeat the
        # value at the steps in between)
        metrics = {f"train/grad_cos/{k}": v for k, v in self.last.items()}
        for logger in trainer.loggers if metrics else ():
            logger.log_metrics(metrics, step=trainer.global_step)


def batch_device(batch: Mapping[str, torch.Tensor]) -> torch.device:
    return next(iter(batch.values())).device


