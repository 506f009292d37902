"""``uniform-negatives``: pair rows with uniformly drawn items as negatives for a binary task.

The standard negative sampling of implicit-feedback recommendation (e.g. Rendle et al., "BPR",
UAI 2009; He et al., "Neural Collaborative Filtering", WWW 2017): every epoch, each positive row
of ``task`` gets ``ratio`` new rows that keep its user-side features and take the item-side
features of an item drawn uniformly from the training items. The new rows are labelled 0 for
``task`` and unlabelled (masked) for every other task. A drawn item the user did interact with
is kept as a negative (a small, standard bias at catalogue sizes well above a user's history).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from mtlframe.features import FeatureInfo, TaskSpec, label_key, mask_key
from mtlframe.samplers.base import EpochSample, Sampler


class UniformNegatives(Sampler):
    """Uniform negative sampling for one binary task.

    Args:
        task: the binary task that gets negatives (e.g. ``like`` or ``click``).
        item_features: item-side feature columns; the first is the item id. The other features
            of a negative row are the user side, copied from the positive row.
        ratio: negatives per positive row, per epoch.
        feature_info, tasks: injected.

    Raises:
        ValueError: ``task`` is not a binary task of the recipe, ``ratio < 1``, or an item
            feature is not a model feature.
    """

    def __init__(self, task: str, item_features: list[str], ratio: int = 1, *,
                 feature_info: Mapping[str, FeatureInfo], tasks: list[TaskSpec]) -> None:
        super().__init__(feature_info, tasks)
        by_name = {t.name: t for t in tasks}
        if task not in by_name or by_name[task].type != "binary":
            binary = [t.name for t in tasks if t.type == "binary"]
            raise ValueError(f"task '{task}' must be a binary task of the recipe; binary tasks: {binary}")
        if ratio < 1:
            raise ValueError(f"ratio must be >= 1, got {ratio}")
        unknown = [f for f in item_features if f not in feature_info]
        if not item_features or unknown:
            raise ValueError(f"item_features must name model features; unknown: {unknown or 'none given'}. "
                             f"Features: {', '.join(feature_info)}")
        self.task = task
        self.item_features = list(item_features)
        self.ratio = ratio

    def sample(self, columns: Mapping[str, Any], generator: torch.Generator) -> EpochSample:
        y = columns[label_key(self.task)]
        positive = torch.nonzero(columns[mask_key(self.task)] & (y == 1)).squeeze(1)       # (P,)
        src = positive.repeat(self.ratio)                                                  # (P*r,)
        item_ids = torch.as_tensor(columns[self.item_features[0]])
        uniq, inverse = torch.unique(item_ids, return_inverse=True)
        first_row = torch.full((len(uniq),), len(item_ids), dtype=torch.long)
        first_row.scatter_reduce_(0, inverse, torch.arange(len(item_ids)), reduce="amin")   # (I,) a row per item
        drawn = first_row[torch.randint(len(uniq), (len(src),), generator=generator)]      # (P*r,)
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
