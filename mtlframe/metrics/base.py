"""The metric contract: a named factory of per-task :class:`torchmetrics.Metric` objects."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mtlframe.features import TaskSpec


@dataclass(frozen=True)
class MetricDef:
    """A registered metric.

    Attributes:
        build: ``task -> torchmetrics.Metric``. The metric's ``update(preds, target)`` receives
            probabilities ``[B]`` (binary), probabilities ``[B, C]`` (multiclass) or predictions
            ``[B]`` (regression), and targets ``[B]`` with missing labels already removed.
        higher_is_better: direction, used by the default checkpoint monitor.
        task_types: task types the metric applies to.
        summary: one line for docs and ``mtlframe plugins``.
    """

    build: Callable[[TaskSpec], Any]
    higher_is_better: bool
    task_types: tuple[str, ...]
    summary: str = ""

    def __call__(self, task: TaskSpec) -> Any:
        return self.build(task)
