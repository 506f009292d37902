"""Calibration of binary tasks: reliability diagram and expected calibration error (ECE).

ECE as in Naeini, Cooper, Hauskrecht, "Obtaining Well Calibrated Probabilities Using Bayesian
Binning", AAAI 2015, and Guo, Pleiss, Sun, Weinberger, "On Calibration of Modern Neural
Networks", ICML 2017 (Eq. 3), on the positive-class probability of a binary task.
"""
from __future__ import annotations

import numpy as np

#: equal-width probability bins of the ECE and the reliability diagram
NUM_BINS = 15


def reliability(prob: np.ndarray, label: np.ndarray, bins: int = NUM_BINS) -> dict:
    """Equal-width binning of predicted probabilities and the expected calibration error.

    .. math:: \\mathrm{ECE} = \\sum_{b=1}^{M} \\frac{n_b}{N} \\,\\lvert \\bar y_b - \\bar p_b \\rvert

    with ``M = bins`` bins ``[0, 1/M), [1/M, 2/M), ..., [(M-1)/M, 1]`` (the last one closed), ``n_b``
    the rows in bin ``b``, ``\\bar y_b`` their positive rate and ``\\bar p_b`` their mean predicted
    probability. Empty bins contribute 0.

    Args:
        prob: ``[N]`` predicted probabilities of the positive class, in ``[0, 1]``.
        label: ``[N]`` labels, 0 or 1.
        bins: number of bins ``M`` (>= 1).

    Returns:
        ``{"ece", "bins", "edges": [M+1], "count": [M], "confidence": [M] (None when empty),
        "accuracy": [M] (positive rate; None when empty), "rows"}``.

    Raises:
        ValueError: ``bins < 1``, shapes differ, or a probability outside ``[0, 1]``.
    """
    prob = np.asarray(prob, dtype=np.float64).reshape(-1)
    label = np.asarray(label, dtype=np.float64).reshape(-1)
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    if prob.shape != label.shape:
        raise ValueError(f"prob {prob.shape} and label {label.shape} differ in shape")
    if prob.size and (prob.min() < 0 or prob.max() > 1):
        raise ValueError("probabilities must lie in [0, 1]")
    idx = np.minimum((prob * bins).astype(np.int64), bins - 1)      # (N,) bin of each row
    count = np.bincount(idx, minlength=bins).astype(np.float64)
    conf_sum = np.bincount(idx, weights=prob, minlength=bins)
    acc_sum = np.bincount(idx, weights=label, minlength=bins)
    safe = np.maximum(count, 1)
    conf, acc = conf_sum / safe, acc_sum / safe
    n = max(prob.size, 1)
    ece = float(np.sum(count / n * np.abs(acc - conf)))
    return {"ece": ece, "bins": bins, "edges": [i / bins for i in range(bins + 1)],
            "count": [int(c) for c in count],
            "confidence": [float(c) if k else None for c, k in zip(conf, count)],
            "accuracy": [float(a) if k else None for a, k in zip(acc, count)], "rows": int(prob.size)}


def plot_reliability(task: str, rel: dict, path) -> None:
    """Write the reliability diagram of ``rel`` (:func:`reliability`) as a PNG at ``path``:
    positive rate per bin against the diagonal, with the rows per bin below."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = rel["bins"]
    centers = [(rel["edges"][i] + rel["edges"][i + 1]) / 2 for i in range(m)]
    fig, (ax, bx) = plt.subplots(2, 1, figsize=(4.6, 5.2), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfectly calibrated")
    xs = [c for c, k in zip(centers, rel["count"]) if k]
    ys = [a for a in rel["accuracy"] if a is not None]
    ps = [p for p in rel["confidence"] if p is not None]
    ax.bar(xs, ys, width=1.0 / m, edgecolor="black", color="#4c72b0", alpha=0.8, label="positive rate")
    ax.plot(ps, ys, "o", color="#dd8452", ms=4, label="(mean prediction, positive rate)")
    ax.set_ylim(0, 1)
    ax.set_ylabel("observed positive rate")
    ax.set_title(f"{task}: ECE {rel['ece']:.4f} ({m} bins, {rel['rows']:,} rows)", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    bx.bar(centers, rel["count"], width=1.0 / m, color="grey", edgecolor="black")
    bx.set_xlim(0, 1)
    bx.set_xlabel("predicted probability")
    bx.set_ylabel("rows")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
