"""The sampler contract.

Data-side samplers (``side = "data"``) change the training split once per epoch (:meth:`Sampler.sample`:
keep rows, add rows). Model-side samplers (``side = "model"``, :class:`ModelSideSampler`) leave
the data alone and give the model, for every training batch, the items to score as negatives
and their log sampling probabilities (:class:`Negatives`, for the logQ correction of a
sampled softmax).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from mtlframe.batching import id_codes
from mtlframe.errors import ArgumentError, DataError
from mtlframe.features import FeatureInfo, TaskSpec


@dataclass
class EpochSample:
    """What a sampler returns for one epoch.

    Attributes:
        keep: indices ``[N']`` of the training rows to use this epoch, or ``None`` for all of them.
        extra: new rows as *preprocessed* columns (the same keys as the input to
            :meth:`Sampler.sample`: one ``[M, ...]`` tensor or numpy array per feature, plus
            ``label/<task>`` and ``mask/<task>`` for every task), or ``None``. The data module
            featurizes them with the model's encoders and appends them to the kept rows.
    """

    keep: torch.Tensor | None = None
    extra: dict[str, Any] | None = None


class Sampler:
    """Base class of training samplers (negative sampling, down-sampling, ...).

    Constructor: typed hyper-parameters plus the injected ``feature_info: dict[str, FeatureInfo]``
    and ``tasks: list[TaskSpec]``. :meth:`sample` runs at the start of every training epoch on the
    preprocessed training columns, with vectorized tensor ops (never per-row Python); validation
    and test data are never sampled. ``resamples = False`` (the default of the ``none`` sampler)
    tells the data module that nothing changes, so it batches the training rows directly.
    """

    injected: ClassVar[tuple[str, ...]] = ("feature_info", "tasks")
    resamples: ClassVar[bool] = True
    #: ``"data"``: changes the training rows (:meth:`sample`); ``"model"``: gives the model
    #: negatives per batch (:class:`ModelSideSampler`)
    side: ClassVar[str] = "data"

    def __init__(self, feature_info: Mapping[str, FeatureInfo], tasks: Sequence[TaskSpec]) -> None:
        self.feature_info = dict(feature_info)
        self.tasks = list(tasks)

    def prepare(self, splits: Mapping[str, Mapping[str, Any]]) -> None:
        """Called once before training with every split's preprocessed columns (``train``,
        ``val``, ``test``), e.g. to remember evaluation positives. Default: nothing."""

    def sample(self, columns: Mapping[str, Any], generator: torch.Generator) -> EpochSample:
        """Return this epoch's changes to the training rows (``columns``: name -> ``[N, ...]``)."""
        return EpochSample()


@dataclass
class Negatives:
    """The negatives of one training batch, from a :class:`ModelSideSampler`.

    The retrieval loss scores each anchor row ``b`` against every batch row's item and every
    extra item: logits ``[B, B + M] = [u·v_batch, u·v_extra] / T - [log_q_batch, log_q_extra]``
    (the logQ correction; all zeros when the sampler's ``log_q_correction`` is off).

    Attributes:
        extra: int64 ``[M]`` item codes drawn from the catalogue (empty for ``in-batch``).
        log_q_batch: float32 ``[B]`` log probability of each batch row's item as a negative.
        log_q_extra: float32 ``[M]`` the same for each extra item.
    """

    extra: torch.Tensor
    log_q_batch: torch.Tensor
    log_q_extra: torch.Tensor


