"""Synthetic multi-task data with a controlled task correlation (the MMoE paper's generator).

Reference: Ma, Zhao, Yi, Chen, Hong, Chi, "Modeling Task Relationships in Multi-task Learning
with Multi-gate Mixture-of-Experts", KDD 2018, sec. 3.2. Generated here; no licence applies.

For ``d = num_features`` input dimensions:

1. Draw orthonormal unit vectors ``u_1 .. u_K`` in R^d (QR of a Gaussian matrix), ``K = num_tasks``.
2. Task weights ``w_1 = c u_1`` and ``w_k = c (p u_1 + sqrt(1 - p^2) u_k)`` for ``k >= 2``, with
   ``c = scale`` and ``p = correlation``. So ``cos(w_1, w_k) = p``; for two tasks this is the
   paper's construction exactly. With more than two tasks every task correlates ``p`` with the
   first and ``p^2`` with each other.
3. ``x ~ N(0, I_d)``.
4. ``y_k = w_k^T x + sum_{i=1..m} sin(alpha_i w_k^T x + beta_i) + eps_k``, ``m = sine_terms``,
   with ``alpha_i, beta_i ~ N(0, 1)`` drawn once and shared by all tasks (the paper calls them
   given shape parameters without fixing them) and ``eps_k ~ N(0, noise_std^2)`` (paper: 0.01
   variance, i.e. ``noise_std = 0.1``).

Because ``x`` is standard normal and the ``u`` are orthonormal, the Pearson correlation of the
linear parts ``w_1^T x`` and ``w_k^T x`` is ``p``; the sine terms make the label correlation
differ from ``p`` somewhat, which is the point of the paper's experiment.

Optional categorical columns ``cat_0 .. cat_{J-1}`` hold ids in ``[0, categorical_cardinality)``
drawn from a truncated Zipf law ``P(id = r) ~ 1 / (r + 1)^s`` (``s = zipf_exponent``), as in
recommendation logs. Each id carries a per-task effect added to ``y_k``: effect tables with the
same correlation structure as the weights (``e_k = p e_1 + sqrt(1-p^2) e'_k``), scaled by
``categorical_effect`` (0 makes them pure noise features).

Columns: numeric features ``x_000 .. x_{d-1}`` (zero-padded so they sort in order), categorical
features ``cat_*``; regression labels ``task_0 .. task_{K-1}`` and binary labels
``task_k_bin = 1.0 if y_k > median(y_k)``. ``Table.extra`` holds ``weights`` (``[K, d]``),
``alpha``, ``beta`` (``[m]``) and ``categorical_effects`` (``[J, K, cardinality]`` float32, or
``None`` with ``keep_effects=False``).

Memory: columns are float32 (numeric features and labels) and int32 (ids), each its own array
(so deleting a column from the frame frees it); the frame wraps them without copying. 10 M rows of 100 features take about 4 GB. The effect
tables take ``J * K * cardinality * 4`` bytes (240 MB for 20 columns, 3 tasks and 10^6 ids)
whatever the row count; ``keep_effects=False`` builds one column's table at a time and keeps none.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd

from mtlframe.datasets.base import RecDataset, Table
from mtlframe.errors import DataError

__all__ = ["Synthetic"]

_CHUNK = 1 << 20  # rows per block when computing labels, to bound temporaries


class Synthetic(RecDataset):
    """MMoE-style synthetic regression tasks with a chosen correlation.

    Args:
        num_rows: examples to generate.
        correlation: ``p`` in [-1, 1], the cosine between task 0's weights and every other task's.
        num_tasks: ``K >= 1`` regression tasks (``K <= num_features``).
        num_features: ``d``, the numeric input width.
        num_categorical: Zipf-distributed categorical columns to add.
        categorical_cardinality: ids per categorical column.
        zipf_exponent: ``s > 0`` of the Zipf law (larger: more skewed).
        categorical_effect: standard deviation of each id's per-task effect on the labels.
        sine_terms: ``m``, the number of sinusoidal terms.
        noise_std: standard deviation of the label noise.
        scale: ``c``, the norm of the weight vectors.
        seed: random seed; equal arguments give identical data.
        keep_effects: keep the per-id effect tables in ``Table.extra["categorical_effects"]``
            (the data is the same either way).
    """

    def __init__(self, num_rows: int = 20000, correlation: float = 0.5, num_tasks: int = 2,
                 num_features: int = 100, num_categorical: int = 0,
                 categorical_cardinality: int = 1000, zipf_exponent: float = 1.1,
                 categorical_effect: float = 0.5, sine_terms: int = 10, noise_std: float = 0.1,
                 scale: float = 1.0, seed: int = 0, keep_effects: bool = True) -> None:
        problems = []
        if num_rows < 1:
            problems.append(f"num_rows must be >= 1, got {num_rows}")
        if not -1.0 <= correlation <= 1.0:
            problems.append(f"correlation must be in [-1, 1], got {correlation}")
        if num_tasks < 1:
            problems.append(f"num_tasks must be >= 1, got {num_tasks}")
        if num_features < max(num_tasks, 1):
            problems.append(f"num_features ({num_features}) must be >= num_tasks ({num_tasks}) "
                            "to draw orthogonal task directions")
        if num_categorical < 0:
            problems.append(f"num_categorical must be >= 0, got {num_categorical}")
        if categorical_cardinality < 1:
            problems.append(f"categorical_cardinality must be >= 1, got {categorical_cardinality}")
        if zipf_exponent <= 0:
            problems.append(f"zipf_exponent must be > 0, got {zipf_exponent}")
        if sine_terms < 0 or noise_std < 0 or categorical_effect < 0:
            problems.append("sine_terms, noise_std and categorical_effect must be >= 0")
        if problems:
            raise DataError("synthetic dataset: " + "; ".join(problems))
        self.num_rows = int(num_rows)
        self.correlation = float(correlation)
        self.num_tasks = int(num_tasks)
        self.num_features = int(num_features)
        self.num_categorical = int(num_categorical)
        self.categorical_cardinality = int(categorical_cardinality)
        self.zipf_exponent = float(zipf_exponent)
        self.categorical_effect = float(categorical_effect)
        self.sine_terms = int(sine_terms)
        self.noise_std = float(noise_std)
        self.scale = float(scale)
        self.seed = int(seed)
        self.keep_effects = bool(keep_effects)

    def feature_names(self) -> list[str]:
        """``x_000 .. x_{d-1}`` (width at least 3 digits)."""
        width = max(3, len(str(self.num_features - 1)))
        return [f"x_{i:0{width}d}" for i in range(self.num_features)]

    def task_weights(self, rng: np.random.Generator) -> np.ndarray:
        """``[K, d]`` float64 weights ``w_k`` built from orthonormal ``u_k`` (see module doc)."""
        q, _ = np.linalg.qr(rng.standard_normal((self.num_features, self.num_tasks)))
        u = q.T  # [K, d], orthonormal rows
        p = self.correlation
        w = np.empty_like(u)
        w[0] = u[0]
        if self.num_tasks > 1:
            w[1:] = p * u[0] + np.sqrt(1.0 - p * p) * u[1:]
        return self.scale * w

    def _zipf_ids(self, rng: np.random.Generator, n: int) -> np.ndarray:
        ranks = np.arange(1, self.categorical_cardinality + 1, dtype=np.float64)
        cdf = np.cumsum(ranks ** -self.zipf_exponent)
        cdf /= cdf[-1]
        ids = np.searchsorted(cdf, rng.random(n, dtype=np.float64), side="right")
        return np.minimum(ids, self.categorical_cardinality - 1).astype(np.int32)

    def _inputs(self, n: int, d: int) -> list[np.ndarray]:
        """``x`` as ``d`` float32 ``[n]`` arrays, one allocation each (the data module frees each
        column as soon as it is preprocessed, which a view of one ``[d, n]`` block would prevent).

        Each feature has its own generator spawned from ``seed``, filled on a thread pool
        (numpy releases the GIL while filling), so the result does not depend on the thread count.
        """
        x = [np.empty(n, dtype=np.float32) for _ in range(d)]
        children = np.random.SeedSequence([self.seed, 1]).spawn(d)

        def fill(j: int) -> None:
            np.random.default_rng(children[j]).standard_normal(out=x[j], dtype=np.float32)

        workers = min(8, os.cpu_count() or 1, d)
        if workers > 1 and n * d >= 1_000_000:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(fill, range(d)))
        else:
            for j in range(d):
                fill(j)
        return x

    def load(self) -> Table:
        n, d, k, m = self.num_rows, self.num_features, self.num_tasks, self.sine_terms
        rng = np.random.default_rng(self.seed)
        w = self.task_weights(rng)
        alpha = rng.standard_normal(m)
        beta = rng.standard_normal(m)
        x = self._inputs(n, d)
        w32 = w.astype(np.float32)
        y = np.empty((k, n), dtype=np.float32)
        for lo in range(0, n, _CHUNK):
            hi = min(n, lo + _CHUNK)
            lin = w32 @ np.stack([col[lo:hi] for col in x])  # [K, chunk]
            out = lin.copy()
            for a, b in zip(alpha.astype(np.float32), beta.astype(np.float32)):
                out += np.sin(a * lin + b)
            y[:, lo:hi] = out
        if self.noise_std > 0:
            y += self.noise_std * rng.standard_normal((k, n), dtype=np.float32)

        cats: dict[str, np.ndarray] = {}
        shape = (self.num_categorical, k, self.categorical_cardinality)
        effects = np.zeros(shape, np.float32) if self.keep_effects else None
        p = self.correlation
        for j in range(self.num_categorical):
            ids = self._zipf_ids(rng, n)
            base = rng.standard_normal(self.categorical_cardinality)
            own = rng.standard_normal((k, self.categorical_cardinality))
            table = np.empty((k, self.categorical_cardinality))
            table[0] = base
            table[1:] = p * base + np.sqrt(1.0 - p * p) * own[1:]
            effect = (self.categorical_effect * table).astype(np.float32)
            del base, own, table
            if effects is not None:
                effects[j] = effect
            if self.categorical_effect > 0:
                for lo in range(0, n, _CHUNK):
                    y[:, lo:lo + _CHUNK] += effect[:, ids[lo:lo + _CHUNK]]
            cats[f"cat_{j}"] = ids

        names = self.feature_names()
        columns: dict[str, np.ndarray] = dict(zip(names, x))
        columns.update(cats)
        for t in range(k):
            columns[f"task_{t}"] = y[t]
        for t in range(k):
            columns[f"task_{t}_bin"] = (y[t] > np.median(y[t])).astype(np.float32)
        frame = pd.DataFrame(columns, copy=False)

        features = {c: "numeric" for c in names}
        features.update({c: "categorical" for c in cats})
        labels = [f"task_{t}" for t in range(k)] + [f"task_{t}_bin" for t in range(k)]
        return Table(frame=frame, features=features, labels=labels,
                     source=f"synthetic(num_rows={n}, correlation={p}, seed={self.seed})",
                     credit="Synthetic data after Ma et al., KDD 2018 (MMoE), sec. 3.2",
                     extra={"weights": w, "alpha": alpha, "beta": beta,
                            "categorical_effects": effects})
