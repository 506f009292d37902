"""Train the tiny synthetic recipe with three categorical features through Lightning's ``Trainer``
on fixed global batches, with the built-in ``embedding`` encoder or ``torchrec-embedding``, on one
process or on two (``strategy="ddp"``, gloo on CPU). Used by ``test_ddp_parity.py``::

    python ddp_run.py OUT ENTRY[,ENTRY...] DEVICES      # writes OUT.<entry>.pt (rank zero)

``ENTRY`` = ``ENCODER[@SHARDING[@OPTIMIZER[@MIN_PARTITION]]]``, e.g. ``torchrec@column-wise@sgd@2``.
Each global batch has ``2 * B`` rows; with two processes rank ``r`` trains on rows
``[r B, (r+1) B)`` of it, with one process the whole batch is one step: DDP's mean of the two
processes' gradients is the one process's gradient of the mean loss. Rank zero saves the final
weights (the sharded tables gathered whole), the initial ones, the logged values, the validation
scores, the sharding plan, and a checkpoint written by ``trainer.save_checkpoint`` (every process
takes part in writing it).
"""
from __future__ import annotations

import sys

import torch

B = 16
STEPS = 4
LR = 0.05
DIM = 8
FEATURES = ["cat_0", "cat_1", "cat_2"]


def encoder_spec(entry: str) -> dict:
    name, *rest = entry.split("@")
    if name == "embedding":
        return {"name": "embedding", "features": FEATURES, "dim": DIM}
    sharding, optimizer, min_partition = (rest + [None, None, None])[:3]
    spec = {"name": "torchrec-embedding", "features": FEATURES, "dim": DIM, "sharding": sharding or "table-wise",
            "optimizer": optimizer or "sgd", "lr": LR}
    if min_partition:
        spec["min_partition"] = int(min_partition)
    return spec


def main(out: str, entry: str, devices: int) -> dict:
    import pytorch_lightning as pl

    from mtlframe.batching import take
    from mtlframe.recipe import recipe_from_dict
    from mtlframe.run import build_system
    from mtlframe.testing import RankBatches, tiny_recipe

    torch.set_num_threads(1)
    recipe = recipe_from_dict(tiny_recipe(**{
        "data.dataset.num_categorical": 3, "data.dataset.num_rows": 400, "model.encoders[1]": encoder_spec(entry),
        "optimizer": {"name": "sgd", "lr": LR}}), "<torchrec ddp>")
    pl.seed_everything(7, verbose=False)
    dm, module, _ = build_system(recipe)
    train_cols, val_cols = dm.columns["train"], dm.columns["val"]
    batches = [take(train_cols, torch.arange(k * 2 * B, (k + 1) * 2 * B)) for k in range(STEPS)]
    val = [take(val_cols, torch.arange(0, 2 * B - 1))]           # 31 rows: 16 and 15 on the two processes
    init = {k: v.detach().clone() for k, v in module.state_dict().items()}
    box: list = []
    trainer = pl.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                         max_epochs=1, log_every_n_steps=1, num_sanity_val_steps=0,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         use_distributed_sampler=False, logger=False)
    box.append(trainer)
    trainer.fit(module, train_dataloaders=RankBatches(batches, box), val_dataloaders=RankBatches(val, box))
    weights = {k: v.detach().clone() for k, v in module.state_dict().items()}   # every process: a collective
    ckpt = f"{out}.ckpt"
    trainer.save_checkpoint(ckpt)
    enc = module.model.encoders[1]
    result = {"weights": weights, "init": init, "val": module.last_scores.get("val", {}),
              "logged": {k: float(v) for k, v in trainer.logged_metrics.items()},
              "plan": getattr(enc, "plan", None), "sharded": bool(getattr(enc, "sharded", False)),
              "checkpoint": ckpt, "world": trainer.world_size}
    if trainer.is_global_zero:
        torch.save(result, out)
    return result


if __name__ == "__main__":
    out, entries, devices = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3])
    for entry in entries:
        main(f"{out}.{entry}.pt", entry, devices)
