"""Training speed of the history encoders against no history, on the same MovieLens-100K data.

    python -m benchmarks.sequence_train --data ../shared/data/ml-100k [--steps 40] [--repeats 3]

Builds ``recipes/movielens_history.yaml`` once per variant (no history, ``sequence-pool``,
``target-attention``, ``sequence-transformer``; the recipe's history of ``max_len`` 30 and its
encoder settings) and times ``--steps`` training steps (forward, masked multi-task loss,
backward, Adam step) at the recipe's batch size on the training columns, after 5 warm-up steps.
Reports samples/s per variant (median over ``--repeats``, interleaved so that load on a shared
machine hits every variant alike) and each variant's ratio to no history. Writes
``results.json`` to ``--output``.
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

BASE = ("{name: embedding, features: [user_id, item_id, gender, occupation, zip_prefix, genres], dim: 16}, "
        "{name: numeric, features: [age, release_year]}")
VARIANTS = {
    "no history": f"[{BASE}]",
    "sequence-pool": f"[{BASE}, {{name: sequence-pool, features: [hist_items], dim: 16}}]",
    "target-attention": f"[{BASE}, {{name: target-attention, features: [hist_items], target: item_id, dim: 16, "
                        "hidden: [32]}]",
    "sequence-transformer": f"[{BASE}, {{name: sequence-transformer, features: [hist_items], target: item_id, "
                            "dim: 16}]",
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sequence_train", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "ml-100k"), help="the ml-100k folder")
    p.add_argument("--steps", type=int, default=40, help="timed training steps per repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--output", default="runs/bench-sequence-train")
    args = p.parse_args(argv)

    import torch

    from mtlframe.batching import ColumnBatches
    from mtlframe.recipe import load_recipe
    from mtlframe.run import _quiet_lightning, build_system

    _quiet_lightning()
    systems = {}
    for name, encoders in VARIANTS.items():
        recipe = load_recipe(REPO / "recipes" / "movielens_history.yaml",
                             [f"data.dataset.path={Path(args.data).resolve()}", f"model.encoders={encoders}"])
        torch.manual_seed(0)
        dm, module, _ = build_system(recipe)
        opt = torch.optim.Adam(module.model.parameters(), lr=1e-3)
        batches = ColumnBatches(dm.columns["train"], recipe.config.data.batch_size, shuffle=True, seed=0)
        systems[name] = (module, opt, batches, recipe.config.data.batch_size)

    def run(module, opt, batches, steps: int) -> float:
        it = iter(batches)
        module.model.train()
        start = None
        for i in range(steps + 5):
            if i == 5:
                start = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                it = iter(batches)
                batch = next(it)
            outputs = module.model(batch)
            sums, counts = module.task_loss_sums(batch, outputs)
            loss = sum(s / c.clamp(min=1) for s, c in zip(sums, counts))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return time.perf_counter() - start

    times: dict[str, list[float]] = {name: [] for name in systems}
    for _ in range(args.repeats):
        for name, (module, opt, batches, _) in systems.items():
            times[name].append(run(module, opt, batches, args.steps))
    results = {}
    for name, ts in times.items():
        bsz = systems[name][3]
        results[name] = {"samples_per_second": args.steps * bsz / statistics.median(ts), "seconds": ts}
    base = results["no history"]["samples_per_second"]
    for r in results.values():
        r["ratio_to_no_history"] = r["samples_per_second"] / base
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"machine": f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}",
            "torch": torch.__version__, "threads": torch.get_num_threads(), "steps": args.steps,
            "repeats": args.repeats}
    (out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2), encoding="utf-8")
    for name, r in results.items():
        print(f"{name:22s} {r['samples_per_second']:>10,.0f} samples/s   x{r['ratio_to_no_history']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
