"""Data-only speed of a behaviour-history feature on MovieLens-100K.

    python -m benchmarks.sequence_data --data ../shared/data/ml-100k [--max-len 50] [--batch-size 4096]

Sets up ``recipes/movielens_mmoe.yaml`` with a leak-free history of the items
(``data.sequences.hist_items: {of: item_id, share_with: item_id, max_len: 50, fields: [rating]}``,
time split), then measures, medians over ``--repeats``:

* ``history_seconds``: :func:`mtlframe.history.build_history` over the 100,000 ratings (every
  row's previous ``max_len`` interactions, split-aware), alone;
* ``setup_seconds``: the whole data-module setup (load, split, histories, preprocessor fit and
  transform of every split);
* ``rows_per_second``: a data-only pass, the training columns (ids, the ``[N, 50]`` int32 history
  block, its float32 side field, labels) through :class:`~mtlframe.batching.ColumnBatches` at
  ``--batch-size`` with shuffling, as training reads them (``--epochs`` epochs, no model).

Writes ``results.json`` to ``--output``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sequence_data", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "ml-100k"), help="the ml-100k folder")
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--epochs", type=int, default=20, help="epochs of the data-only pass per repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--output", default="runs/bench-sequence-data")
    args = p.parse_args(argv)

    import numpy as np
    import torch

    from mtlframe.batching import ColumnBatches
    from mtlframe.build import Builder
    from mtlframe.datamodule import RecDataModule, _timestamps, _user_codes
    from mtlframe.history import build_history, split_ranks
    from mtlframe.recipe import load_recipe

    overrides = [f"data.dataset.path={Path(args.data).resolve()}", "data.split.name=time", "data.fill_missing={}",
                 "data.sequences.hist_items={of: item_id, share_with: item_id, max_len: %d, fields: [rating]}"
                 % args.max_len,
                 # the data module reads the features the encoders list; no sequence encoder is needed here
                 "model.encoders=[{name: embedding, features: [user_id, item_id, hist_items], dim: 8}]"]
    recipe = load_recipe(REPO / "recipes" / "movielens_mmoe.yaml", overrides)
    setups, dm = [], None
    for _ in range(args.repeats):
        dm = RecDataModule(recipe, Builder(recipe).dataset())
        start = time.perf_counter()
        dm.setup("fit")
        setups.append(time.perf_counter() - start)
    table = Builder(recipe).dataset().load()
    users, times = _user_codes(table, "", "hist_items"), _timestamps(table, "", "hist_items")
    ranks = split_ranks(dm.split_index, len(table.frame))
    histories = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        build_history(users, times, args.max_len, ranks)
        histories.append(time.perf_counter() - start)
    cols = {k: v for k, v in dm.splits["train"].items() if isinstance(v, torch.Tensor)}
    n = len(cols["hist_items"])
    passes = []
    for r in range(args.repeats):
        batches = ColumnBatches(cols, args.batch_size, shuffle=True, seed=r)
        check = 0
        start = time.perf_counter()
        for _ in range(args.epochs):  # each iteration is the next epoch (a new permutation)
            for batch in batches:
                check += int(batch["hist_items"][-1, -1])  # touch the block: nothing is skipped
        passes.append(n * args.epochs / (time.perf_counter() - start))
    result = {
        "rows": int(n), "max_len": args.max_len, "batch_size": args.batch_size, "epochs": args.epochs,
        "history_seconds": statistics.median(histories), "setup_seconds": statistics.median(setups),
        "rows_per_second": statistics.median(passes),
        "truncated_share": float(np.mean([r["truncated"]["hist_items"]["truncated"] / r["truncated"]["hist_items"]["rows"]
                                          for r in dm.preprocessor.reports.values()])),
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
    }
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
