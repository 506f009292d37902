"""``mtlframe recommend`` throughput on MovieLens-100K: all 943 users, top 20.

    python -m benchmarks.recommend_speed --data ../shared/data/ml-100k [--checkpoint CKPT]

Without ``--checkpoint`` it first trains ``recipes/movielens_ranking.yaml`` for ``--epochs``
epochs (``--set KEY=VALUE`` adds recipe overrides, e.g. another sampler); the speed does not
depend on how well the model ranks. Then, ``--repeats`` times each, two settings:

* ``retrieval``: the recipe's own (the retrieval task's top ``ranking.candidates`` re-ranked by
  ``rank_by`` through the full model);
* ``all items``: ``ranking.candidates`` above the catalogue size, so every item of every user goes
  through the full model (what a recipe without a retrieval task does).

Reported: users per second of the ranking itself (``RecommendResult.seconds``: the data is loaded
once per call before it and not counted) and the wall time of the whole call (data reload
included), medians over the repeats. Writes ``results.json`` to ``--output``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.recommend_speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "ml-100k"), help="the ml-100k folder")
    p.add_argument("--checkpoint", default=None, help="a trained checkpoint (default: train one)")
    p.add_argument("--recipe", default=str(REPO / "recipes" / "movielens_ranking.yaml"))
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override (repeatable)")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=256, help="users per step")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--output", default="runs/bench-recommend")
    args = p.parse_args(argv)

    import pandas as pd
    import torch

    from mtlframe.recipe import load_recipe
    from mtlframe.recommend import recommend
    from mtlframe.run import train

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = args.checkpoint
    if checkpoint is None:
        overrides = [f"data.dataset.path={Path(args.data).resolve()}", f"trainer.max_epochs={args.epochs}",
                     "logger.name=none", "early_stopping=null", *args.set]
        start = time.perf_counter()
        checkpoint = train(load_recipe(args.recipe, overrides), out / "run", progress=False,
                           overwrite=True).best_checkpoint
        print(f"trained {args.recipe} for {args.epochs} epoch(s) in {time.perf_counter() - start:.1f} s: {checkpoint}",
              flush=True)
    users = pd.read_csv(Path(args.data) / "u.user", sep="|", header=None, usecols=[0], names=["user_id"])
    users.to_csv(out / "users.csv", index=False)
    settings = {"retrieval": [], "all items": ["ranking.candidates=1000000"]}
    results: dict = {"users": len(users), "k": args.k, "batch_size": args.batch_size, "checkpoint": str(checkpoint),
                     "torch_threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
                     "accelerator": args.accelerator, "settings": {}}
    for name, extra in settings.items():
        rank_s, wall_s = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            res = recommend(checkpoint, out / "users.csv", args.k, out / f"recs-{name.replace(' ', '-')}.csv",
                            accelerator=args.accelerator, batch_size=args.batch_size, overrides=extra, progress=False)
            wall_s.append(time.perf_counter() - start)
            rank_s.append(res.seconds)
        row = {"candidates": res.candidates, "retrieval": res.retrieval, "rank_seconds": statistics.median(rank_s),
               "users_per_second": len(users) / statistics.median(rank_s), "wall_seconds": statistics.median(wall_s),
               "users_per_second_wall": len(users) / statistics.median(wall_s), "rows": len(res.frame)}
        results["settings"][name] = row
        print(f"{name:>10}: {row['users_per_second']:,.0f} users/s ranking ({row['rank_seconds']:.2f} s for "
              f"{len(users)} users, {row['candidates']} candidates each); {row['wall_seconds']:.1f} s per call with "
              "the data reload", flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"results: {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
