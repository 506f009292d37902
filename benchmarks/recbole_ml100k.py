"""MovieLens-100K full ranking under RecBole's default protocol: RecBole's BPR and LightGCN on the
split files mtlframe's own ``user-random`` split writes, next to mtlframe's retrieval task.

    python -m benchmarks.recbole_ml100k --data ../shared/data/ml-100k \\
        --recbole-python /work/recbole-venv/bin/python --seeds 2026,2027,2028 \\
        --output runs/recbole-ml100k [--mtlframe runs/compare-retrieval/results.json]

1. For each seed ``s``: ``split_indices(table, "user-random", val=0.1, test=0.1, seed=s)`` on
   mtlframe's MovieLens-100K table (the rows of ``u.data`` in file order: the same call
   ``data.split: {name: user-random}`` with ``seed: s`` makes in a recipe) is written as RecBole
   atomic files ``OUTPUT/data/seed-s/ml-100k/ml-100k.{train,valid,test}.inter`` (user, item,
   rating, timestamp; every row is an implicit positive, as RecBole's ml-100k).
2. RecBole 1.2.1 (its own venv: ``--recbole-python``; it needs no mtlframe) trains each model with
   its default hyper-parameters and ``benchmark_filename: [train, valid, test]``, seed ``s``;
   early stopping on valid MRR@10 (patience 10, at most 300 epochs), the best checkpoint is tested
   with full ranking (items of the user's train and valid rows excluded). One subprocess per run
   (``benchmarks/external/recbole_runner.py``), one at a time. The runner checks that RecBole's id remapping
   kept each written row in its split ((user, item) multisets equal to the files').
3. ``--mtlframe RESULTS``: the test metrics of a retrieval task from an ``mtlframe compare``
   ``results.json`` trained with the same recipe seeds, added as a row.

``--split recbole`` instead lets RecBole split ``ml-100k.inter`` itself (its default ``eval_args``:
RS 8:1:1 grouped by user, RO), for when mtlframe's ``user-random`` split is not available.

Writes ``OUTPUT/results.json`` (per system: mean and sample std over seeds of Recall@10,
NDCG@10, MRR@10, Hit@10, Precision@10, per-seed values, wall time) and ``OUTPUT/results.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import log, markdown_table

REPO = Path(__file__).resolve().parents[1]
METRICS = ["recall@10", "ndcg@10", "mrr@10", "hit@10", "precision@10"]
HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
FILES = {"train": "train", "val": "valid", "test": "test"}   # mtlframe split -> RecBole suffix


def write_split_files(data: str, seed: int, folder: Path, split: str = "user-random") -> dict:
    """Write mtlframe's split of ML-100K for ``seed`` as RecBole atomic ``.inter`` files in
    ``folder/ml-100k/``; returns the row counts and the users/items of each split."""
    from mtlframe.datamodule import split_indices
    from mtlframe.datasets.movielens import MovieLens100K

    table = MovieLens100K(path=data).load()
    idx = split_indices(table, split, 0.1, 0.1, seed)
    f = table.frame
    out = folder / "ml-100k"
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name, suffix in FILES.items():
        rows = f.iloc[idx[name]]
        lines = [f"{u}\t{i}\t{r:g}\t{t}\n" for u, i, r, t in zip(rows["user_id"], rows["item_id"], rows["rating"],
                                                                   rows["timestamp"])]
        (out / f"ml-100k.{suffix}.inter").write_text(HEADER + "".join(lines), encoding="utf-8")
        counts[name] = {"rows": len(rows), "users": int(rows["user_id"].nunique()),
                        "items": int(rows["item_id"].nunique())}
    return counts


def write_whole_file(data: str, folder: Path) -> None:
    """``u.data`` as one RecBole ``ml-100k.inter`` (for ``--split recbole``)."""
    out = folder / "ml-100k"
    out.mkdir(parents=True, exist_ok=True)
    body = Path(data, "u.data").read_text(encoding="utf-8")
    (out / "ml-100k.inter").write_text(HEADER + body, encoding="utf-8")


def run_recbole(python: str, folder: Path, model: str, seed: int, files: bool, result: Path,
                epochs: int | None, threads: int) -> dict:
    if result.exists():  # resume: a finished run is not trained again
        return json.loads(result.read_text())
    runner = REPO / "benchmarks" / "external" / "recbole_runner.py"
    cmd = [python, str(runner), "--data-dir", str(folder), "--model", model,
           "--seed", str(seed), "--output", str(result), "--threads", str(threads)]
    if files:
        cmd.append("--benchmark-files")
    if epochs is not None:
        cmd += ["--epochs", str(epochs)]
    log(f"[recbole] {model} seed {seed}: {' '.join(cmd)}")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0 or not result.exists():
        return {"model": model, "seed": seed, "error": proc.stderr[-3000:]}
    return json.loads(result.read_text())


def summarize(runs: list[dict]) -> dict:
    from mtlframe.compare import mean_std

    ok = [r for r in runs if "test" in r]
    out = {"seeds": [r["seed"] for r in ok], "failed": [r for r in runs if "test" not in r]}
    for m in METRICS:
        vals = [r["test"][m] for r in ok if m in r["test"]]
        mean, std = mean_std(vals)
        out[m] = {"mean": mean, "std": std, "per_seed": vals}
    walls = [r["wall_s"] for r in ok if "wall_s" in r]
    out["wall_s"] = {"mean": mean_std(walls)[0], "per_seed": walls}
    out["epochs_run"] = [r.get("epochs_run") for r in ok]
    return out


def mtlframe_runs(path: Path, config: str | None, task: str) -> list[dict]:
    """A retrieval task's per-seed test metrics from an ``mtlframe compare`` ``results.json``:
    the runs of the configuration whose slug starts with ``config`` or one of whose grid labels
    equals it (``None``: the first configuration)."""
    res = json.loads(path.read_text())
    configs = res.get("configs", [])
    chosen = [c for c in configs if config is None or c["slug"].startswith(config)
              or config in (c.get("label") or {}).values()][:1]
    if not chosen:
        raise SystemExit(f"{path}: no configuration '{config}'; there are "
                         f"{', '.join(c['slug'] for c in configs) or 'none'}")
    runs = []
    for row in chosen[0]["runs"]:
        if row.get("status") != "ok":
            runs.append({"seed": row.get("seed"), "error": row.get("error", "failed")})
            continue
        test = row.get("metrics", {}).get(task, {})
        runs.append({"seed": row["seed"], "test": {m: float(test[m]) for m in METRICS if test.get(m) is not None},
                     "wall_s": row.get("train_seconds") or float("nan"), "config": chosen[0]["slug"]})
    return runs


def markdown(results: dict) -> str:
    rows = []
    for name, s in results["systems"].items():
        cells = [name]
        for m in METRICS:
            v = s[m]
            cells.append("-" if v["mean"] != v["mean"] else
                         f"{v['mean']:.4f} ± {v['std']:.4f}" if v["std"] == v["std"] else f"{v['mean']:.4f}")
        ep = ", ".join(str(e) for e in s.get("epochs_run", []) if e is not None) or "-"
        rows.append(cells + [f"{s['wall_s']['mean']:.0f}", ep])
    return "\n".join(markdown_table(["system", *METRICS, "wall s / run", "epochs"], rows)) + "\n"


def main(argv: list[str] | None = None, prog: str = "python -m benchmarks.recbole_ml100k") -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/ml-100k", help="the GroupLens ml-100k folder")
    p.add_argument("--recbole-python", default="/work/recbole-venv/bin/python",
                   help="a Python with recbole==1.2.1 installed")
    p.add_argument("--models", default="BPR,LightGCN")
    p.add_argument("--seeds", default="2026,2027,2028")
    p.add_argument("--split", default="user-random", help="mtlframe split name, or 'recbole' (RecBole splits)")
    p.add_argument("--epochs", type=int, default=None, help="cap RecBole's epochs (smoke runs only)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of each RecBole run")
    p.add_argument("--mtlframe", default=None, help="an `mtlframe compare` results.json to add as a row")
    p.add_argument("--mtlframe-config", default=None, help="its configuration name (default: every run)")
    p.add_argument("--mtlframe-task", default="watch")
    p.add_argument("--output", default="runs/recbole-ml100k")
    p.add_argument("--split-only", action="store_true", help="write the split files and stop")
    a = p.parse_args(argv)
    out = Path(a.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in a.seeds.split(",")]
    models = [m.strip() for m in a.models.split(",") if m.strip()]
    files = a.split != "recbole"
    start = time.time()
    results = {"environment": {
        "date": time.strftime("%Y-%m-%d %H:%M"), "command": prog + " " + " ".join(
            argv if argv is not None else sys.argv[1:]),
        "cpus": os.cpu_count(), "threads": a.threads, "python": platform.python_version()},
        "protocol": {"split": a.split if files else "recbole RS 8:1:1 group_by user (RecBole's own)",
                     "seeds": seeds, "eval": "full ranking, items of the user's train (and valid, for test) "
                                             "rows excluded; metrics @10 averaged over test users"},
        "splits": {}, "systems": {}}
    runs: dict[str, list[dict]] = {m: [] for m in models}
    for seed in seeds:
        folder = out / "data" / f"seed-{seed}"
        if files:
            results["splits"][seed] = write_split_files(a.data, seed, folder, a.split)
            log(f"[split] seed {seed}: {results['splits'][seed]}")
        else:
            write_whole_file(a.data, folder)
        if a.split_only:
            continue
        for m in models:
            r = run_recbole(a.recbole_python, folder, m, seed, files, out / f"{m}-seed-{seed}.json",
                            a.epochs, a.threads)
            runs[m].append(r)
            log(f"[recbole] {m} seed {seed}: " + (json.dumps(r.get("test")) if "test" in r
                                                   else "FAILED " + r["error"][-500:]))
    for m in models:
        results["systems"][f"RecBole {m}"] = summarize(runs[m]) | {"runs": runs[m]}
    if a.mtlframe:
        mr = mtlframe_runs(Path(a.mtlframe), a.mtlframe_config, a.mtlframe_task)
        results["systems"]["mtlframe retrieval"] = summarize(mr) | {"runs": mr}
    results["seconds"] = time.time() - start
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    if results["systems"]:
        md = markdown(results)
        (out / "results.md").write_text(f"`{results['environment']['command']}`\n\n" + md, encoding="utf-8")
        print(md)
    print(f"wrote {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
