"""``uniform-negatives``: uniformly drawn items as negatives for a binary or retrieval task.

The standard negative sampling of implicit-feedback recommendation (e.g. Rendle et al., "BPR",
UAI 2009; He et al., "Neural Collaborative Filtering", WWW 2017): every epoch, each positive row
of ``task`` gets ``ratio`` new rows that keep its user-side features and take the item-side
features of an item drawn uniformly from the training items **the user has not interacted
with** in the training split (and, optionally, not among the user's validation/test positives).
The new rows are labelled 0 for ``task`` and unlabelled (masked) for every other task.
"""
from __future__ import annotations

from mtlframe.samplers.exclusion import ExcludingNegatives


class UniformNegatives(ExcludingNegatives):
    """Uniform negative sampling for one binary or retrieval task, excluding the user's own items.

    Every epoch, each positive row of ``task`` (labelled 1) gets ``ratio`` negatives: copies of
    the row with the item-side features of an item drawn uniformly, with replacement, from the
    training items that ``user_feature``'s user has **no** training row with (whatever that row's
    labels). The draw is exact and vectorized (the ``r``-th allowed item is found by a binary
    search over the user's sorted excluded items, see
    :class:`~mtlframe.samplers.exclusion.ExclusionIndex`), never by rejection, so a sampled
    ``(user, item)`` pair is never a training interaction. With ``exclude_eval_positives`` the
    user's positives of ``task`` in the validation and test splits are excluded too (no negative
    contradicts a label the model is evaluated on).

    The new rows are labelled 0 for ``task`` and have a *missing* label (masked) for every other
    task, so explicit tasks (rating, like) train only on observed rows.

    Users and items are compared by their encoded ids: with ``data.min_count > 1`` the rare users
    (items) share the out-of-vocabulary id 0, so their interactions are pooled (more is excluded,
    never less). The per-user index is built on the first epoch and reused; :meth:`prepare`
    (a new run) forgets it and the evaluation positives it had.

    A user with fewer allowed items than draws gets repeated negatives (drawn with replacement);
    a user with a positive row and **no** allowed item (they interacted with every training item)
    is a :class:`~mtlframe.errors.DataError` naming the user and the counts.

    The parameters (``task``, ``item_features``, ``user_feature``, ``ratio``,
    ``exclude_eval_positives``; injected ``feature_info``, ``tasks``) are
    :class:`~mtlframe.samplers.exclusion.ExcludingNegatives`'.

    Raises:
        ValueError: (:class:`~mtlframe.errors.ArgumentError`) ``task`` is not a binary or
            retrieval task of the recipe, ``ratio < 1``, or an item or user feature is not a model feature (or the
            user feature is an item feature).
        DataError: (when sampling) a user with a positive row has interacted with every
            training item.
    """

    component = "uniform-negatives"
