"""Train one recipe variant over several seeds; append test/val metrics to a JSON-lines file.

Run (each line appends; rerunning a finished (variant, seed) skips it)::

    python plugins/mtlframe-text/benchmarks/compare.py run --out docs/results/text_clothing.jsonl \\
        --variant minilm --seeds 2026,1,2 recipes/clothing_text_minilm.yaml
    python plugins/mtlframe-text/benchmarks/compare.py summary docs/results/text_clothing.jsonl

Overrides after the recipe are passed on as in ``mtlframe train`` (``seed=`` is set per seed).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path


def run(args: argparse.Namespace) -> None:
    from mtlframe.recipe import load_recipe
    from mtlframe.run import train

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if out.exists():
        for line in out.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                done.add((rec["variant"], rec["seed"]))
    for seed in args.seeds:
        if (args.variant, seed) in done:
            print(f"skip {args.variant} seed {seed}: already in {out}", flush=True)
            continue
        recipe = load_recipe(args.recipe, [*args.overrides, f"seed={seed}"])
        run_dir = Path(args.runs) / f"{args.variant}-s{seed}"
        start = time.perf_counter()
        result = train(recipe, run_dir, progress=False)
        rec = {"variant": args.variant, "recipe": args.recipe, "overrides": args.overrides, "seed": seed,
               "test": result.metrics.get("test", {}), "val": result.metrics.get("val", {}),
               "train_seconds": round(result.train_seconds, 1),
               "total_seconds": round(time.perf_counter() - start, 1),
               "num_parameters": result.num_parameters, "run_dir": str(run_dir)}
        with open(out, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec) + "\n")
        print(json.dumps(rec), flush=True)


def summary(args: argparse.Namespace) -> None:
    rows: dict[str, list[dict]] = {}
    for path in args.files:
        for line in Path(path).read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                rows.setdefault(rec["variant"], []).append(rec)
    metrics = sorted({(t, m) for recs in rows.values() for r in recs for t, ms in r["test"].items() for m in ms})
    head = ["variant", "seeds"] + [f"{t} {m}" for t, m in metrics] + ["train s"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for variant, recs in rows.items():
        cells = [variant, ",".join(str(r["seed"]) for r in recs)]
        for t, m in metrics:
            vals = [r["test"].get(t, {}).get(m) for r in recs]
            vals = [v for v in vals if v is not None and math.isfinite(v)]
            if not vals:
                cells.append("")
            elif len(vals) == 1:
                cells.append(f"{vals[0]:.4f}")
            else:
                cells.append(f"{statistics.mean(vals):.4f} ± {statistics.stdev(vals):.4f}")
        cells.append(f"{statistics.mean(r['train_seconds'] for r in recs):.0f}")
        print("| " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run", help="train a variant over seeds")
    p.add_argument("--out", required=True, help="JSON-lines results file (appended)")
    p.add_argument("--variant", required=True, help="name of this variant in the results")
    p.add_argument("--seeds", type=lambda v: [int(x) for x in v.split(",")], default=[2026, 1, 2],
                   help="comma-separated seeds (default 2026,1,2)")
    p.add_argument("--runs", default="runs/text", help="parent folder of the run directories")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*")
    s = sub.add_parser("summary", help="mean ± std per variant as a Markdown table")
    s.add_argument("files", nargs="+")
    args = parser.parse_args(argv)
    {"run": run, "summary": summary}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
