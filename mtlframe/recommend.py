"""Top-K recommendations per user from a checkpoint: what ``mtlframe recommend`` does, callable from Python.

Example::

    from mtlframe.recommend import recommend
    result = recommend("runs/ml/checkpoints/best.ckpt", "users.csv", k=20, output="recs.csv")
    result.users_per_second

The order of a user's list:

1. **Candidates.** With a retrieval task, its two-tower score ranks the catalogue and the top
   ``ranking.candidates`` items not excluded go on; with no retrieval task, or a catalogue of at most
   ``candidates`` items, every catalogue item is a candidate.
2. **Fusion.** Every task scores every (user, candidate) pair through the full model
   (:meth:`MultiTaskModel.compose` pairs the user's row with the item's row) and the candidates are
   re-ranked by ``ranking.rank_by``: ``score = sum_t w_t * log p_t`` (the log of
   ``prod_t p_t ** w_t``), :func:`fuse`.
3. **Top K** by that score, ties broken by the lower catalogue position (the item's code, so the
   more frequent item in training), :func:`top_k`. The same checkpoint, data and users give the
   same file, byte for byte.

Items the user has seen (any row of theirs in the training, validation or test split) are never
recommended when ``ranking.exclude_seen`` is true (the default). Users not in the data follow
``ranking.unknown_users``: ``popularity`` (the most frequent training items, ``source`` =
``popularity``) or ``error``. See ``docs/ranking.md`` (section *Recommend*).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtlframe.errors import CheckpointError, DataError, MTLFrameError

#: task types whose prediction is a probability that ``rank_by`` can fuse (retrieval: sigmoid of the pair logit)
FUSABLE_TYPES = ("binary", "retrieval")
#: ``log p`` of a probability below this counts as ``log(1e-12)``: a zero probability ranks last, never NaN
LOG_FLOOR = math.log(1e-12)


def rank_by_problems(rank_by: Mapping[str, Any], task_types: Mapping[str, str]) -> list[tuple[str, str]]:
    """``(dotted path, message)`` of every problem of a ``ranking.rank_by`` mapping.

    A weight must be a finite number >= 0 and name a task whose prediction is a probability:
    binary tasks and retrieval tasks (``sigmoid`` of the pair's logit). A regression prediction
    (a rating) is not a probability and a multiclass one is a distribution, so they are refused
    rather than mapped: fuse on a binary task derived from them (``like``: rating >= 4), and their
    predictions still appear in the output as ``<task>_pred``.
    """
    problems: list[tuple[str, str]] = []
    for name, w in rank_by.items():
        path = f"ranking.rank_by.{name}"
        if name not in task_types:
            from mtlframe.errors import closest, near_hint

            problems.append((path, f"no task named '{name}'" + near_hint(closest(str(name), task_types))
                             + f" Tasks: {', '.join(task_types)}."))
            continue
        typ = task_types[name]
        if typ not in FUSABLE_TYPES:
            problems.append((path, f"task '{name}' is a {typ} task: its prediction is not a probability, so it "
                                   "cannot be a factor of prod_t p_t ** w_t. Fuse binary or retrieval tasks (derive a "
                                   "binary task from it, e.g. like: rating >= 4); its prediction still appears in the "
                                   f"output as {name}_pred."))
        elif isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            problems.append((path, f"the weight of '{name}' must be a finite number >= 0 (an exponent of its "
                                   f"probability), got {w!r}."))
    return problems


def log_probability(task_type: str, output: torch.Tensor) -> torch.Tensor:
    """``log p`` of a task's raw output (logits), floored at :data:`LOG_FLOOR`; shape unchanged.

    Binary and retrieval outputs are logits: ``log p = logsigmoid(logit)`` (exact, no ``log(0)``).

    Raises:
        ValueError: a task type that has no probability (see :func:`rank_by_problems`).
    """
    if task_type not in FUSABLE_TYPES:
        raise ValueError(f"a {task_type} prediction is not a probability; rank_by fuses {', '.join(FUSABLE_TYPES)} tasks")
    return torch.nn.functional.logsigmoid(output.float()).clamp_min(LOG_FLOOR)


def fuse(outputs: Mapping[str, torch.Tensor], weights: Mapping[str, float],
         task_types: Mapping[str, str]) -> torch.Tensor:
    """The ``rank_by`` score of (user, item) pairs: ``sum_t w_t * log p_t`` = ``log prod_t p_t ** w_t``.

    Args:
        outputs: ``{task: logits [...]}`` (same shape for every task, e.g. ``[U, C]``).
        weights: ``{task: w_t}`` (``ranking.rank_by``), ``w_t >= 0``.
        task_types: ``{task: type}``.

    Returns the score, float32 of the outputs' shape; higher ranks first. Ranking by it is the same
    as ranking by ``prod_t p_t ** w_t`` (the log is increasing).

    Raises:
        ValueError: ``weights`` is empty or names a task missing from ``outputs`` or without a
            probability.
    """
    if not weights:
        raise ValueError("rank_by is empty: name at least one task")
    total = None
    for task, w in weights.items():
        if task not in outputs:
            raise ValueError(f"rank_by names task '{task}', which has no output")
        part = float(w) * log_probability(task_types[task], outputs[task])
        total = part if total is None else total + part
    return total


def top_k(scores: torch.Tensor, k: int, exclude: torch.Tensor | None = None
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``k`` best columns of each row, ties broken by the lower column index, excluded columns never.

    Vectorized over rows (no Python loop per row): ``torch.topk`` finds each row's ``k``-th value,
    the columns above it are taken, then the columns equal to it in index order until ``k``, and
    the ``k`` taken are sorted by (score descending, index ascending). So the result does not
    depend on ``torch.topk``'s (unspecified) order among ties: the same scores give the same lists.

    Args:
        scores: ``[U, C]`` float scores (higher is better); NaN is not allowed.
        k: how many per row, ``>= 1``.
        exclude: ``[U, C]`` bool, True where a column must not be returned (seen items).

    Returns:
        ``(values [U, k'], index [U, k'], valid [U, k'])`` with ``k' = min(k, C)``; ``valid`` is
        False past the end of a row that has fewer than ``k'`` columns not excluded (those entries
        hold index ``-1`` and value ``-inf``).

    Raises:
        ValueError: ``k < 1``, ``scores`` not 2-D, holds NaN, or ``exclude`` of another shape.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be [U, C], got shape {tuple(scores.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if torch.isnan(scores).any():
        raise ValueError("scores hold NaN")
    n_rows, n_cols = scores.shape
    kk = min(k, n_cols)
    if n_rows == 0 or kk == 0:
        empty = scores.new_empty((n_rows, kk))
        return empty, torch.full((n_rows, kk), -1, dtype=torch.long, device=scores.device), \
            torch.zeros((n_rows, kk), dtype=torch.bool, device=scores.device)
    s = scores.float()
    allowed = torch.ones_like(s, dtype=torch.bool)
    if exclude is not None:
        if exclude.shape != scores.shape:
            raise ValueError(f"exclude has shape {tuple(exclude.shape)}, scores {tuple(scores.shape)}")
        allowed = ~exclude
        s = s.masked_fill(exclude, float("-inf"))
    # -inf also for allowed columns whose score is -inf: they rank last but stay allowed
    kth = torch.topk(s, kk, dim=1, sorted=False).values.min(dim=1, keepdim=True).values  # [U, 1]
    above = (s > kth) & allowed
    tie = (s == kth) & allowed
    need = kk - above.sum(dim=1, keepdim=True)                        # ties to take, in index order
    take = above | (tie & (torch.cumsum(tie.to(torch.int32), dim=1) <= need))
    count = take.sum(dim=1)                                           # kk, or fewer (excluded columns)
    # the taken columns in index order, padded with column n_cols (sorted last) to kk per row
    cols = torch.arange(n_cols, device=s.device).expand(n_rows, n_cols)
    keyed = torch.where(take, cols, torch.full_like(cols, n_cols))
    index = torch.sort(keyed, dim=1).values[:, :kk]
    valid = torch.arange(kk, device=s.device).unsqueeze(0) < count.unsqueeze(1)
    values = torch.gather(s, 1, index.clamp_max(n_cols - 1))
    values = values.masked_fill(~valid, float("-inf"))
    order = torch.sort(values, dim=1, descending=True, stable=True).indices  # stable: index order within ties
    index = torch.gather(index, 1, order)
    values = torch.gather(values, 1, order)
    valid = torch.gather(valid, 1, order)
    index = index.masked_fill(~valid, -1)
    return values, index, valid


def exclusion_mask(rows: torch.Tensor, indptr: torch.Tensor, positions: torch.Tensor, n_cols: int) -> torch.Tensor:
    """``[len(rows), n_cols]`` bool, True at the columns listed for each row in a CSR structure.

    Args:
        rows: ``[Ub]`` int64 row numbers into the CSR.
        indptr: ``[R + 1]`` int64; row ``r``'s columns are ``positions[indptr[r]:indptr[r + 1]]``.
        positions: ``[nnz]`` int64 column numbers in ``[0, n_cols)`` (``-1`` entries are ignored).
        n_cols: the number of columns.

    Built with one scatter (no loop per row).
    """
    start, end = indptr[rows], indptr[rows + 1]
    lengths = end - start
    mask = torch.zeros((len(rows), n_cols), dtype=torch.bool, device=rows.device)
    total = int(lengths.sum())
    if total == 0:
        return mask
    row_of = torch.repeat_interleave(torch.arange(len(rows), device=rows.device), lengths)
    offsets = torch.arange(total, device=rows.device) - torch.repeat_interleave(torch.cumsum(lengths, 0) - lengths,
                                                                                 lengths)
    cols = positions[torch.repeat_interleave(start, lengths) + offsets]
    keep = cols >= 0
    mask[row_of[keep], cols[keep]] = True
    return mask


def csr_from_pairs(rows: torch.Tensor, cols: torch.Tensor, n_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(indptr [n_rows + 1], positions [nnz])`` of (row, column) pairs (duplicates kept, harmless
    for :func:`exclusion_mask`)."""
    order = torch.argsort(rows, stable=True)
    counts = torch.bincount(rows, minlength=n_rows)
    indptr = torch.zeros(n_rows + 1, dtype=torch.long)
    indptr[1:] = torch.cumsum(counts, 0)
    return indptr, cols[order].long()


def popularity_order(counts: torch.Tensor) -> torch.Tensor:
    """Catalogue positions by training frequency, most frequent first; ties by the lower position.

    Args:
        counts: ``[I]`` training rows per catalogue item.

    Returns ``[I]`` int64 positions.
    """
    return torch.sort(counts.to(torch.float64), descending=True, stable=True).indices
