"""Feature and task descriptions shared by datasets, the preprocessor, encoders and the builder."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

#: column types a dataset may declare
FeatureType = Literal["categorical", "numeric", "text", "multi_categorical"]
FEATURE_TYPES: tuple[str, ...] = ("categorical", "numeric", "text", "multi_categorical")

#: task types and what they decide
TaskType = Literal["binary", "regression", "multiclass", "retrieval"]
TASK_TYPES: tuple[str, ...] = ("binary", "regression", "multiclass", "retrieval")
DEFAULT_METRICS: dict[str, list[str]] = {
    "binary": ["auc", "logloss"],
    "regression": ["rmse", "mae"],
    "multiclass": ["accuracy", "logloss"],
    # full-ranking metrics over the whole catalogue (see docs/ranking.md)
    "retrieval": ["ndcg@10", "recall@10", "hit@10", "mrr@10", "precision@10"],
}


@dataclass(frozen=True)
class FeatureInfo:
    """A fitted input feature, as encoders see it (injected into encoders as ``feature_info``).

    Attributes:
        name: column name; also the batch key of its tensor.
        type: one of :data:`FEATURE_TYPES`.
        cardinality: embedding rows needed (vocabulary size incl. index 0 = out-of-vocabulary /
            missing) for ``categorical`` and ``multi_categorical``; 0 otherwise.
        max_len: padded length ``L`` of a ``multi_categorical`` feature's ``[B, L]`` tensor.
    """

    name: str
    type: str
    cardinality: int = 0
    max_len: int = 0


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
