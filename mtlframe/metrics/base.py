"""The metric contract: a named factory of per-task :class:`torchmetrics.Metric` objects.

A recipe names a metric by its registered name (``auc``), or, for a metric with a cutoff, by
``name@K`` (``ndcg@10``). Grouped metrics (``gauc``, ``ndcg@K``, ...) are computed per group of
rows (per user) and need the recipe's ``metrics_group`` column.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mtlframe.errors import MTLFrameError
from mtlframe.features import TaskSpec


#: ``metrics_group.gauc_weight`` values: a group's weight in GAUC is its rows or its positive rows.
GAUC_WEIGHTS = ("impressions", "clicks")


@dataclass(frozen=True)
class GroupCounts:
    """How many groups a grouped metric saw and how many it skipped (no defined value: a GAUC
    group with one class, an NDCG / recall / hit-rate group without a relevant row)."""

    groups: int
    skipped: int


@dataclass(frozen=True)
class MetricDef:
    """A registered metric.

    Attributes:
        build: ``task -> torchmetrics.Metric``. The metric's ``update(preds, target)`` receives
            probabilities ``[B]`` (binary), probabilities ``[B, C]`` (multiclass) or predictions
            ``[B]`` (regression), and targets ``[B]`` with missing labels already removed.
            A ``grouped`` metric's build also takes ``group`` (the recipe's
            :class:`~mtlframe.recipe.MetricsGroupConfig`) and its ``update(preds, target, indexes)``
            also receives the rows' group ids ``indexes [B]`` (int64). A ``cutoff`` metric's build
            also takes ``k`` (the ``K`` of ``name@K``).
        higher_is_better: direction, used by the default checkpoint monitor.
        task_types: task types the metric applies to.
        summary: one line for docs and ``mtlframe plugins``.
        grouped: computed per group of rows; the recipe must set ``metrics_group``.
        cutoff: written ``name@K`` in recipes (``K`` a positive integer).
        paper: where the metric is defined, for the docs.
    """

    build: Callable[..., Any]
    higher_is_better: bool
    task_types: tuple[str, ...]
    summary: str = ""
    grouped: bool = False
    cutoff: bool = False
    paper: str = ""

    def __call__(self, task: TaskSpec, **options: Any) -> Any:
        return self.build(task, **options)

    def bind(self, **options: Any) -> MetricDef:
        """This definition with ``options`` (``k``, ``group``) fixed: its build takes the task only."""
        if not options:
            return self
        return dataclasses.replace(self, build=functools.partial(self.build, **options))


class MetricNameError(MTLFrameError):
    """A metric name's ``@K`` part is malformed, missing or not accepted by the metric."""


def split_metric_name(name: str) -> tuple[str, str | None]:
    """``"ndcg@10" -> ("ndcg", "10")``; ``"auc" -> ("auc", None)``."""
    base, sep, k = name.rpartition("@")
    return (base, k) if sep else (name, None)


def metric_cutoff(name: str, mdef: MetricDef) -> int | None:
    """The ``K`` of ``name@K`` for a cutoff metric (``None`` for other metrics).

    Raises:
        MetricNameError: ``K`` is not a positive integer, a cutoff metric has no ``@K``, or a
            metric without a cutoff has one.
    """
    base, k = split_metric_name(name)
    if not mdef.cutoff:
        if k is not None:
            raise MetricNameError(f"metric '{base}' takes no @K cutoff; write '{base}'.")
        return None
    if k is None:
        raise MetricNameError(f"metric '{base}' ranks each group's rows and needs a cutoff: write "
                              f"'{base}@K' with K a positive integer, e.g. '{base}@10'.")
    if not k.isdigit() or int(k) < 1:
        raise MetricNameError(f"'{name}': the cutoff K of '{base}@K' must be a positive integer (the "
                              f"top K rows of each group are scored), e.g. '{base}@10'.")
    return int(k)


def resolve_metric(name: str, where: str | None = None) -> tuple[Any, MetricDef, int | None]:
    """Look up a recipe metric name (``auc``, ``ndcg@10``, ``mtlframe:ndcg@10``) in the registry.

    Returns:
        ``(component, definition, K)``; ``K`` is ``None`` unless the metric takes a cutoff.

    Raises:
        UnknownComponentError: no metric of that name is registered.
        MetricNameError: a malformed or missing ``@K`` (see :func:`metric_cutoff`).
    """
    from mtlframe.registry import get_registry

    comp = get_registry().get("metric", split_metric_name(name)[0], where=where)
    mdef = comp.load()
    k = metric_cutoff(name, mdef) if isinstance(mdef, MetricDef) else None
    return comp, mdef, k
