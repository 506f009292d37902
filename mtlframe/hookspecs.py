"""Every extension point of mtlframe, one hook per component kind.

A plugin is a module (usually a pip-installable distribution with an entry point in the
``mtlframe`` group) that implements some of these hooks with :data:`hookimpl`. Each hook returns
a list of :class:`ComponentSpec` records (defined here, beside the hooks that return them). The ``factory`` of a record may be a
lazy ``"package.module:Attr"`` string, so listing plugins never imports heavy dependencies.

Example plugin module::

    from mtlframe import hookimpl, ComponentSpec

    @hookimpl
    def mtlframe_encoders():
        return [ComponentSpec("my-encoder", "my_pkg.encoder:MyEncoder",
                              "Hashes user agent strings into an embedding.")]

and in the plugin's ``pyproject.toml``::

    [project.entry-points.mtlframe]
    my-plugin = "my_pkg.plugin"

Built-in components are registered through these very hooks by :mod:`mtlframe.builtins`.

Argument checks: a component's constructor raises :class:`~mtlframe.errors.ArgumentError`
(``ArgumentError("dim", "dim must be >= 1, got 0")``) for a bad value; ``mtlframe recipe
validate`` finds it without data by building the component with stand-ins for the injected
values, or, when the component defines the classmethod ``validate_args(args, context)``, by
calling that instead (see :mod:`mtlframe.validation` and the plugin tutorial,
``plugins/mtlframe-example/README.md``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import pluggy

PROJECT = "mtlframe"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@dataclass(frozen=True)
class ComponentSpec:
    """A component offered by a plugin.

    Args:
        name: the bare name used in recipes (``"mmoe"``). Lower case, ``-`` between words.
        factory: the class or function that builds it, or a lazy ``"package.module:Attr"`` string
            imported only when the component is used.
        summary: one line shown by ``mtlframe plugins``.
    """

    name: str
    factory: Callable[..., Any] | str
    summary: str = ""


@hookspec
def mtlframe_datasets():
    """Register dataset loaders (subclasses of :class:`mtlframe.datasets.base.RecDataset`).

    Called once when the registry is first used. Returns ``list[ComponentSpec]``.

    Example::

        @hookimpl
        def mtlframe_datasets():
            return [ComponentSpec("ali-ccp", "my_pkg.data:AliCCP", "Ali-CCP click/conversion logs")]
    """


@hookspec
def mtlframe_encoders():
    """Register feature encoders (subclasses of :class:`mtlframe.encoders.base.Encoder`).

    An encoder maps some batch columns to a ``[B, d]`` tensor. Returns ``list[ComponentSpec]``.

    Example::

        @hookimpl
        def mtlframe_encoders():
            return [ComponentSpec("hashed", "my_pkg.enc:HashedEncoder", "hashing-trick embeddings")]
    """


@hookspec
def mtlframe_backbones():
    """Register shared multi-task backbones (subclasses of :class:`mtlframe.backbones.base.Backbone`).

    A backbone maps ``x: [B, D]`` to ``{task: h_t [B, H_t]}``. Returns ``list[ComponentSpec]``.

    Example::

        @hookimpl
        def mtlframe_backbones():
            return [ComponentSpec("my-moe", "my_pkg.moe:MyMoE", "sparse mixture of experts")]
    """


@hookspec
def mtlframe_towers():
    """Register task towers (subclasses of :class:`mtlframe.towers.base.Tower`).

    A tower maps ``h_t: [B, H_t]`` to ``[B, out_dim]``. Returns ``list[ComponentSpec]``.

    Example::

        @hookimpl
        def mtlframe_towers():
            return [ComponentSpec("linear", "my_pkg.towers:Linear", "a single linear layer")]
    """


@hookspec
def mtlframe_combiners():
    """Register loss combiners (subclasses of :class:`mtlframe.combiners.base.LossCombiner`).

    A combiner turns per-task losses into one update. Returns ``list[ComponentSpec]``.

    Example::

        @hookimpl
        def mtlframe_combiners():
            return [ComponentSpec("equal", "my_pkg.comb:Equal", "L = mean of task losses")]
    """


@hookspec
def mtlframe_samplers():
    """Register training-data samplers (subclasses of :class:`mtlframe.samplers.base.Sampler`).

    Returns ``list[ComponentSpec]``.

    Example::

        @hookimpl
        def mtlframe_samplers():
            return [ComponentSpec("pop-neg", "my_pkg.samp:PopularityNegatives", "popularity negatives")]
    """


@hookspec
def mtlframe_metrics():
    """Register evaluation metrics (factories returning a :class:`torchmetrics.Metric`).

    Each spec points at a :class:`mtlframe.metrics.base.MetricDef`. A definition with
    ``cutoff=True`` is written ``name@K`` in recipes and built with ``k=K``; one with
    ``grouped=True`` is updated with the rows' group ids (the recipe's ``metrics_group``), like
    the built-in ``gauc`` and ``ndcg@K``. Returns ``list[ComponentSpec]``.

    Example::

        @hookimpl
        def mtlframe_metrics():
            return [ComponentSpec("brier", "my_pkg.metrics:brier", "Brier score (binary tasks)")]
    """


@hookspec
def mtlframe_schedulers():
    """Register learning-rate schedules (subclasses of :class:`mtlframe.schedulers.base.LRSchedule`).

    A schedule's ``build(optimizer, total_steps, mode)`` returns a ``torch.optim.lr_scheduler``
    object over every parameter group; the recipe names it in ``optimizer.scheduler`` with an
    ``interval`` (``step`` or ``epoch``). Returns ``list[ComponentSpec]``.

    Example::

        @hookimpl
        def mtlframe_schedulers():
            return [ComponentSpec("poly", "my_pkg.sched:PolynomialDecay", "polynomial decay to zero")]

    with ``my_pkg/sched.py``::

        import torch
        from mtlframe.schedulers.base import LRSchedule

        class PolynomialDecay(LRSchedule):
            def __init__(self, power: float = 1.0) -> None:
                self.power = power

            def build(self, optimizer, total_steps, mode="max"):
                return torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=total_steps,
                                                             power=self.power)
    """
