"""``mtlframe train`` (the command line, unchanged) with two test observers added to the run's
Lightning callbacks, for ``tests/test_multinode.py``::

    python tests/multinode_run.py train RECIPE --run-dir DIR [key=value ...]      # = mtlframe train ...
    python -m torch.distributed.run ... tests/multinode_run.py train ...          # one "node"

Set in the environment (inherited by the processes Lightning or torchrun start):

* ``MTLFRAME_TEST_ROWS=DIR``: each process saves ``DIR/rows.<global rank>.pt``, the numeric feature
  rows of every training batch it trained, per epoch (``{epoch: [rows [n, 8], ...]}``), and its
  ``(global_rank, world_size, node_rank, local_rank)``, at the end of training or at an exception;
* ``MTLFRAME_TEST_STOP_AT=STEP``: every process raises ``KeyboardInterrupt`` after optimizer step
  ``STEP`` (a multi-process run stopped at a known step, as by Ctrl-C reaching every process).
"""
from __future__ import annotations

import os
import sys

import pytorch_lightning as pl
import torch


class RowLog(pl.Callback):
    def __init__(self, out: str) -> None:
        self.out = out
        self.epochs: dict[int, list[torch.Tensor]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        key = next(k for k in batch if k.startswith("num:"))
        self.epochs.setdefault(trainer.current_epoch, []).append(batch[key].detach().clone())

    def on_train_end(self, trainer, pl_module) -> None:
        self._save(trainer)

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._save(trainer)

    def _save(self, trainer) -> None:
        os.makedirs(self.out, exist_ok=True)
        torch.save({"epochs": self.epochs, "ranks": (trainer.global_rank, trainer.world_size, trainer.node_rank,
                                                     trainer.local_rank)},
                   os.path.join(self.out, f"rows.{trainer.global_rank}.pt"))


class StopAt(pl.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise KeyboardInterrupt


def _observed(train):
    def wrapped(*args, callbacks=None, **kwargs):
        extra = list(callbacks or [])
        if os.environ.get("MTLFRAME_TEST_ROWS"):
            extra.append(RowLog(os.environ["MTLFRAME_TEST_ROWS"]))
        if os.environ.get("MTLFRAME_TEST_STOP_AT"):
            extra.append(StopAt(int(os.environ["MTLFRAME_TEST_STOP_AT"])))
        return train(*args, callbacks=extra, **kwargs)
    return wrapped


if __name__ == "__main__":
    from mtlframe import cli, run

    torch.set_num_threads(1)
    run.train = _observed(run.train)
    sys.exit(cli.main(sys.argv[1:]))
