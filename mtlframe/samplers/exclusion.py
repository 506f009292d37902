"""What data-side negative samplers share: the per-user exclusion index and the sampled rows.

:class:`ExclusionIndex` holds, for every training user, the sorted items they may not get as a
negative (their training items, optionally their validation/test positives) and draws, exactly
and vectorized, an allowed item with probability proportional to an integer item weight:
uniform (every weight 1, ``uniform-negatives``) or ``count ** alpha`` (``popularity-negatives``).
:class:`ExcludingNegatives` is the sampler both are built on: it turns the drawn items into new
rows labelled 0 for its task and unlabelled (masked) for every other task.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from mtlframe.batching import id_codes as codes
from mtlframe.errors import ArgumentError, DataError
from mtlframe.features import FeatureInfo, TaskSpec, label_key, mask_key
from mtlframe.samplers.base import EpochSample, Sampler


#: task types whose label 1 marks an interaction, so that a sampled row is a 0 of that task
IMPLICIT_TYPES: tuple[str, ...] = ("binary", "retrieval")


def integer_weights(weights: torch.Tensor) -> torch.Tensor:
    """Positive real item weights ``[I]`` as int64 weights ``>= 1`` whose sum fits in int64.

    Scaled so that the largest weight is ``2**b`` with ``b = 62 - ceil(log2(I + 1))`` (at least 40
    bits for a catalogue of 4 million items), then rounded: the relative change of a weight is
    below ``2**-b / (w / w_max)``, e.g. 1e-7 for a weight 10^5 times below the largest with a
    million items. Integer sums make the exclusion in :meth:`ExclusionIndex.draw` exact.
    """
    bits = 62 - math.ceil(math.log2(len(weights) + 1))
    w = weights.double()
    return torch.clamp(torch.round(w / w.max() * 2.0 ** bits), min=1).long()


@dataclass
class ExclusionIndex:
    """Per-user excluded items of a training split, and exact weighted draws of allowed items.

    Items and users are positions in the sorted distinct codes ``items [I]`` / ``users [U]`` of
    the training rows. Built once by :meth:`build` (``O(N log N)``), reused every epoch.

    Attributes:
        items, users: sorted distinct item / user codes of the training rows.
        user_of_row: ``[N]`` user position of every training row.
        first_row: ``[I]`` a training row of every item (where its item-side features are).
        counts: ``[I]`` training rows per item.
        cum: ``[I]`` inclusive cumulative int64 item weights.
        start, n_excluded: ``[U]`` each user's segment of ``below`` / ``excluded_upto``.
        below: ``[F]`` per excluded (user, item), the user's allowed weight before that item
            (non-decreasing within a user's segment).
        excluded_upto: ``[F]`` the user's excluded weight up to and including that item.
        allowed_weight, allowed_count: ``[U]`` total weight / number of each user's allowed items.
        flat: ``user * (total weight + 1) + below`` (sorted ``[F]``) when that fits in int64 (e.g.
            uniform weights), so that one ``searchsorted`` replaces the per-segment binary
            search; else ``None``.
    """

    items: torch.Tensor
    users: torch.Tensor
    user_of_row: torch.Tensor
    first_row: torch.Tensor
    counts: torch.Tensor
    cum: torch.Tensor
    start: torch.Tensor
    n_excluded: torch.Tensor
    below: torch.Tensor
    excluded_upto: torch.Tensor
    allowed_weight: torch.Tensor
    allowed_count: torch.Tensor
    flat: torch.Tensor | None = None

    @classmethod
    def build(cls, user_codes: torch.Tensor, item_codes: torch.Tensor,
              extra_pairs: tuple[torch.Tensor, torch.Tensor] | None = None,
              weight_of=None) -> ExclusionIndex:
        """Index the training rows ``(user_codes[k], item_codes[k])`` (int64 ``[N]``).

        Args:
            extra_pairs: more ``(user codes, item codes)`` to exclude (e.g. evaluation
                positives); pairs of a user or item without training rows are ignored (they can
                never be drawn).
            weight_of: ``counts [I] -> positive weights [I]`` (real) or ``None``, the items' draw
                weights from their training row counts; ``None`` (or returning ``None``): every
                item weight 1 (uniform).
        """
        items, item_of_row = torch.unique(item_codes, return_inverse=True)               # (I,), (N,)
        users, user_of_row = torch.unique(user_codes, return_inverse=True)               # (U,), (N,)
        n_items, n = len(items), len(item_codes)
        first_row = torch.full((n_items,), n, dtype=torch.long)
        first_row.scatter_reduce_(0, item_of_row, torch.arange(n), reduce="amin")
        counts = torch.bincount(item_of_row, minlength=n_items)
        raw = None if weight_of is None else weight_of(counts)
        weight = torch.ones(n_items, dtype=torch.long) if raw is None else integer_weights(raw)
        keys = [user_of_row * n_items + item_of_row]
        if extra_pairs is not None and len(extra_pairs[0]) and n:
            eu, ei = extra_pairs
            u = torch.searchsorted(users, eu).clamp_max(len(users) - 1)
            i = torch.searchsorted(items, ei).clamp_max(n_items - 1)
            known = (users[u] == eu) & (items[i] == ei)
            keys.append(u[known] * n_items + i[known])
        keys = torch.unique(torch.cat(keys))                                             # sorted (F,)
        f_user, f_item = keys // n_items, keys % n_items
        n_excluded = torch.bincount(f_user, minlength=len(users))                        # (U,)
        start = torch.cumsum(n_excluded, 0) - n_excluded
        cum = torch.cumsum(weight, 0)
        fw = weight[f_item]
        run = torch.cumsum(fw, 0)                               # over all keys, then made per user
        excluded_before = run - fw
        excluded_before = excluded_before - excluded_before[start[f_user]]
        total_excluded = torch.zeros(len(users), dtype=torch.long).scatter_add_(0, f_user, fw)
        below = (cum[f_item] - weight[f_item]) - excluded_before
        span = (int(cum[-1]) if n_items else 0) + 1
        flat = f_user * span + below if len(users) * span < 2 ** 62 else None
        return cls(items=items, users=users, user_of_row=user_of_row, first_row=first_row, counts=counts,
                   cum=cum, start=start, n_excluded=n_excluded, below=below,
                   excluded_upto=excluded_before + fw,
                   allowed_weight=(cum[-1] if n_items else torch.tensor(0)) - total_excluded,
                   allowed_count=n_items - n_excluded, flat=flat)

    def draw(self, user: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One allowed item position per entry of ``user`` (user positions ``[R]``), drawn with
        probability ``weight / allowed weight`` of the user; every user must have an allowed item.

        Exact: ``r`` is uniform in ``[0, W_u)`` (``W_u`` the user's allowed weight); ``j``, the
        number of excluded items whose allowed-weight-before is ``<= r``, is found by one
        ``searchsorted`` over ``flat`` (when it fits in int64) or else a vectorized binary search
        in the user's segment; the item is then the one whose global
        cumulative weight interval holds ``r + (excluded weight of those j)``. With integer
        weights ``>= 1`` this is never an excluded item. ``O(R log F_max)``, no per-row Python.
        """
        total = self.allowed_weight[user]
        r = (torch.rand(len(user), generator=generator, dtype=torch.float64) * total).long()
        r = torch.minimum(r, total - 1)
        last = max(len(self.below) - 1, 0)
        if self.flat is not None:                                # one search over (user, below) keys
            lo = torch.searchsorted(self.flat, user * (int(self.cum[-1]) + 1) + r, right=True)
        else:                                                    # upper bound of r in the user's segment
            lo, hi = self.start[user].clone(), self.start[user] + self.n_excluded[user]
            steps = int(self.n_excluded.max()).bit_length() + 1 if len(self.n_excluded) else 0
            for _ in range(steps):
                mid = (lo + hi) // 2
                right = (lo < hi) & (self.below[mid.clamp_max(last)] <= r)
                lo, hi = torch.where(right, mid + 1, lo), torch.where(right | (lo >= hi), hi, mid)
        has = lo > self.start[user]
        skipped = torch.where(has, self.excluded_upto[(lo - 1).clamp_min(0).clamp_max(last)], 0)
        return torch.searchsorted(self.cum, r + skipped, right=True)


class ExcludingNegatives(Sampler):
    """Base of the data-side negative samplers: every epoch, each positive row of ``task`` gets
    ``ratio`` copies with the item-side features of an allowed item drawn by
    :class:`ExclusionIndex` (never an item the user has a training row with), labelled 0 for
    ``task`` and missing (masked) for every other task. Subclasses set the item weights
    (:meth:`item_weights`) and ``component`` (their registered name, used in errors).

    Args:
        task: the binary or retrieval task that gets negatives (e.g. ``click``, or ``watch``:
            a retrieval task then learns pointwise, sampled rows labelled 0).
        item_features: item-side feature columns; the first is the item id. The other features
            of a negative row are the user side, copied from the positive row.
        user_feature: the user id column (a model feature); its training rows define each
            user's interacted items.
        ratio: negatives per positive row, per epoch.
        exclude_eval_positives: also exclude each user's positives of ``task`` in the
            validation and test splits.
        feature_info, tasks: injected.

    Raises:
        ArgumentError: ``task`` is not a binary or retrieval task, ``ratio < 1``, or an item or
            user feature is not a model feature (or the user feature is an item feature).
        DataError: (when sampling) a user with a positive row has no allowed item.
    """

    component: ClassVar[str] = "negatives"

    def __init__(self, task: str, item_features: list[str], user_feature: str, ratio: int = 1,
                 exclude_eval_positives: bool = False, *,
                 feature_info: Mapping[str, FeatureInfo], tasks: list[TaskSpec]) -> None:
        super().__init__(feature_info, tasks)
        by_name = {t.name: t for t in tasks}
        if task not in by_name or by_name[task].type not in IMPLICIT_TYPES:
            fit = [t.name for t in tasks if t.type in IMPLICIT_TYPES]
            raise ArgumentError("task", f"task '{task}' must be a binary or retrieval task of the recipe (its "
                                f"label 1 marks an interaction); binary and retrieval tasks: {fit}")
        if ratio < 1:
            raise ArgumentError("ratio", f"ratio must be >= 1, got {ratio}")
        unknown = [f for f in item_features if f not in feature_info]
        if not item_features or unknown:
            raise ArgumentError("item_features", f"item_features must name model features; unknown: "
                                f"{unknown or 'none given'}. Features: {', '.join(feature_info)}")
        if user_feature not in feature_info or user_feature in item_features:
            raise ArgumentError("user_feature", f"user_feature must name a model feature that is not an item "
                                f"feature, got '{user_feature}'. Features: {', '.join(feature_info)}")
        self.task = task
        self.item_features = list(item_features)
        self.user_feature = user_feature
        self.ratio = ratio
        self.exclude_eval_positives = bool(exclude_eval_positives)
        self._eval_pairs: tuple[torch.Tensor, torch.Tensor] | None = None
        self._index: ExclusionIndex | None = None

    def item_weights(self, counts: torch.Tensor) -> torch.Tensor | None:
        """Draw weights ``[I]`` (positive, real) of the training items from their training row
        counts ``[I]``; ``None`` for uniform. Default: uniform."""
        return None

    def prepare(self, splits: Mapping[str, Mapping[str, Any]]) -> None:
        """Forget the previous index; remember the validation/test positives of ``task``
        (``(user, item)`` code pairs) when ``exclude_eval_positives``."""
        self._index = None
        self._eval_pairs = None
        if not self.exclude_eval_positives:
            return
        users, items = [], []
        for name in ("val", "test"):
            cols = splits.get(name)
            if not cols or label_key(self.task) not in cols:
                continue
            y = torch.as_tensor(cols[label_key(self.task)])
            m = torch.as_tensor(cols[mask_key(self.task)]) if mask_key(self.task) in cols else torch.ones_like(y, dtype=torch.bool)
            pos = torch.nonzero(m & (y == 1)).squeeze(1)
            users.append(codes(cols[self.user_feature])[pos])
            items.append(codes(cols[self.item_features[0]])[pos])
        if users:
            self._eval_pairs = (torch.cat(users), torch.cat(items))

    def sample(self, columns: Mapping[str, Any], generator: torch.Generator) -> EpochSample:
        if self._index is None:
            self._index = ExclusionIndex.build(codes(columns[self.user_feature]), codes(columns[self.item_features[0]]),
                                               self._eval_pairs, self.item_weights)
        ix = self._index
        y = columns[label_key(self.task)]
        positive = torch.nonzero(columns[mask_key(self.task)] & (y == 1)).squeeze(1)       # (P,)
        src = positive.repeat(self.ratio)                                                  # (P*r,)
        user = ix.user_of_row[src]
        empty = ix.allowed_count[user] == 0
        if bool(empty.any()):
            bad = torch.unique(user[empty])
            names = ", ".join(str(int(ix.users[u])) for u in bad[:5])
            raise DataError(
                f"{self.component}: {len(bad)} user(s) of '{self.user_feature}' (encoded ids "
                f"{names}{', ...' if len(bad) > 5 else ''}) have a positive '{self.task}' row but "
                f"no item left to draw a negative from: they interacted with all {len(ix.items)} "
                f"training items{' (or have them as validation/test positives)' if self._eval_pairs is not None else ''}. "
                f"Remove these users or use another sampler.")
        drawn = ix.first_row[ix.draw(user, generator)]                                     # (P*r,) rows
        return EpochSample(keep=None, extra=negative_rows(columns, src, drawn, self.item_features,
                                                          self.task, self.tasks))


def negative_rows(columns: Mapping[str, Any], src: torch.Tensor, drawn: torch.Tensor,
                  item_features: list[str], task: str, tasks: list[TaskSpec]) -> dict[str, Any]:
    """New rows ``[M]``: the features of rows ``src`` with the ``item_features`` of rows ``drawn``;
    label 0 (present) for ``task``, a missing label (NaN, or -1 for multiclass; mask False) for
    every other task, so explicit tasks (ratings, likes) train only on observed rows."""
    extra: dict[str, Any] = {}
    item_side = set(item_features)
    for key, col in columns.items():
        if key.startswith(("label/", "mask/", "__")):
            continue
        rows = drawn if key in item_side else src
        extra[key] = col[rows.numpy()] if isinstance(col, np.ndarray) else col.index_select(0, rows)
    n = len(src)
    for t in tasks:
        lab = columns[label_key(t.name)]
        if t.name == task:
            extra[label_key(t.name)] = torch.zeros(n, dtype=lab.dtype)
            extra[mask_key(t.name)] = torch.ones(n, dtype=torch.bool)
        else:
            fill = -1 if t.type == "multiclass" else float("nan")
            extra[label_key(t.name)] = torch.full((n,), fill, dtype=lab.dtype)
            extra[mask_key(t.name)] = torch.zeros(n, dtype=torch.bool)
    return extra
