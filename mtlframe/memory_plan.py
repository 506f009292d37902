"""Memory plan at the start of training: weights, gradients and optimizer state, per embedding table.

Before the first step, :func:`report` prints how much memory the model's parameters will hold
during training and warns when that exceeds a fraction of the device's memory, naming the
largest embedding tables and what shrinks them. The estimate counts, per parameter of ``n``
elements of ``b`` bytes (4 for float32):

* weights: ``n * b``;
* gradients: ``n * b`` for a trainable dense parameter; ``0`` for a sparse table
  (``sparse: true``: a step's gradient holds only the batch's rows) and a frozen parameter;
* optimizer state (see :mod:`mtlframe.optim`), in elements per weight element: Adam/AdamW 2
  (``exp_avg``, ``exp_avg_sq``), Adagrad 1 (``sum``), SGD 1 with ``momentum > 0`` else 0; a
  sparse table under ``sparse_adam`` (``auto`` under Adam/AdamW) 2, under ``rowwise_adagrad``
  ``1 / d`` (one float per row), under ``auto`` with Adagrad/SGD as the dense optimizer.

Tensors an encoder keeps outside its parameters (the frozen text encoder's table of cached
embeddings or token states) are counted when the encoder has a ``memory_tables()`` method
returning ``{name: (shape, bytes, fix)}`` (``fix``: what shrinks it, or ``None``): weights only.
An encoder that trains its tables with its own optimizer (``torchrec-embedding``) has a
``table_memory(weight) -> (weight bytes, gradient bytes, state bytes, kind)`` method used instead
of the recipe optimizer's accounting for each of its tables.
Activations (they scale with the batch size) and per-step scalars are left out.

The device memory is the CUDA device's total memory when training will run on a GPU
(``trainer.accelerator`` ``auto``/``gpu``/``cuda`` and CUDA available), else the system's
physical memory. The warning threshold is ``trainer.memory_warn_fraction`` (default 0.5).
"""
from __future__ import annotations

import inspect
import logging
import os
import re
import sys
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from mtlframe.optim import sparse_parameters

log = logging.getLogger(__name__)

__all__ = ["MemoryPlan", "MemoryRow", "device_memory", "estimate", "format_bytes", "plan_lines", "report"]


@dataclass(frozen=True)
class MemoryRow:
    """One line of the plan: an embedding table, or every other parameter together.

    Attributes:
        name: the table (``model.encoders[0] fused.table``) or ``other parameters``.
        shape: the table's ``[rows, d]`` (empty for the other parameters).
        numel: elements.
        weights, grads, state: bytes of weights, gradients and optimizer state.
        kind: how it is trained (``dense adam``, ``sparse rowwise_adagrad``, ``frozen``...).
        encoder: index of the encoder in ``model.encoders`` that owns the table, or ``None``.
        params: the owning encoder's constructor parameters (which fixes apply: ``sparse``, ``dim``).
    """

    name: str
    shape: tuple[int, ...]
    numel: int
    weights: int
    grads: int
    state: int
    kind: str
    encoder: int | None = None
    params: frozenset[str] = frozenset()
    fix: str | None = None

    @property
    def total(self) -> int:
        return self.weights + self.grads + self.state


@dataclass(frozen=True)
class MemoryPlan:
    """Estimated training memory of a model's parameters (bytes); ``rows``: tables first, largest first."""

    rows: tuple[MemoryRow, ...]

    @property
    def total(self) -> int:
        return sum(r.total for r in self.rows)


def _state_per_element(name: str, momentum: float) -> float:
    return {"adam": 2.0, "adamw": 2.0, "adagrad": 1.0}.get(name, 1.0 if momentum > 0 else 0.0)


