"""Expert utilization of gated backbones: mean gate weight per expert per task, entropy, collapse.

The statistics of Tang et al., "Progressive Layered Extraction (PLE)", RecSys 2020, Figure 7
(expert utilization per task, a tasks x experts heatmap per extraction level), computed from the
gate weights every gated backbone stores after a forward
(:attr:`mtlframe.backbones.base.Backbone.gate_weights`, ``{gate: [B, E]}``).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

#: an expert is "collapsed" when its mean gate weight is below this for every gate that can select it
COLLAPSE_THRESHOLD = 0.01


@dataclass
class GateLayout:
    """Where one gate's columns sit among its group's experts.

    Attributes:
        group: the heatmap the gate belongs to (``""``: the backbone's only one; PLE: ``level1`` ...).
        row: the heatmap row label (a task name, or ``shared`` for a shared gate).
        columns: ``[E_gate]`` the expert label of each of the gate's columns.
        experts: every expert of the group, in the heatmap's column order.
    """

    group: str
    row: str
    columns: list[str]
    experts: list[str]


def _layer_experts(layer: nn.Module) -> list[str]:
    """Every expert of an :class:`~mtlframe.layers.ExtractionLayer`: task experts in task order, then shared."""
    names = [f"{t}:{i + 1}" for t in layer.task_names for i in range(len(layer.task_experts[t]))]
    return names + [f"shared:{i + 1}" for i in range(len(layer.shared_experts))]


def _layer_gate(layer: nn.Module, gate: str) -> list[str]:
    """The expert labels of an extraction layer's gate ``gate`` (a task, or ``shared``)."""
    every = _layer_experts(layer)
    if gate == "shared" or getattr(layer, "all_forward", False):
        return every
    return [n for n in every if n.split(":")[0] in (gate, "shared")]


def gate_layout(backbone: nn.Module, gates: Mapping[str, torch.Tensor]) -> dict[str, GateLayout]:
    """The layout of each of ``gates`` (a backbone's ``gate_weights``, ``{gate: [B, E]}``).

    Extraction-layer backbones (``cgc``, ``stem``: one layer; ``ple``: one per level, gates named
    ``level{l}/{task}`` and ``level{l}/shared``) label columns with the experts they select
    (``<task>:<i>`` own experts, ``shared:<i>``), so every gate of a level shares one set of
    columns. A backbone that names its columns (:meth:`~mtlframe.backbones.base.Backbone.gate_labels`;
    ``aitm``: ``transferred``, ``own``) gets its names; other gated backbones (``mmoe``, ``omoe``,
    ``dselect-k``, plugins) ``expert 1 .. E``. A gate name ``a/b`` is row ``b`` of group ``a``.
    """
    out: dict[str, GateLayout] = {}
    levels = getattr(backbone, "levels", None)
    single = getattr(backbone, "layer", None)
    for name, w in gates.items():
        group, _, row = name.rpartition("/")
        layer = None
        if levels is not None and group.startswith("level") and group[5:].isdigit():
            idx = int(group[5:]) - 1
            layer = levels[idx] if 0 <= idx < len(levels) else None
        elif single is not None and not group:
            layer = single
        cols = _layer_gate(layer, row) if layer is not None and hasattr(layer, "task_experts") else None
        named = getattr(backbone, "gate_labels", lambda n: None)(name)
        if named is not None and len(named) == w.shape[-1]:       # the backbone names the columns
            out[name] = GateLayout(group, row, list(named), list(named))
            continue
        if cols is None or len(cols) != w.shape[-1]:
            cols = [f"expert {i + 1}" for i in range(w.shape[-1])]
            out[name] = GateLayout(group, row, cols, cols)
        else:
            out[name] = GateLayout(group, row, cols, _layer_experts(layer))
    return out


@dataclass
class GateAccumulator:
    """Running sums of gate weights over batches (:meth:`add` after each forward).

    ``sums[gate]``: ``[E]`` summed weights; ``entropy_sums[gate]``: summed per-row entropies (nats);
    ``rows[gate]``: rows seen.
    """

    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    entropy_sums: dict[str, float] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    last: dict[str, torch.Tensor] = field(default_factory=dict)

    def add(self, gates: Mapping[str, torch.Tensor], rows: int | None = None) -> None:
        """Add one batch's gate weights ``{gate: [B, E]}`` (only the first ``rows`` rows when given)."""
        for name, w in gates.items():
            w = w.detach().double().cpu()[:rows]                    # (B, E)
            self.sums[name] = self.sums.get(name, 0) + w.sum(0)
            self.entropy_sums[name] = self.entropy_sums.get(name, 0.0) + float(_entropy(w).sum())
            self.rows[name] = self.rows.get(name, 0) + w.shape[0]
            self.last[name] = w[:1]


def _entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of each row of ``p [..., E]`` (0 log 0 = 0)."""
    return -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(-1)


def gate_statistics(backbone: nn.Module, acc: GateAccumulator,
                    threshold: float = COLLAPSE_THRESHOLD) -> dict:
    """Expert utilization from accumulated gate weights.

    Args:
        backbone: the model's backbone (for the expert labels, :func:`gate_layout`).
        acc: the gate weights of the analysed rows.
        threshold: an expert is collapsed when its mean weight is ``< threshold`` for every gate
            (task) that can select it.

    Returns:
        ``{"gates": {gate: {"group", "row", "experts": [E], "mean": [E], "entropy", "row_entropy",
        "max_entropy", "rows"}}, "groups": {group: {"rows": [...], "experts": [...],
        "matrix": [[mean or None]], "collapsed": [expert]}}, "threshold"}``. ``mean`` is the mean
        gate weight of each expert over the rows (sums to 1); ``entropy`` the entropy (nats) of that
        mean distribution (how many experts the task uses overall: ``exp(entropy)`` is the
        effective number); ``row_entropy`` the mean of each row's entropy (how peaked each row's
        gate is); ``max_entropy = ln E``. ``matrix`` is rows (gates) x experts, ``None`` where a
        gate cannot select an expert.
    """
    layout = gate_layout(backbone, acc.last)
    gates: dict[str, dict] = {}
    groups: dict[str, dict] = {}
    for name in acc.sums:
        lay = layout[name]
        mean = acc.sums[name] / max(acc.rows[name], 1)              # (E,)
        gates[name] = {"group": lay.group, "row": lay.row, "experts": lay.columns,
                       "mean": [float(v) for v in mean], "entropy": float(_entropy(mean)),
                       "row_entropy": acc.entropy_sums[name] / max(acc.rows[name], 1),
                       "max_entropy": math.log(len(lay.columns)) if lay.columns else 0.0,
                       "rows": acc.rows[name]}
        g = groups.setdefault(lay.group, {"rows": [], "experts": []})
        g["rows"].append(lay.row)
        g["experts"] += [c for c in lay.experts if c not in g["experts"]]
    for gname, g in groups.items():
        members = [n for n in gates if gates[n]["group"] == gname]
        g["matrix"] = [[None] * len(g["experts"]) for _ in members]
        for i, n in enumerate(members):
            for col, v in zip(gates[n]["experts"], gates[n]["mean"]):
                g["matrix"][i][g["experts"].index(col)] = v
        g["collapsed"] = [e for j, e in enumerate(g["experts"])
                          if all(row[j] is None or row[j] < threshold for row in g["matrix"])]
    return {"gates": gates, "groups": groups, "threshold": threshold}


def selector_statistics(backbone: nn.Module, x: torch.Tensor) -> dict[str, dict] | None:
    """DSelect-k's selectors (Hazimeh et al., NeurIPS 2021), per task: each selector's mean weight
    ``softmax(alpha)`` and mean distribution over experts ``r`` on the rows ``x [N, D]``, with the
    expert it picks (its argmax; exactly one once its smooth-steps reach 0 or 1).

    Returns ``{task: {"weights": [k], "experts": [[E] per selector], "picks": [expert index + 1]}}``,
    or ``None`` when no gate of the backbone has selectors.
    """
    gates = getattr(backbone, "gates", None)
    if not isinstance(gates, nn.ModuleDict) or not any(hasattr(g, "selectors") for g in gates.values()):
        return None
    out = {}
    with torch.no_grad():
        for t, g in gates.items():
            r, w = g.selectors(x)                                  # (N, k, E), (N, k)
            r, w = r.double().mean(0), w.double().mean(0)          # (k, E), (k,)
            out[t] = {"weights": [float(v) for v in w], "experts": [[float(v) for v in row] for row in r],
                      "picks": [int(row.argmax()) + 1 for row in r]}
    return out


def plot_heatmap(group: Mapping, title: str, path) -> None:
    """Write a tasks x experts heatmap of mean gate weights (``group`` from :func:`gate_statistics`)
    as a PNG at ``path``; blank cells: experts the gate cannot select; collapsed experts marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    m = np.array([[np.nan if v is None else v for v in row] for row in group["matrix"]], dtype=float)
    rows, cols = group["rows"], group["experts"]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(cols) + 2), max(2.2, 0.6 * len(rows) + 1.4)))
    im = ax.imshow(np.ma.masked_invalid(m), cmap="Blues", vmin=0.0, vmax=max(float(np.nanmax(m)), 1e-9)
                   if np.isfinite(m).any() else 1.0, aspect="auto")
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            if np.isfinite(m[i, j]):
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if m[i, j] > 0.6 * np.nanmax(m) else "black")
    labels = [c + (" (collapsed)" if c in group["collapsed"] else "") for c in cols]
    ax.set_xticks(range(len(cols)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=9)
    ax.set_xlabel("expert")
    ax.set_ylabel("gate (task)")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, label="mean gate weight")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


