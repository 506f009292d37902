"""``in-batch``: the other rows' items of a training batch are each row's negatives.

Yi et al., "Sampling-Bias-Corrected Neural Modeling for Large Corpus Item Recommendations",
RecSys 2019: a two-tower model trained with a batch softmax, each row's positive item scored
against the items of the batch's other rows, with the logit correction
``s_c(x, y_j) = s(x, y_j) - log(p_j)`` where ``p_j`` is the probability that item ``j`` is in
a random batch (popular items are more often in-batch negatives; the correction removes that
sampling bias).
"""
from __future__ import annotations

import torch

from mtlframe.samplers.base import ModelSideSampler, Negatives


class InBatch(ModelSideSampler):
    """In-batch negatives with the logQ (sampling-bias) correction of Yi et al. (RecSys 2019).

    No item is drawn: the negatives of a row are the items of the batch's other rows (the
    retrieval loss masks the columns holding the row's own item). ``log_q_batch[b] =
    log q(items[b])`` with ``q(j) = c_j / N``, the probability that a training row's item is
    ``j`` (``c_j`` its training rows, ``N`` all training rows, out-of-vocabulary code 0
    included). A shuffled batch of ``B`` rows holds item ``j`` about ``B q(j)`` times, so this
    is Yi et al.'s ``p_j`` up to the factor ``B``, which is the same for every column and
    cancels in the softmax. Yi et al. *estimate* ``p_j`` from the stream of batches (the mean
    gap between two batches holding ``j``, for a corpus without a fixed vocabulary); here the
    training split is known, so the counts are exact.

    Args:
        log_q_correction: subtract ``log q`` (``True``, Yi et al.) or not (``False``: plain
            batch softmax, popular items over-penalized).
        feature_info, tasks: injected.

    Raises:
        ValueError: (:class:`~mtlframe.errors.ArgumentError`) ``item_feature`` is not a
            categorical model feature.
        DataError: (:meth:`prepare`) an empty training split or codes outside the feature's
            vocabulary; (:meth:`negatives`) a batch item without training rows.
    """

    component = "in-batch"

    def tables(self, counts: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"log_q": torch.log(counts.double() / counts.sum()).float()}

    def negatives(self, items: torch.Tensor, generator: torch.Generator | None) -> Negatives:
        """``Negatives(extra=[] , log_q_batch=[B], log_q_extra=[])`` on ``items.device``."""
        self.check_items(items)
        log_q = self.table("log_q", items.device)[items] if self.log_q_correction else \
            torch.zeros(len(items), device=items.device)
        return Negatives(extra=torch.zeros(0, dtype=torch.long, device=items.device), log_q_batch=log_q,
                         log_q_extra=torch.zeros(0, device=items.device))
