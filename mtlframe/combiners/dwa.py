"""``dwa``: dynamic weight average.

Liu, Johns, Davison. "End-to-End Multi-Task Learning with Attention." CVPR 2019 (MTAN), Sec. 3.3.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import ClassVar

import torch

from mtlframe.combiners._grad import present_tasks
from mtlframe.combiners.base import LossCombiner


class DWA(LossCombiner):
    """Weights from the rate at which each task's loss fell over the last two epochs.

    .. math:: w_k(t) = \\frac{K \\exp(r_k(t-1)/T)}{\\sum_i \\exp(r_i(t-1)/T)}, \\qquad
              r_k(t-1) = \\frac{\\bar L_k(t-1)}{\\bar L_k(t-2)}

    with ``\\bar L_k`` the epoch-mean training loss of task ``k`` (passed by the module to
    :meth:`on_train_epoch_end`), ``K`` the number of tasks and ``T`` the temperature. The weights
    sum to ``K``; in the first two epochs they are all 1. A slowly improving task (``r`` near or
    above 1) gets more weight. A task missing from either of the last two epochs' losses uses
    ``r = 1``. Within an epoch the weights are fixed; a task absent from a batch simply does not
    contribute (the others are not renormalized), as with ``static``.

    Under DDP the module must pass epoch means reduced over processes, so every process computes
    the same weights. The loss history and weights are buffers (saved in checkpoints).

    Args:
        temperature: ``T > 0``; larger is softer (the paper uses 2).
        task_names, weights: injected; the recipe's task weights are not used.

    Raises:
        ValueError: ``temperature <= 0``.

    Gradient accumulation: supported.
    """

    supports_gradient_accumulation: ClassVar[bool] = True

    def __init__(self, temperature: float = 2.0, *, task_names: list[str],
                 weights: dict[str, float] | None = None) -> None:
        super().__init__(task_names, weights)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        t = len(self.task_names)
        self.register_buffer("loss_history", torch.full((2, t), float("nan"), dtype=torch.float64))
        self.register_buffer("dwa_weights", torch.ones(t, dtype=torch.float64))
        self._host_weights: list[float] | None = None   # dwa_weights on the host

    def forward(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        tasks = present_tasks(losses, self.task_names)
        w = self.current_weights()
        return sum(w[t] * losses[t] for t in tasks)  # type: ignore[return-value]

    def current_weights(self) -> dict[str, float]:
        # the weights change once per epoch: a host copy, read once after each change (a device
        # buffer read at every step would stall an accelerator at every step)
        if self._host_weights is None:
            self._host_weights = self.dwa_weights.tolist()
        return dict(zip(self.task_names, self._host_weights))

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 (torch's hook)
        super()._load_from_state_dict(*args, **kwargs)
        self._host_weights = None

    def on_train_epoch_end(self, epoch_losses: Mapping[str, float]) -> None:
        """Shift the two-epoch loss history and recompute the weights for the next epoch."""
        latest = [float(epoch_losses[t]) if t in epoch_losses else math.nan for t in self.task_names]
        history = self.loss_history
        history[0] = history[1].clone()
        history[1] = torch.tensor(latest, dtype=history.dtype, device=history.device)
        ratio = history[1] / history[0].clamp_min(1e-12)
        ratio = torch.where(torch.isfinite(ratio), ratio, torch.ones_like(ratio))
        self.dwa_weights.copy_(len(self.task_names) * torch.softmax(ratio / self.temperature, 0))
        self._host_weights = None
