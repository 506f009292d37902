"""Train the tiny synthetic model on fixed global batches with sparse labels, through Lightning's
``Trainer``, on one process or on two (``strategy="ddp"``, gloo on CPU); rank zero saves the final
weights, the logged epoch values and the validation scores. Used by ``tests/test_ddp_sparse.py``::

    python tests/ddp_sparse_run.py OUT COMBINER[@SETUP][,...] DEVICES      # writes OUT.<combiner>[@SETUP].pt

Each global batch has ``2 * B`` rows; with two processes rank ``r`` gets rows ``[r B, (r+1) B)``
of it, with one process the whole batch is one step. Labels are masked per step so that a task is
labelled on both processes (with different counts), on one only, or on neither.

``SETUP`` ``funnel``: an ``escm2`` backbone (DR, with its auxiliary losses) over two binary tasks,
``click -> buy``, with labelled rows uneven across the processes (:data:`FUNNEL_PLAN`).
"""
from __future__ import annotations

import os
import sys

import torch

B = 8
#: labelled rows per step, per task: (rows of rank 0's half, rows of rank 1's half) labelled
PLAN = [
    {"task_0": (8, 8), "task_1_bin": (3, 7)},   # both tasks on both processes, uneven counts
    {"task_0": (8, 2), "task_1_bin": (5, 0)},   # task_1_bin on rank 0 only
    {"task_0": (4, 6), "task_1_bin": (0, 0)},   # task_1_bin on neither
    {"task_0": (6, 0), "task_1_bin": (0, 2)},   # each task on a different process only
    {"task_0": (0, 0), "task_1_bin": (0, 0)},   # nothing labelled anywhere: the step is skipped
    {"task_0": (0, 0), "task_1_bin": (8, 1)},   # task_0 on neither
]
#: validation: task_1_bin labelled on rank 0's half only, task_0 nowhere (its metrics are NaN)
VAL_PLAN = {"task_0": (0, 0), "task_1_bin": (8, 0)}

#: an ESCM2 funnel (click -> buy) whose auxiliary losses (escm2/dr, escm2/imputation) are means
#: over rows with a known click: uneven across the processes at every step
FUNNEL = {
    "tasks": {"click": {"type": "binary", "label": "task_0_bin"}, "buy": {"type": "binary", "label": "task_1_bin"}},
    "model.backbone": {"name": "escm2", "counterfactual": "dr", "counterfactual_weight": 1.0, "click": "click",
                       "conversion": "buy", "imputation_hidden": [8], "hidden": [8]},
}
FUNNEL_PLAN = [
    {"click": (8, 2), "buy": (6, 1)},
    {"click": (3, 8), "buy": (3, 8)},
    {"click": (8, 8), "buy": (1, 7)},
    {"click": (0, 6), "buy": (0, 6)},   # rank 0: no row for the auxiliary losses
]
SETUPS = {"funnel": (FUNNEL, FUNNEL_PLAN, {"click": (8, 8), "buy": (8, 8)})}


def _masked(columns, plan):
    from mtlframe.features import label_key, mask_key

    out = dict(columns)
    for task, (n0, n1) in plan.items():
        mask = torch.zeros(2 * B, dtype=torch.bool)
        mask[:n0] = True
        mask[B:B + n1] = True
        out[mask_key(task)] = mask
        out[label_key(task)] = torch.where(mask, columns[label_key(task)], torch.nan)
    return out


def main(out: str, combiner: str, devices: int, nan_loss: str | None = None, lr: float = 0.05,
         plan: list | None = None, inf_label: tuple[int, str] | None = None, accumulate: int = 1,
         optimizer: dict | None = None, drop: int | None = None, setup: str | None = None, log_every: int = 1,
         callbacks: list | None = None) -> dict:
    import pytorch_lightning as pl
    from pytorch_lightning.loggers import CSVLogger

    from mtlframe.batching import take
    from mtlframe.features import label_key
    from mtlframe.recipe import recipe_from_dict
    from mtlframe.run import build_system
    from mtlframe.testing import RankBatches, tiny_recipe

    torch.set_num_threads(1)
    overrides = {} if nan_loss is None else {"trainer.nan_loss": nan_loss}
    val_plan = VAL_PLAN
    if setup is not None:
        extra, plan, val_plan = SETUPS[setup]
        overrides.update(extra)
    recipe = recipe_from_dict(tiny_recipe(combiner={"name": combiner}, optimizer=optimizer or {"name": "sgd", "lr": lr},
                                          **overrides), "<ddp sparse>")
    pl.seed_everything(7, verbose=False)
    dm, module, _ = build_system(recipe)
    train_cols, val_cols = dm.columns["train"], dm.columns["val"]
    batches = [_masked(take(train_cols, torch.arange(k * 2 * B, (k + 1) * 2 * B)), step_plan)
               for k, step_plan in enumerate(plan or PLAN)]
    if drop is not None:
        del batches[drop]
    if inf_label is not None:  # a label of +inf: that step's loss is infinite
        step, task = inf_label
        batches[step][label_key(task)][0] = float("inf")
    val = [_masked(take(val_cols, torch.arange(0, 2 * B)), val_plan)]
    init = {k: v.detach().clone() for k, v in module.state_dict().items()}
    box = []
    trainer = pl.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                         max_epochs=1, log_every_n_steps=log_every, num_sanity_val_steps=0, accumulate_grad_batches=accumulate,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         use_distributed_sampler=False, logger=CSVLogger(os.path.dirname(out), name="logs"),
                         callbacks=callbacks)
    box.append(trainer)
    trainer.fit(module, train_dataloaders=RankBatches(batches, box), val_dataloaders=RankBatches(val, box))
    result = {"weights": {k: v.detach().clone() for k, v in module.state_dict().items()}, "init": init,
              "logged": {k: float(v) for k, v in trainer.logged_metrics.items()},
              "val": module.last_scores.get("val", {}), "skipped": getattr(module, "skipped_steps", None)}
    if trainer.is_global_zero:
        torch.save(result, out)
    return {**result, "module": module, "batches": batches}


if __name__ == "__main__":
    # COMBINERS is comma-separated: one launch of the processes trains each in turn (later
    # Trainers reuse the processes and the process group), saving OUT.<combiner>.pt
    out, combiners, devices = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3])
    for entry in combiners:
        name, _, setup = entry.partition("@")
        main(f"{out}.{entry}.pt", name, devices, setup=setup or None)
