"""Leak-free behaviour histories from a flat interaction log (vectorized, no per-row Python).

A log such as MovieLens' ``u.data`` has one row per interaction (user, item, timestamp, ...).
:func:`build_history` gives every row the positions of the same user's previous ``max_len``
interactions, so that a column of the log (the item id, the rating) becomes a ``sequence``
feature (:mod:`mtlframe.preprocess`) with no user code. The rule, for row ``i`` of user ``u``:

* **strictly earlier**: a row ``j`` is in ``i``'s history only if ``t_j < t_i``. Rows with the same
  timestamp never see each other (the tie rule: events logged in the same second are treated as
  simultaneous, whatever their order in the file), and a row never sees itself.
* **no later split**: with split ranks (train 0, val 1, test 2), ``j`` is in ``i``'s history only
  if ``rank_j <= rank_i``: training rows see training rows only, validation rows training and
  validation rows, test rows all three. So no training row's history holds a val/test
  interaction, under any split (random, time, user-random, leave-last-out, cold-start).
* **most recent last**: the history is ordered by time (equal timestamps inside a history: file
  order), truncated to the ``max_len`` most recent, padded at the front.

Algorithm: per split rank ``k`` the candidate rows (rank <= k) are sorted by (user, time, file
position) once; each query row (rank == k) finds, with one ``searchsorted`` on a combined
(user, time rank) key, the end of its user's strictly-earlier candidates; the history is the
``max_len`` candidates before that end. Cost ``O(N log N)`` plus ``O(N * max_len)`` for the
output, in blocks of rows so temporaries stay small.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["History", "build_history", "split_ranks", "SPLIT_ORDER"]

#: the order of splits in time: a row sees rows of its own split and of earlier ones only
SPLIT_ORDER = ("train", "val", "test")


@dataclass
class History:
    """Each row's previous interactions, as row positions of the log.

    Attributes:
        positions: ``[N, L]`` int32 (int64 past 2^31 - 1 rows) positions into the log, ``-1`` =
            padding; padding first, the most recent interaction in the last column.
        lengths: ``[N]`` int64, how many interactions qualified before truncation to ``L``
            (``lengths > L``: the row was truncated).
    """

    positions: np.ndarray
    lengths: np.ndarray

    @property
    def max_len(self) -> int:
        return int(self.positions.shape[1])

    def take(self, rows: np.ndarray | None) -> "History":
        """The histories of rows ``rows`` (positions into the log are kept)."""
        if rows is None:
            return self
        return History(self.positions[rows], self.lengths[rows])


def split_ranks(index: Mapping[str, np.ndarray], n: int) -> np.ndarray:
    """``[n]`` int8 split rank of every row (train 0, val 1, test 2; see :data:`SPLIT_ORDER`).

    A row in no split gets rank 0 (it is then seen like a training row, and sees only training
    rows); an unknown split name is ranked after the known ones.
    """
    rank = np.zeros(n, dtype=np.int8)
    for k, rows in index.items():
        rank[rows] = SPLIT_ORDER.index(k) if k in SPLIT_ORDER else len(SPLIT_ORDER)
    return rank


def _time_rank(times: np.ndarray) -> np.ndarray:
    """Dense int64 rank of each timestamp (equal times share a rank); numbers or datetimes."""
    return np.unique(times, return_inverse=True)[1].reshape(-1).astype(np.int64)


def build_history(users: np.ndarray, times: np.ndarray, max_len: int, ranks: np.ndarray | None = None,
                  block: int = 1 << 16) -> History:
    """The leak-free history of every row of a log (see the module docstring for the rule).

    Args:
        users: ``[N]`` user ids (any hashable dtype; dense integer codes are fastest).
        times: ``[N]`` timestamps (numbers or ``datetime64``; no missing values).
        max_len: ``L``, the most recent interactions kept (>= 1).
        ranks: ``[N]`` split rank of each row (:func:`split_ranks`); ``None``: one split.
        block: query rows per step (bounds the ``[block, L]`` temporaries).

    Returns:
        :class:`History` with ``positions [N, L]`` (``-1`` padding, most recent last) and
        ``lengths [N]`` (qualifying interactions before truncation).

    Raises:
        ValueError: ``max_len < 1`` or arrays of different lengths.
    """
    n = len(users)
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    if len(times) != n or (ranks is not None and len(ranks) != n):
        raise ValueError("users, times and ranks must have one entry per row")
    missing = pd.isna(np.asarray(times))
    if bool(np.any(missing)):  # NaN / NaT sorts last: the row would be "later" than all the user's others
        rows = np.flatnonzero(missing)
        raise ValueError(f"{len(rows)} missing timestamp(s) (rows {', '.join(str(int(r)) for r in rows[:5])}"
                         f"{' ...' if len(rows) > 5 else ''}): a history cannot place those rows")
    dtype = np.int32 if n < 2**31 - 1 else np.int64
    positions = np.full((n, max_len), -1, dtype=dtype)
    lengths = np.zeros(n, dtype=np.int64)
    if n == 0:
        return History(positions, lengths)
    u = np.unique(users, return_inverse=True)[1].reshape(-1).astype(np.int64)
    t = _time_rank(times)
    key = u * (int(t.max()) + 1) + t  # (user, time) in one sortable int64
    ranks = np.zeros(n, dtype=np.int8) if ranks is None else np.asarray(ranks)
    cols = np.arange(max_len, dtype=np.int64)
    for k in np.unique(ranks):
        cand = np.flatnonzero(ranks <= k)
        cand = cand[np.lexsort((cand, key[cand]))]  # by user, time, then file position
        ckey = key[cand]
        query = np.flatnonzero(ranks == k)
        for lo in range(0, len(query), block):
            q = query[lo:lo + block]
            end = np.searchsorted(ckey, key[q], side="left")  # first candidate at (user, time >= t_i)
            start = np.searchsorted(ckey, u[q] * (int(t.max()) + 1), side="left")  # the user's first
            count = end - start
            lengths[q] = count
            idx = end[:, None] - max_len + cols[None, :]  # [b, L]: the L candidates before ``end``
            valid = cols[None, :] >= (max_len - np.minimum(count, max_len))[:, None]
            positions[q] = np.where(valid, cand[np.clip(idx, 0, len(cand) - 1)], -1)
    return History(positions, lengths)
