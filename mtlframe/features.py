"""Feature and task descriptions shared by datasets, the preprocessor, encoders and the builder."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

#: column types a dataset may declare
FeatureType = Literal["categorical", "numeric", "text", "multi_categorical", "sequence"]
FEATURE_TYPES: tuple[str, ...] = ("categorical", "numeric", "text", "multi_categorical", "sequence")

#: task types and what they decide
TaskType = Literal["binary", "regression", "multiclass", "retrieval"]
TASK_TYPES: tuple[str, ...] = ("binary", "regression", "multiclass", "retrieval")
DEFAULT_METRICS: dict[str, list[str]] = {
    "binary": ["auc", "logloss"],
    "regression": ["rmse", "mae"],
    "multiclass": ["accuracy", "logloss"],
}
# (a retrieval task's defaults are the full-ranking metrics at each K of ``ranking.k``:
# :func:`mtlframe.recipe.default_task_metrics`)


@dataclass(frozen=True)
class FeatureInfo:
    """A fitted input feature, as encoders see it (injected into encoders as ``feature_info``).

    Attributes:
        name: column name; also the batch key of its tensor.
        type: one of :data:`FEATURE_TYPES`.
        cardinality: embedding rows needed (vocabulary size incl. index 0 = out-of-vocabulary /
            missing) for ``categorical`` and ``multi_categorical``; for ``sequence`` the rows of
            its id space incl. out-of-vocabulary (its ``share_with`` feature's cardinality when
            shared): the ``[B, L]`` codes are 0 = padding, ``c + 1`` = id-space code ``c`` (so
            codes run 0..cardinality); 0 otherwise.
        max_len: padded length ``L`` of a ``multi_categorical`` or ``sequence`` feature's ``[B, L]``
            tensor (a sequence is pre-padded: most recent id in the last column).
        share_with: ``sequence`` only: the categorical feature whose codes (and embedding table)
            the sequence's ids share (``seq_code - 1 == its code``), or ``None`` (own vocabulary).
        fields: ``sequence`` only: its side fields ``g``, batch keys ``<name>:<g>``, float32
            ``[B, L]`` standardized, 0 at padding.
    """

    name: str
    type: str
    cardinality: int = 0
    max_len: int = 0
    share_with: str | None = None
    fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class TaskSpec:
    """A resolved task (from the recipe's ``tasks:`` mapping plus fitted label info).

    Attributes:
        name: the task name (recipe key), also the batch key prefix ``label/<name>``.
        type: ``binary`` | ``regression`` | ``multiclass`` | ``retrieval`` (a two-tower score of
            the row's user and item, :mod:`mtlframe.retrieval`).
        label: source column in the dataset.
        weight: static loss weight (used by the ``static`` combiner and as a prior by others).
        metrics: metric names; the first is the task's primary metric.
        num_classes: output classes (multiclass), else 1.
        classes: class labels in index order (multiclass).
    """

    name: str
    type: str
    label: str
    weight: float = 1.0
    metrics: tuple[str, ...] = ()
    num_classes: int = 1
    classes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def output_dim(self) -> int:
        """Width of the tower output: ``C`` for multiclass, else 1."""
        return self.num_classes if self.type == "multiclass" else 1

    @property
    def primary_metric(self) -> str:
        return self.metrics[0]


def label_key(task: str) -> str:
    """Batch key of a task's label tensor ``[B]`` (NaN / -1 where missing)."""
    return f"label/{task}"


def mask_key(task: str) -> str:
    """Batch key of a task's label mask ``[B]`` (bool, True where the label is present)."""
    return f"mask/{task}"


#: batch key of the ``metrics_group`` ids ``[B]`` (int64, dense per split; -1 where the value is
#: missing). Present in validation and test batches only, and only when a task lists a grouped
#: metric (``gauc``, ``ndcg@K``, ...).
GROUP_KEY = "group/metrics"