def estimate(model: nn.Module, optimizer) -> MemoryPlan:
    """The memory plan of ``model`` trained with ``optimizer`` (a recipe's ``optimizer`` section:
    ``name``, ``momentum``, ``sparse_optimizer``). See the module docstring for what is counted."""
    sparse_ids = {id(p) for p in sparse_parameters(model)}
    dense_state = _state_per_element(optimizer.name, optimizer.momentum)
    kind = getattr(optimizer, "sparse_optimizer", "auto")
    if kind == "auto":
        kind = "sparse_adam" if optimizer.name in ("adam", "adamw") else optimizer.name
    rows: list[MemoryRow] = []
    seen: set[int] = set()

    def account(p: torch.Tensor) -> tuple[int, int, int, str]:
        b = p.element_size() * p.numel()
        if not p.requires_grad:
            return b, 0, 0, "frozen"
        if id(p) in sparse_ids:
            per = {"sparse_adam": 2.0, "rowwise_adagrad": 1.0 / max(p.shape[-1], 1)}.get(
                kind, _state_per_element(kind, optimizer.momentum))
            return b, 0, int(round(b * per)), f"sparse {kind}"
        return b, b, int(round(b * dense_state)), f"dense {optimizer.name}"

    for mod_name, mod in model.named_modules():
        if not isinstance(mod, (nn.Embedding, nn.EmbeddingBag)) or id(mod.weight) in seen:
            continue
        seen.add(id(mod.weight))
        m = re.match(r"^encoders\.(\d+)\.(.*)$", mod_name)
        enc = int(m.group(1)) if m else None
        # an encoder that trains its tables itself (an optimizer in the backward pass) says what that costs
        own = getattr(model.encoders[enc], "table_memory", None) if m else None
        w, g, s, how = own(mod.weight) if callable(own) else account(mod.weight)
        label = f"model.encoders[{enc}] {m.group(2)}" if m else (mod_name or "embedding")
        params = frozenset(inspect.signature(type(model.encoders[enc]).__init__).parameters) if m else frozenset()
        rows.append(MemoryRow(label, tuple(mod.weight.shape), mod.weight.numel(), w, g, s, how, enc, params))
    for i, enc in enumerate(getattr(model, "encoders", [])):
        extra = getattr(enc, "memory_tables", None)
        for name, (shape, nbytes, fix) in (extra() if callable(extra) else {}).items():
            numel = 1
            for d in shape:
                numel *= int(d)
            rows.append(MemoryRow(f"model.encoders[{i}] {name}", tuple(int(d) for d in shape), numel, int(nbytes),
                                  0, 0, "cached, not trained", i, frozenset(), fix))
    rows.sort(key=lambda r: -r.total)
    rest = [p for p in model.parameters() if id(p) not in seen]
    if rest:
        parts = [account(p) for p in rest]
        rows.append(MemoryRow("other parameters", (), sum(p.numel() for p in rest), sum(x[0] for x in parts),
                              sum(x[1] for x in parts), sum(x[2] for x in parts),
                              " + ".join(sorted({x[3] for x in parts}))))
    return MemoryPlan(tuple(rows))


def device_memory(accelerator: str = "auto") -> tuple[int, str]:
    """``(bytes, what)``: the GPU's total memory when training runs on CUDA, else the system's RAM."""
    if str(accelerator) in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        # torchrun and Lightning set LOCAL_RANK; srun sets SLURM_LOCALID (Lightning reads it later)
        local = os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0"))
        index = int(local) % max(torch.cuda.device_count(), 1)
        props = torch.cuda.get_device_properties(index)
        return int(props.total_memory), f"GPU memory ({props.name})"
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")), "system RAM"
    except (ValueError, OSError, AttributeError):  # pragma: no cover - no sysconf
        with open("/proc/meminfo", encoding="ascii") as fh:
            kb = next(int(line.split()[1]) for line in fh if line.startswith("MemTotal:"))
        return kb * 1024, "system RAM"


def format_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"`` (binary units)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def _fix(row: MemoryRow) -> str:
    key = f"model.encoders[{row.encoder}]" if row.encoder is not None else "its encoder"
    fixes = [row.fix] if row.fix else []
    if row.kind.startswith("dense") and "sparse" in row.params:
        fixes.append(f"sparse: true on {key} (no full-table gradient; with optimizer.sparse_optimizer: "
                     "rowwise_adagrad the optimizer keeps one float per row)")
    elif row.kind == "sparse sparse_adam":
        fixes.append("optimizer.sparse_optimizer: rowwise_adagrad (one float per row instead of 2 per element)")
    if "dim" in row.params:
        fixes.append(f"a smaller dim on {key}")
    if "sparse" in row.params:
        fixes.append("fewer rows (data.min_count maps rare categories to the out-of-vocabulary row)")
    return ", ".join(fixes) or "a smaller model"


