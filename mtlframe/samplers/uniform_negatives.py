"""``uniform-negatives``: pair rows with uniformly drawn items as negatives for a binary task.

The standard negative sampling of implicit-feedback recommendation (e.g. Rendle et al., "BPR",
UAI 2009; He et al., "Neural Collaborative Filtering", WWW 2017): every epoch, each positive row
of ``task`` gets ``ratio`` new rows that keep its user-side features and take the item-side
features of an item drawn uniformly from the training items **the user has not interacted
with** in the training split (and, optionally, not among the user's validation/test positives).
The new rows are labelled 0 for ``task`` and unlabelled (masked) for every other task.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from mtlframe.errors import DataError
from mtlframe.features import FeatureInfo, TaskSpec, label_key, mask_key
from mtlframe.samplers.base import EpochSample, Sampler


def _codes(column: Any) -> torch.Tensor:
    """A preprocessed id column as ``int64 [N]``."""
    return torch.as_tensor(np.asarray(column)).reshape(-1).long()


class UniformNegatives(Sampler):
    """Uniform negative sampling for one binary task, excluding the user's own items.

    Every epoch, each positive row of ``task`` (labelled 1) gets ``ratio`` negatives: copies of
    the row with the item-side features of an item drawn uniformly, with replacement, from the
    training items that ``user_feature``'s user has **no** training row with (whatever that row's
    labels). The draw is exact and vectorized (the ``r``-th allowed item is found by a binary
    search over the sorted interaction keys), never by rejection, so a sampled ``(user, item)``
    pair is never a training interaction. With ``exclude_eval_positives`` the user's positives of
    ``task`` in the validation and test splits are excluded too (no negative contradicts a label
    the model is evaluated on).

    Users and items are compared by their encoded ids: with ``data.min_count > 1`` the rare users
    (items) share the out-of-vocabulary id 0, so their interactions are pooled (more is excluded,
    never less). The per-user index is built on the first epoch and reused.

    A user with fewer allowed items than draws gets repeated negatives (drawn with replacement);
    a user with a positive row and **no** allowed item (they interacted with every training item)
    is a :class:`~mtlframe.errors.DataError` naming the user and the counts.

    Args:
        task: the binary task that gets negatives (e.g. ``like`` or ``click``).
        item_features: item-side feature columns; the first is the item id. The other features
            of a negative row are the user side, copied from the positive row.
        user_feature: the user id column (a model feature); its training rows define each
            user's interacted items.
        ratio: negatives per positive row, per epoch.
        exclude_eval_positives: also exclude each user's positives of ``task`` in the
            validation and test splits.
        feature_info, tasks: injected.

    Raises:
        ValueError: ``task`` is not a binary task of the recipe, ``ratio < 1``, or an item or
            user feature is not a model feature (or the user feature is an item feature).
        DataError: (when sampling) a user with a positive row has interacted with every
            training item.
    """

    def __init__(self, task: str, item_features: list[str], user_feature: str, ratio: int = 1,
                 exclude_eval_positives: bool = False, *,
                 feature_info: Mapping[str, FeatureInfo], tasks: list[TaskSpec]) -> None:
        super().__init__(feature_info, tasks)
        by_name = {t.name: t for t in tasks}
        if task not in by_name or by_name[task].type not in ("binary", "retrieval"):
            binary = [t.name for t in tasks if t.type in ("binary", "retrieval")]
            raise ValueError(f"task '{task}' must be a binary or retrieval task of the recipe; those tasks: {binary}")
        if ratio < 1:
            raise ValueError(f"ratio must be >= 1, got {ratio}")
        unknown = [f for f in item_features if f not in feature_info]
        if not item_features or unknown:
            raise ValueError(f"item_features must name model features; unknown: {unknown or 'none given'}. "
                             f"Features: {', '.join(feature_info)}")
        if user_feature not in feature_info or user_feature in item_features:
            raise ValueError(f"user_feature must name a model feature that is not an item feature, "
                             f"got '{user_feature}'. Features: {', '.join(feature_info)}")
        self.task = task
        self.item_features = list(item_features)
        self.user_feature = user_feature
        self.ratio = ratio
        self.exclude_eval_positives = bool(exclude_eval_positives)
        self._eval_pairs: tuple[torch.Tensor, torch.Tensor] | None = None
        self._index: dict[str, torch.Tensor] | None = None

    def prepare(self, splits: Mapping[str, Mapping[str, Any]]) -> None:
        """Remember the validation/test positives of ``task`` (``(user, item)`` id pairs)."""
        self._index = None
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
            users.append(_codes(cols[self.user_feature])[pos])
            items.append(_codes(cols[self.item_features[0]])[pos])
        if users:
            self._eval_pairs = (torch.cat(users), torch.cat(items))

    def _build_index(self, columns: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Per-user sorted forbidden items of the training split (built once, reused every epoch)."""
        item_ids, user_ids = _codes(columns[self.item_features[0]]), _codes(columns[self.user_feature])
        items, item_of_row = torch.unique(item_ids, return_inverse=True)                  # (I,), (N,)
        users, user_of_row = torch.unique(user_ids, return_inverse=True)                  # (U,), (N,)
        n_items = len(items)
        first_row = torch.full((n_items,), len(item_ids), dtype=torch.long)
        first_row.scatter_reduce_(0, item_of_row, torch.arange(len(item_ids)), reduce="amin")  # a row per item
        keys = [user_of_row * n_items + item_of_row]
        if self._eval_pairs is not None:                  # eval positives of training users/items
            eu, ei = self._eval_pairs
            u = torch.searchsorted(users, eu).clamp_max(len(users) - 1)
            i = torch.searchsorted(items, ei).clamp_max(n_items - 1)
            known = (users[u] == eu) & (items[i] == ei)
            keys.append(u[known] * n_items + i[known])
        keys = torch.unique(torch.cat(keys))                                               # sorted (F,)
        f_user, f_item = keys // n_items, keys % n_items
        count = torch.bincount(f_user, minlength=len(users))                               # (U,)
        start = torch.cumsum(count, 0) - count                                             # (U,)
        rank = torch.arange(len(keys)) - start[f_user]
        # allowed items before each forbidden one, offset per user: sorted overall
        shifted = f_user * (n_items + 1) + (f_item - rank)
        return {"first_row": first_row, "user_of_row": user_of_row, "users": users,
                "allowed": n_items - count, "start": start, "shifted": shifted,
                "n_items": torch.tensor(n_items)}

    def sample(self, columns: Mapping[str, Any], generator: torch.Generator) -> EpochSample:
        if self._index is None:
            self._index = self._build_index(columns)
        ix = self._index
        y = columns[label_key(self.task)]
        positive = torch.nonzero(columns[mask_key(self.task)] & (y == 1)).squeeze(1)       # (P,)
        src = positive.repeat(self.ratio)                                                  # (P*r,)
        user = ix["user_of_row"][src]
        allowed = ix["allowed"][user]
        if bool((allowed == 0).any()):
            bad = torch.unique(user[allowed == 0])
            n_items = int(ix["n_items"])
            names = ", ".join(str(int(ix["users"][u])) for u in bad[:5])
            raise DataError(
                f"uniform-negatives: {len(bad)} user(s) of '{self.user_feature}' (encoded ids "
                f"{names}{', ...' if len(bad) > 5 else ''}) have a positive '{self.task}' row but "
                f"no item left to draw a negative from: they interacted with all {n_items} "
                f"training items{' (or have them as validation/test positives)' if self._eval_pairs is not None else ''}. "
                f"Remove these users or use another sampler.")
        # the r-th allowed item of the user, r uniform in [0, allowed): r + #{forbidden f: f - rank(f) <= r}
        r = (torch.rand(len(src), generator=generator, dtype=torch.float64) * allowed).long()
        r = torch.minimum(r, allowed - 1)
        n1 = int(ix["n_items"]) + 1
        below = torch.searchsorted(ix["shifted"], user * n1 + r, right=True) - ix["start"][user]
        drawn = ix["first_row"][r + below]                                                 # (P*r,) rows
        extra: dict[str, Any] = {}
        item_side = set(self.item_features)
        for key, col in columns.items():
            if key.startswith(("label/", "mask/")) or key.startswith("__"):
                continue
            rows = drawn if key in item_side else src
            extra[key] = col[rows.numpy()] if isinstance(col, np.ndarray) else col.index_select(0, rows)
        n = len(src)
        for t in self.tasks:
            lab = columns[label_key(t.name)]
            if t.name == self.task:
                extra[label_key(t.name)] = torch.zeros(n, dtype=lab.dtype)
                extra[mask_key(t.name)] = torch.ones(n, dtype=torch.bool)
            else:
                fill = -1 if t.type == "multiclass" else float("nan")
                extra[label_key(t.name)] = torch.full((n,), fill, dtype=lab.dtype)
                extra[mask_key(t.name)] = torch.zeros(n, dtype=torch.bool)
        return EpochSample(keep=None, extra=extra)
