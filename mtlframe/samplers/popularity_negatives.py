"""``popularity-negatives``: negatives drawn with probability proportional to count ** alpha.

The noise distribution of word2vec's negative sampling (Mikolov et al., "Distributed
Representations of Words and Phrases and their Compositionality", NeurIPS 2013: the unigram
distribution raised to the 3/4 power), used for implicit-feedback recommendation as
popularity-biased negative sampling: popular items the user did not interact with are the
informative negatives, ``alpha`` < 1 flattens the popularity so that the tail is still drawn.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from mtlframe.errors import ArgumentError
from mtlframe.features import FeatureInfo, TaskSpec
from mtlframe.samplers.exclusion import ExcludingNegatives


class PopularityNegatives(ExcludingNegatives):
    """Popularity-proportional negative sampling for one binary or retrieval task, excluding the
    user's items.

    Every epoch, each positive row of ``task`` (labelled 1) gets ``ratio`` negatives: copies of
    the row with the item-side features of an item ``j`` drawn, with replacement, with
    probability ``c_j ** alpha / sum_{k allowed} c_k ** alpha`` where ``c_j`` is item ``j``'s
    number of training rows and the sum runs over the items the user is **allowed**: the
    training items they have no training row with (and, with ``exclude_eval_positives``, that
    are not their validation/test positives of ``task``). ``alpha = 0`` is ``uniform-negatives``;
    ``alpha = 1`` the unigram (popularity) distribution; ``0.75`` word2vec's default.

    Exact and vectorized: the weights are made integers (largest ``2**40`` or more, relative
    rounding error below ``1e-7`` for any item weighing at least ``1e-5`` of the largest) and the
    user's allowed weight is inverted by a binary search over their sorted excluded items
    (:class:`~mtlframe.samplers.exclusion.ExclusionIndex`), never by rejection, so a sampled
    ``(user, item)`` pair is never a training interaction. The new rows are labelled 0 for
    ``task`` and have a *missing* label (masked) for every other task, so explicit tasks
    (rating, like) train only on observed rows. Ids are encoded codes (rare items pooled into
    the out-of-vocabulary code 0 count as one item); the index is built on the first epoch and
    reused, and :meth:`prepare` (a new run) forgets it.

    The other parameters (``task``, ``item_features``, ``user_feature``, ``ratio``,
    ``exclude_eval_positives``; injected ``feature_info``, ``tasks``) are
    :class:`~mtlframe.samplers.exclusion.ExcludingNegatives`'.

    Args:
        alpha: exponent of the training count (finite; ``0.75`` as in word2vec, ``0`` uniform,
            ``1`` proportional to popularity, negative favours rare items).

    Raises:
        ValueError: (:class:`~mtlframe.errors.ArgumentError`) ``task`` is not a binary or
            retrieval task of the recipe, ``ratio < 1``, ``alpha`` is not finite, or an item or user feature is not
            a model feature (or the user feature is an item feature).
        DataError: (when sampling) a user with a positive row has interacted with every
            training item.
    """

    component = "popularity-negatives"

    def __init__(self, task: str, item_features: list[str], user_feature: str, ratio: int = 1,
                 exclude_eval_positives: bool = False, alpha: float = 0.75, *,
                 feature_info: Mapping[str, FeatureInfo], tasks: list[TaskSpec]) -> None:
        super().__init__(task, item_features, user_feature, ratio, exclude_eval_positives,
                         feature_info=feature_info, tasks=tasks)
        if not math.isfinite(alpha):
            raise ArgumentError("alpha", f"alpha must be a finite number (0.75 as in word2vec), got {alpha}")
        self.alpha = float(alpha)

    def item_weights(self, counts: torch.Tensor) -> torch.Tensor:
        """``counts ** alpha`` (float64 ``[I]``; every training item has a count >= 1)."""
        return counts.double() ** self.alpha
