"""``mixed``: in-batch negatives plus items sampled from the catalogue (mixed negative sampling).

Yang et al., "Mixed Negative Sampling for Learning Two-tower Neural Networks in
Recommendations", WWW 2020 (Companion): batch negatives follow the items' training frequency,
so items with few or no interactions are rarely negatives (selection bias); MNS adds ``B'``
items sampled uniformly from the whole item corpus to every batch and shares them among its
rows, with the logQ correction of Yi et al. (RecSys 2019) applied to the mixed candidate set.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from mtlframe.errors import ArgumentError, DataError
from mtlframe.features import FeatureInfo, TaskSpec
from mtlframe.samplers.base import ModelSideSampler, Negatives


class Mixed(ModelSideSampler):
    """Mixed negative sampling (Yang et al., WWW 2020): the batch's items plus ``num_negatives``
    catalogue items per batch, all logQ-corrected by one mixture probability.

    Per batch of ``B`` rows, ``M = num_negatives`` items are drawn with replacement from the
    catalogue (the codes ``>= 1`` with a training row) with probability
    ``p_s(j) = c_j ** alpha / sum_k c_k ** alpha`` (``alpha = 0``: uniform, as in the paper;
    ``0.75``: word2vec's popularity). Every row is scored against the ``B`` batch items and the
    ``M`` extra items.

    **The logQ of both parts** is the log of one probability, that of the mixed candidate set:
    the ``B`` batch items are ``B`` draws of the unigram ``p_d(j) = c_j / N`` (a training row's
    item) and the extras ``M`` draws of ``p_s``, so a candidate column picked at random is item
    ``j`` with probability ``Q(j) = (B p_d(j) + M p_s(j)) / (B + M)`` (``B + M`` times it is the
    expected number of columns holding ``j``). ``log_q_batch[b] = log Q(items[b])`` and
    ``log_q_extra[m] = log Q(extra[m])``: the same item gets the same correction whichever part
    it is in. This is the sampled-softmax correction for the mixture proposal (the sum over
    columns of ``exp(s) / Q`` estimates ``(B + M)`` times the full softmax's normalizer), i.e.
    Yi et al.'s ``s - log p_j`` with ``p_j`` the item's probability among this batch's negatives,
    and, up to the constant ``log(B + M)``, TensorFlow's sampled softmax, which subtracts the log
    of each candidate's expected count.
    Correcting each part by its own distribution (``log p_d`` for batch columns, ``log p_s`` for
    extra columns) would also estimate that normalizer, but a tail item in the batch would get
    the weight ``1 / p_d`` although the uniform part draws it far more often; the mixture
    (the "balance heuristic" of multiple importance sampling) avoids that variance. With
    ``M = 0`` this is exactly ``in-batch``.

    Args:
        num_negatives: extra items drawn per batch (``M >= 1``; shared by the batch's rows).
        alpha: exponent of the training count in ``p_s`` (finite; ``0`` uniform over the
            catalogue, as in Yang et al.).
        log_q_correction: return ``log Q`` (``True``) or zeros.
        feature_info, tasks: injected.

    Raises:
        ValueError: (:class:`~mtlframe.errors.ArgumentError`) ``num_negatives < 1``, ``alpha``
            not finite, or ``item_feature`` not a categorical model feature.
        DataError: (:meth:`prepare`) an empty training split, codes outside the feature's
            vocabulary, or a catalogue without items (every training row out of vocabulary);
            (:meth:`negatives`) a batch item without training rows.
    """

    component = "mixed"
    draws_extra = True

    def __init__(self, item_feature: str, num_negatives: int = 256, alpha: float = 0.0,
                 log_q_correction: bool = True, *,
                 feature_info: Mapping[str, FeatureInfo], tasks: Sequence[TaskSpec]) -> None:
        super().__init__(item_feature, log_q_correction, feature_info=feature_info, tasks=tasks)
        if isinstance(num_negatives, bool) or not isinstance(num_negatives, int) or num_negatives < 1:
            raise ArgumentError("num_negatives", f"num_negatives must be an integer >= 1 (items drawn per batch), "
                                f"got {num_negatives!r}; for the batch's items alone use sampler 'in-batch'")
        if not math.isfinite(alpha):
            raise ArgumentError("alpha", f"alpha must be a finite number (0: uniform, as in Yang et al.), got {alpha}")
        self.num_negatives = num_negatives
        self.alpha = float(alpha)

    def tables(self, counts: torch.Tensor) -> dict[str, torch.Tensor]:
        in_catalogue = counts > 0
        in_catalogue[0] = False                                   # out-of-vocabulary code
        if not bool(in_catalogue.any()):
            raise DataError(f"mixed: every training row of '{self.item_feature}' is out of vocabulary (code 0); "
                            "there is no catalogue item to sample. Lower data.min_count.")
        w = torch.where(in_catalogue, counts.double().clamp_min(1) ** self.alpha, 0.0)
        return {"p_data": (counts.double() / counts.sum()).float(), "p_sample": (w / w.sum()).float(),
                "cdf": torch.cumsum(w / w.sum(), 0)}

    def negatives(self, items: torch.Tensor, generator: torch.Generator | None) -> Negatives:
        """``num_negatives`` catalogue items (drawn on ``generator``'s device, or ``items``'
        without one) and ``log Q`` of the batch's and the extra items, on ``items.device``."""
        self.check_items(items)
        b, m = len(items), self.num_negatives
        device = generator.device if generator is not None else items.device
        cdf = self.table("cdf", device)                           # float64 [C]; inverse-CDF draw, any C
        u = torch.rand(m, generator=generator, device=device, dtype=torch.float64) * cdf[-1]
        extra = torch.searchsorted(cdf, u, right=True).clamp_max(len(cdf) - 1).to(items.device)
        if not self.log_q_correction:
            return Negatives(extra=extra, log_q_batch=torch.zeros(b, device=items.device),
                             log_q_extra=torch.zeros(m, device=items.device))
        p_data, p_sample = self.table("p_data", items.device), self.table("p_sample", items.device)

        def log_q(codes: torch.Tensor) -> torch.Tensor:
            return torch.log((b * p_data[codes] + m * p_sample[codes]) / (b + m))

        return Negatives(extra=extra, log_q_batch=log_q(items), log_q_extra=log_q(extra))