def plan_lines(plan: MemoryPlan, capacity: int, where: str, fraction: float, top: int = 5) -> list[str]:
    """The plan as printed: a header, one line per table (the ``top`` largest) and the total."""
    out = ["memory plan (weights + gradients + optimizer state):"]
    shown = [r for r in plan.rows if r.shape][:top]
    hidden = [r for r in plan.rows if r.shape][top:]
    for r in [*shown, *(r for r in plan.rows if not r.shape)]:
        shape = "[" + " x ".join(f"{s:,}" for s in r.shape) + "]" if r.shape else f"{r.numel:,} values"
        out.append(f"  {r.name:<36} {shape:<18} {r.kind:<22} {format_bytes(r.weights)} + {format_bytes(r.grads)} + "
                   f"{format_bytes(r.state)} = {format_bytes(r.total)}")
    if hidden:
        out.append(f"  ({len(hidden)} smaller tables: {format_bytes(sum(r.total for r in hidden))})")
    share = plan.total / capacity if capacity else float("nan")
    out.append(f"  total {format_bytes(plan.total)} = {share:.1%} of {format_bytes(capacity)} {where} "
               f"(warning above {fraction:.0%}: trainer.memory_warn_fraction)")
    return out


def report(model: nn.Module, config, *, capacity: int | None = None, file=None, quiet: bool = False) -> MemoryPlan:
    """Print the memory plan of ``model`` under the recipe ``config`` and warn when it is too large.

    Args:
        model: the multi-task model (``model.encoders`` names the tables).
        config: the recipe's :class:`~mtlframe.recipe.RecipeConfig` (``optimizer``;
            ``trainer.accelerator`` picks the device; ``trainer.memory_warn_fraction`` the threshold).
        capacity: device memory in bytes (default: :func:`device_memory`).
        file: where to print (default ``sys.stdout``); nothing is printed on ranks other than 0.
        quiet: log the plan (``logging``, INFO) instead of printing it (``train(progress=False)``,
            as ``compare`` runs it); the warning is given either way.

    Warns:
        UserWarning: the plan exceeds ``memory_warn_fraction`` of the device memory; names the
        largest tables (by recipe key) and the fix for each.

    Returns:
        The :class:`MemoryPlan`.
    """
    plan = estimate(model, config.optimizer)
    fraction = float(getattr(config.trainer, "memory_warn_fraction", 0.5))
    where = "device memory"
    if capacity is None:
        capacity, where = device_memory(config.trainer.accelerator)
    # the process's global rank from torchrun's, Lightning's or SLURM's variables (before the trainer exists)
    from lightning_fabric.utilities.rank_zero import _get_rank

    if (_get_rank() or 0) == 0:
        text = "\n".join(plan_lines(plan, capacity, where, fraction))
        log.info(text)
        if not quiet:
            print(text, file=file or sys.stdout, flush=True)
        if plan.total > fraction * capacity:
            tables = [r for r in plan.rows if r.shape] or list(plan.rows)
            # the largest tables that together make up most of the plan (at least one)
            named, acc = [], 0
            for r in tables:
                named.append(r)
                acc += r.total
                if acc >= 0.8 * plan.total or len(named) == 3:
                    break
            detail = "; ".join(f"{r.name} [{' x '.join(f'{s:,}' for s in r.shape)}] {format_bytes(r.total)} "
                               f"({r.kind}) - fix: {_fix(r)}" for r in named)
            warnings.warn(f"memory plan: the parameters need about {format_bytes(plan.total)} for training, "
                          f"{plan.total / capacity:.0%} of the {format_bytes(capacity)} {where} (more than "
                          f"trainer.memory_warn_fraction={fraction:g}). Largest: {detail}.", UserWarning, stacklevel=2)
    return plan
