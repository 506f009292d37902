"""The learning-rate schedule contract (component kind ``scheduler``).

A recipe names one in ``optimizer.scheduler``::

    optimizer:
      name: adam
      lr: 0.001
      scheduler: {name: cosine, interval: step, warmup: 200, min_lr_ratio: 0.05}

``name`` picks the component and ``interval`` (``step``: after every optimizer step, ``epoch``:
after every training epoch; default the component's :attr:`LRSchedule.default_interval`) is
mtlframe's; the other keys are the component's constructor arguments, checked against its
signature like every component's. A schedule is a subclass of :class:`LRSchedule` whose
:meth:`~LRSchedule.build` returns a ``torch.optim.lr_scheduler`` object over the whole optimizer:
every parameter group follows it, each from its own learning rate (the dense parameters'
``optimizer.lr``, the sparse tables' ``optimizer.sparse_lr``, a text encoder's own ``lr``), so a
multiplicative schedule keeps their ratios.

``total_steps`` passed to :meth:`~LRSchedule.build` is the length of the run in the schedule's
interval: optimizer steps (Lightning's ``estimated_stepping_batches``: ``trainer.max_epochs`` x
steps per epoch, or ``trainer.max_steps`` when set, with gradient accumulation and
``limit_train_batches`` taken into account) or epochs (``trainer.max_epochs``).
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch

#: the values of ``optimizer.scheduler.interval``
INTERVALS = ("step", "epoch")


class LRSchedule:
    """Base class of learning-rate schedules.

    Subclasses take their recipe arguments in the constructor (typed, no ``**kwargs``; a bad
    value raises :class:`~mtlframe.errors.ArgumentError` naming the parameter, so ``recipe
    validate`` reports it at ``optimizer.scheduler.<param>``) and implement :meth:`build`.

    Class attributes:
        default_interval: ``"step"`` or ``"epoch"``, when the recipe gives no ``interval``.
        intervals: the intervals it supports (``plateau``: ``("epoch",)``).
        needs_monitor: steps on a monitored value (``ReduceLROnPlateau``): mtlframe passes the
            recipe's checkpoint monitor (``checkpoint.monitor``, ``val/score`` by default) and
            :meth:`build` receives its ``mode`` (``"min"`` or ``"max"``).
        extendable: a run resumed with a longer ``trainer.max_epochs`` / ``max_steps`` can go on
            with it (False when the saved state fixes the run's length, as ``OneCycleLR``'s does:
            ``train --resume`` then refuses a longer run up front).
    """

    default_interval: ClassVar[str] = "step"
    intervals: ClassVar[tuple[str, ...]] = INTERVALS
    needs_monitor: ClassVar[bool] = False
    extendable: ClassVar[bool] = True

    def build(self, optimizer: torch.optim.Optimizer, total_steps: int, mode: str = "max") -> Any:
        """The ``torch.optim.lr_scheduler`` scheduler over ``optimizer`` (every group).

        Args:
            optimizer: the run's optimizer (a :class:`~mtlframe.optim.HybridOptimizer` with
                sparse tables: one object over the dense and sparse groups).
            total_steps: the run's length in ``interval`` units (steps or epochs), >= 1.
            mode: the monitor's direction (``needs_monitor`` schedules only).

        Raises:
            ArgumentError: the arguments do not fit this run (e.g. a warm-up longer than the run).
        """
        raise NotImplementedError
