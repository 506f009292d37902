"""`mtlframe train` of a ``data.stream`` recipe, recording each process's training rows; used by
``tests/test_stream_train.py`` (Lightning's DDP launcher runs this script again in each process)::

    python tests/stream_train_run.py RECIPE RUN_DIR SEEN_DIR

Each rank writes ``SEEN_DIR/rank<r>.json``: ``{epoch: [the rid codes of its training batches]}``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytorch_lightning as pl

from mtlframe.recipe import load_recipe
from mtlframe.run import train


class Seen(pl.Callback):
    def __init__(self, out: Path) -> None:
        self.out, self.rows = out, {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        key = pl_module.model.encoders[-1].key        # the last encoder embeds rid alone: [B, 1] codes
        self.rows.setdefault(str(trainer.current_epoch), []).extend(batch[key][:, 0].tolist())

    def on_train_end(self, trainer, pl_module) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.rows))


if __name__ == "__main__":
    recipe, run_dir, seen = sys.argv[1:4]
    train(load_recipe(recipe), run_dir, progress=False, callbacks=[Seen(Path(seen))])
