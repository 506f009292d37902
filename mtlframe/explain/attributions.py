"""Per-task feature attributions with Integrated Gradients in the encoders' output space.

Sundararajan, Taly, Yan, "Axiomatic Attribution for Deep Networks", ICML 2017, through captum's
``IntegratedGradients`` (Kokhlikyan et al., 2020). Ids cannot be interpolated, so the path runs in
embedding space: from a baseline ``x'`` to the row's concatenated encoder output ``x [D]``
(:meth:`mtlframe.model.MultiTaskModel.encode`), through backbone and tower
(:meth:`~mtlframe.model.MultiTaskModel.forward_from`). Each feature's attribution is the sum over
the columns of ``x`` that encode it (:func:`mtlframe.retrieval.encoder_columns`, from the encoders'
``feature_slices()``).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from mtlframe.errors import MTLFrameError

#: the integration steps of Integrated Gradients (captum's Gauss-Legendre rule)
N_STEPS = 50
#: rows attributed together (each expands to ``N_STEPS`` interpolated rows)
CHUNK = 128


def feature_groups(encoders: Sequence[torch.nn.Module], width: int) -> list[tuple[str, torch.Tensor]]:
    """``[(label, columns of x)]``: each feature's columns; features that share columns (an encoder
    that mixes them, ``numeric`` with ``dim``) form one group labelled ``a + b``; columns no
    feature claims form ``(other)``."""
    from mtlframe.retrieval import encoder_columns

    groups: dict[tuple[int, ...], list[str]] = {}
    for feat, cols in encoder_columns(encoders).items():
        groups.setdefault(tuple(int(c) for c in cols), []).append(feat)
    out = [(" + ".join(feats), torch.tensor(cols, dtype=torch.long)) for cols, feats in groups.items()]
    claimed = torch.zeros(width, dtype=torch.bool)
    for _, cols in out:
        claimed[cols] = True
    if not bool(claimed.all()):
        out.append(("(other)", torch.nonzero(~claimed).reshape(-1)))
    return out


def integrated_gradients(model: torch.nn.Module, x: torch.Tensor, task: str, task_type: str,
                         baseline: torch.Tensor, n_steps: int = N_STEPS) -> dict:
    """Integrated Gradients of one task's output with respect to the encodings ``x``.

    The attributed output is the tower's raw output: the logit (binary), the value (regression),
    the logit of the row's predicted class (multiclass, the argmax at ``x``).

    Args:
        model: a :class:`~mtlframe.model.MultiTaskModel` in eval mode.
        x: ``[N, D]`` encodings of the rows.
        task: the task name.
        task_type: ``binary``, ``regression`` or ``multiclass``.
        baseline: ``[D]`` (or ``[1, D]``) the path's start ``x'``.
        n_steps: integration steps.

    Returns:
        ``{"attributions": [N, D], "delta": [N], "output": [N], "baseline_output": [N]}``: ``delta`` is
        captum's convergence delta, ``sum_d attr[n, d] - (f(x_n) - f(x'))`` (completeness: 0 up to the
        integration error).

    Raises:
        MTLFrameError: captum is not installed (``pip install 'mtlframe[explain]'``).
    """
    try:
        from captum.attr import IntegratedGradients
    except ImportError:  # pragma: no cover - the explain extra is in the test extra
        raise MTLFrameError("feature attributions need captum: pip install 'mtlframe[explain]'") from None

    def f(inp: torch.Tensor) -> torch.Tensor:
        return model.forward_from(inp)[task]                        # (n,) or (n, C)

    ig = IntegratedGradients(f)
    base = baseline.reshape(1, -1).to(x)
    attrs, deltas, outs, bouts = [], [], [], []
    for lo in range(0, x.shape[0], CHUNK):
        xb = x[lo:lo + CHUNK].detach()
        bb = base.expand_as(xb).contiguous()
        with torch.no_grad():
            out = f(xb)
            bout = f(bb)
        target = None
        if task_type == "multiclass":
            target = out.argmax(-1)                                 # (n,)
            out = out.gather(1, target[:, None]).squeeze(1)
            bout = bout.gather(1, target[:, None]).squeeze(1)
        a, d = ig.attribute(xb, baselines=bb, target=target, n_steps=n_steps, return_convergence_delta=True)
        attrs.append(a.detach())
        deltas.append(d.detach().reshape(-1))
        outs.append(out.detach())
        bouts.append(bout.detach())
    return {"attributions": torch.cat(attrs), "delta": torch.cat(deltas), "output": torch.cat(outs),
            "baseline_output": torch.cat(bouts)}


def summarize(ig: dict, groups: list[tuple[str, torch.Tensor]]) -> dict:
    """Per-feature attributions of one task, ranked by mean absolute value over the rows.

    Returns ``{"features": [{"feature", "mean_abs", "mean", "share"}], "completeness": {...}}``:
    ``share`` is the feature's part of the summed mean absolute attributions; ``completeness``
    gives the mean and max ``|delta|`` and the mean ``|f(x) - f(x')|`` they compare to.
    """
    a = ig["attributions"].double()                                  # (N, D)
    per = torch.stack([a[:, cols].sum(1) for _, cols in groups], dim=1)  # (N, G)
    mean_abs = per.abs().mean(0)
    total = float(mean_abs.sum()) or 1.0
    rows = [{"feature": name, "mean_abs": float(mean_abs[i]), "mean": float(per[:, i].mean()),
             "share": float(mean_abs[i]) / total} for i, (name, _) in enumerate(groups)]
    rows.sort(key=lambda r: -r["mean_abs"])
    delta = ig["delta"].double().abs()
    gap = (ig["output"] - ig["baseline_output"]).double().abs()
    return {"features": rows,
            "completeness": {"mean_abs_delta": float(delta.mean()), "max_abs_delta": float(delta.max()),
                             "mean_abs_output_change": float(gap.mean()),
                             "rows": int(a.shape[0])}}


def plot_attributions(task: str, summary: dict, what: str, path, top: int = 15) -> None:
    """Write a horizontal bar chart of the ``top`` features by mean |attribution| as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["features"][:top][::-1]
    fig, ax = plt.subplots(figsize=(6.0, 0.38 * len(rows) + 1.4))
    ax.barh([r["feature"] for r in rows], [r["mean_abs"] for r in rows],
            color=["#4c72b0" if r["mean"] >= 0 else "#c44e52" for r in rows])
    ax.set_xlabel(f"mean |attribution| ({what})")
    ax.set_title(f"{task}: Integrated Gradients per feature\n(blue: raises the output on average, red: lowers it)",
                 fontsize=9)
    ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
