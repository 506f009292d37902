"""Host synchronisations per training step: ``python -m benchmarks.host_syncs [--accelerator gpu]
[--devices 2] [--output FILE]``.

Trains the tiny synthetic recipe (:func:`mtlframe.testing.tiny_recipe`, 2 epochs, batch 128,
``log_every_n_steps`` 4) under :class:`mtlframe.host_syncs.HostSyncCounter` and reports, per
training batch, the host reads made by mtlframe, Lightning and torchmetrics, split into logging
steps (``batch_idx % log_every_n_steps == 0``, where the logged values are read) and the others
(which should make none). On CUDA it also runs the steps under
``torch.cuda.set_sync_debug_mode("warn")`` and counts the synchronising CUDA calls per step (the
real check; the counter is the one that also runs on a CPU). With ``--devices 2`` Lightning
launches two processes (gloo on CPU, NCCL on GPUs); each rank writes ``FILE.rank<r>.json``.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import torch

OWNERS = ("mtlframe", "pytorch_lightning", "torchmetrics")


def count_training_syncs(overrides: dict[str, Any] | None = None, log_every: int = 4, epochs: int = 2,
                         cuda_debug: bool = False) -> dict[str, Any]:
    """Train the tiny recipe with ``overrides`` and count host reads per training batch.

    Returns ``{"log_every": k, "batches": N, "outside_logging": [event, ...], "logging": [...],
    "cuda_sync_warnings": {"outside_logging": n, "logging": n} (when ``cuda_debug``)}``; an event is
    ``{"epoch", "batch", "op", "where", "owner"}`` (owners mtlframe, pytorch_lightning,
    torchmetrics only: torch's own CPU-side optimizer counters are not device syncs).
    """
    import pytorch_lightning as pl

    from mtlframe.host_syncs import HostSyncCounter
    from mtlframe.recipe import recipe_from_dict
    from mtlframe.run import train
    from mtlframe.testing import tiny_recipe

    counter = HostSyncCounter()
    where: dict[int, tuple[int, int]] = {}   # counter step -> (epoch, batch_idx)
    cuda_warns = Counter()

    class Label(pl.Callback):
        """Label events with the batch: from its start to the end of Lightning's bookkeeping of it."""

        def __init__(self) -> None:
            self.n = 0
            self._catch = None

        def _close(self) -> None:
            if self._catch is not None:
                self._catch.__exit__(None, None, None)
                caught = self._w
                batch = where[counter.step][1]
                key = "logging" if batch % log_every == 0 else "outside_logging"
                cuda_warns[key] += sum("synchroniz" in str(w.message).lower() for w in caught)
                self._catch = None
            counter.step = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self._close()
            where[self.n] = (trainer.current_epoch, batch_idx)
            counter.step = self.n
            self.n += 1
            if cuda_debug:
                self._catch = warnings.catch_warnings(record=True)
                self._w = self._catch.__enter__()
                warnings.simplefilter("always")

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            self._close()

        def on_validation_start(self, trainer, pl_module) -> None:
            self._close()

    rec = {"trainer.max_epochs": epochs, "trainer.log_every_n_steps": log_every, "data.batch_size": 128,
           **(overrides or {})}
    recipe = recipe_from_dict(tiny_recipe(**rec), "<host syncs>")
    if cuda_debug:
        torch.cuda.set_sync_debug_mode("warn")
    label = Label()
    try:
        with tempfile.TemporaryDirectory(prefix="mtlframe-syncs-") as tmp, counter:
            train(recipe, Path(tmp) / "run", progress=False, callbacks=[label])
    finally:
        if cuda_debug:
            torch.cuda.set_sync_debug_mode(0)
    out: dict[str, Any] = {"log_every": log_every, "batches": label.n, "logging": [], "outside_logging": []}
    for e in counter.events:
        if e.step is None or e.owner not in OWNERS:
            continue
        epoch, batch = where[e.step]
        key = "logging" if batch % log_every == 0 else "outside_logging"
        out[key].append({"epoch": epoch, "batch": batch, "op": e.op, "where": e.where, "owner": e.owner})
    if cuda_debug:
        out["cuda_sync_warnings"] = dict(cuda_warns)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.host_syncs", description=__doc__.splitlines()[0])
    p.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"])
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--combiner", default="static")
    p.add_argument("--output", default=None, help="JSON file (per rank: FILE.rank<r>.json with --devices > 1)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    from mtlframe.run import _quiet_lightning
    _quiet_lightning()
    overrides = {"trainer.accelerator": a.accelerator, "trainer.devices": a.devices,
                 "combiner": {"name": a.combiner}}
    if a.devices > 1:
        overrides["trainer.strategy"] = "ddp"
    res = count_training_syncs(overrides, cuda_debug=a.accelerator == "gpu")
    rank = int(__import__("os").environ.get("LOCAL_RANK", "0"))
    res.update(accelerator=a.accelerator, devices=a.devices, combiner=a.combiner, rank=rank)
    print(f"[rank {rank}] {res['batches']} batches: {len(res['outside_logging'])} host read(s) outside logging "
          f"steps, {len(res['logging'])} in logging steps" + (
              f"; CUDA sync warnings {res['cuda_sync_warnings']}" if "cuda_sync_warnings" in res else ""))
    for e in res["outside_logging"][:10]:
        print(f"  epoch {e['epoch']} batch {e['batch']}: {e['op']} at {e['where']} ({e['owner']})")
    if a.output:
        path = Path(a.output if a.devices == 1 else f"{a.output}.rank{rank}.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