class ModelSideSampler(Sampler):
    """Base of model-side samplers: negatives are chosen per batch, inside the model's step.

    ``side = "model"``, ``resamples = False`` (the training rows are batched as they are). The
    item id feature is a recipe parameter (``item_feature``: the encoded item id column, the
    first of ``ranking.item_features``); :meth:`prepare` counts its training rows per code
    (``counts [C]``, ``C`` the feature's cardinality from the injected ``feature_info``, code 0 =
    out of vocabulary). The *catalogue* is every code ``>= 1`` with a training row.

    Args:
        item_feature: the encoded item id column (categorical; the first of
            ``ranking.item_features``).
        log_q_correction: return the log sampling probabilities (``True``) or zeros.
        feature_info, tasks: injected.

    Raises:
        ValueError: (:class:`~mtlframe.errors.ArgumentError`) ``item_feature`` is not a
            categorical model feature.
    """

    side = "model"
    resamples = False
    #: whether :meth:`negatives` draws items beyond the batch's own (``mixed``); without them a
    #: row's only negatives are the other rows' items, so a batch needs at least two rows
    draws_extra: ClassVar[bool] = False
    #: the registered name, used in error messages
    component: ClassVar[str] = "sampler"

    def __init__(self, item_feature: str, log_q_correction: bool = True, *,
                 feature_info: Mapping[str, FeatureInfo], tasks: Sequence[TaskSpec]) -> None:
        super().__init__(feature_info, tasks)
        info = self.feature_info.get(item_feature)
        if info is None or info.type != "categorical":
            cats = [n for n, f in self.feature_info.items() if f.type == "categorical"]
            what = "is not a model feature" if info is None else f"is a {info.type} feature"
            raise ArgumentError("item_feature", f"item_feature '{item_feature}' {what}; it must be the "
                                f"categorical item id column. Categorical features: {', '.join(cats) or 'none'}")
        self.item_feature = item_feature
        self.log_q_correction = bool(log_q_correction)
        self.counts: torch.Tensor | None = None
        self._tables: dict[torch.device, dict[str, torch.Tensor]] = {}

    def prepare(self, splits: Mapping[str, Mapping[str, Any]]) -> None:
        """Count the training rows of every item code (``self.counts``: int64 ``[C]``).

        Raises:
            DataError: no training rows, or codes outside ``[0, C)`` (not the encoded column).
        """
        cardinality = self.feature_info[self.item_feature].cardinality
        train = splits.get("train") or {}
        if self.item_feature not in train:
            raise DataError(f"{self.component}: the training split has no column '{self.item_feature}' "
                            "(data.sampler.item_feature): name the item id feature.")
        codes = id_codes(train[self.item_feature])
        if not len(codes):
            raise DataError(f"{self.component}: the training split is empty; there are no items to sample.")
        lo, hi = int(codes.min()), int(codes.max())
        if lo < 0 or hi >= cardinality:
            raise DataError(f"{self.component}: '{self.item_feature}' holds codes in [{lo}, {hi}] outside [0, {cardinality}) "
                            "(its cardinality): item_feature must be the encoded item id column.")
        self.counts = torch.bincount(codes, minlength=cardinality)
        self._tables = {torch.device("cpu"): {"counts": self.counts, **self.tables(self.counts)}}

    def tables(self, counts: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-code tables ``[C]`` that :meth:`negatives` reads, from the training counts ``[C]``
        (built on the CPU by :meth:`prepare`, copied once to each device :meth:`table` is asked
        for). Default: none besides ``counts``."""
        return {}

    def table(self, name: str, device: torch.device) -> torch.Tensor:
        """A table of :meth:`tables` (or ``counts``) on ``device`` (copied once per device)."""
        if self.counts is None:
            raise RuntimeError(f"{type(self).__name__}.prepare(splits) must run before negatives()")
        cpu = torch.device("cpu")
        if device not in self._tables:
            self._tables[device] = {k: v.to(device) for k, v in self._tables[cpu].items()}
        return self._tables[device][name]

    def check_items(self, items: torch.Tensor) -> None:
        """Refuse batch items without a training row (their logQ would be -inf). One host sync.

        Raises:
            DataError: naming up to five such codes.
        """
        counts = self.table("counts", items.device)
        inside = (items >= 0) & (items < len(counts))
        bad = ~inside | (counts[items.clamp(0, len(counts) - 1)] == 0)
        if bool(bad.any()):
            codes = items[bad].unique()[:5].tolist()
            raise DataError(f"{self.component}: batch items {codes} of '{self.item_feature}' have no training row, so "
                            "their sampling probability is 0; model-side samplers take training batches only.")

    def negatives(self, items: torch.Tensor, generator: torch.Generator | None) -> Negatives:
        """The negatives of a training batch whose rows have item codes ``items`` (int64 ``[B]``).

        ``generator`` drives any random draw (``None``: torch's global generator); the returned
        tensors are on ``items.device``.
        """
        raise NotImplementedError
