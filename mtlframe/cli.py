"""The ``mtlframe`` command line.

``train RECIPE [key=value ...]``, ``evaluate``, ``predict``, ``recommend``, ``embeddings``, ``serve``, ``export``,
``compare``, ``cv``, ``tune``, ``explain``, ``recipe validate``, ``plugins``, ``benchmark`` (the harness of a source
checkout).
Heavy imports (torch, Lightning) happen inside the commands that need them, so ``--help``,
``plugins`` and ``recipe validate`` answer fast. User errors print one paragraph and exit 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mtlframe.errors import MTLFrameError

#: ``--accelerator`` choices of evaluate and predict (mtlframe.run.ACCELERATORS, without importing torch)
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")


def _console():
    from rich.console import Console
    # no markup: cells hold user values (grid labels such as `features: [hist_items]`, task
    # names), which rich would otherwise read as style tags and drop
    return Console(stderr=False, highlight=False, markup=False)


def _metrics_table(metrics: dict, title: str):
    """Rows: tasks; columns: metrics. Metrics with a cutoff (``ndcg@10``) go to a table of their
    own when every metric of the task has one (a retrieval task), a row per metric and a column
    per task and K (``watch@10``): a retrieval task's seven
    metrics at each K stay readable (even at a pipe's 80 columns) beside the other tasks' few."""
    from rich.console import Group
    from rich.table import Table

    plain_rows: list[tuple[str, dict]] = []
    ranked_rows: list[tuple[str, dict]] = []
    for task, per_task in metrics.items():
        by_k: dict[int, dict] = {}
        for m, v in per_task.items():
            base, sep, k = m.rpartition("@")
            if not (sep and k.isdigit()):  # a task with plain metrics (auc, ...) keeps ndcg@K as a column
                by_k = {}
                break
            by_k.setdefault(int(k), {})[base] = v
        if by_k:  # every metric has a cutoff: a retrieval task's full-ranking metrics
            ranked_rows += [(f"{task}@{k}", per_k) for k, per_k in by_k.items()]
        else:
            plain_rows.append((task, dict(per_task)))

    def table(rows: list[tuple[str, dict]], caption: str, by_metric: bool) -> Table:
        names: list[str] = []
        for _, values in rows:
            names += [m for m in values if m not in names]
        cols, lines = (rows, names) if by_metric else (names, rows)
        out = Table(title=caption)
        out.add_column("metric" if by_metric else "task")
        for c in cols:
            out.add_column(c[0] if by_metric else c, justify="right", no_wrap=by_metric)
        for line in lines:
            cells = ([values.get(line) for _, values in rows] if by_metric
                     else [line[1].get(m) for m in names])
            out.add_row(line if by_metric else line[0], *["-" if v is None else _number(v) for v in cells])
        return out

    parts = []
    if any(values for _, values in plain_rows) or not ranked_rows:
        parts.append(table([r for r in plain_rows if r[1]] or plain_rows, title, by_metric=False))
    if ranked_rows:
        parts.append(table(ranked_rows, f"{title}, full ranking" if parts else title, by_metric=True))
    return parts[0] if len(parts) == 1 else Group(*parts)


def _number(v: float) -> str:
    return f"{v:.4f}" if abs(v) < 1000 else f"{v:.1f}"


def cmd_train(args: argparse.Namespace) -> int:
    from mtlframe.recipe import load_recipe
    from mtlframe.run import train

    progress = False if args.no_progress else None
    if args.resume:  # the first override lands in `recipe`
        overrides = ([args.recipe] if args.recipe else []) + list(args.overrides or [])
        if args.overwrite or any("=" not in o for o in overrides):
            raise MTLFrameError("train --resume RUN_DIR_OR_CKPT takes the recipe saved in the checkpoint: give no "
                                "recipe file and no --overwrite, only trainer.*/early_stopping.* overrides.")
        result = train(None, args.run_dir, progress=progress, resume=args.resume, overrides=overrides)
    elif not args.recipe:
        raise MTLFrameError("train needs a recipe file (mtlframe train RECIPE.yaml), or --resume RUN_DIR.")
    else:
        result = train(load_recipe(args.recipe, args.overrides), args.run_dir, progress=progress,
                       overwrite=args.overwrite)
    if not result.is_global_zero:  # other DDP processes stay quiet
        return 0
    con = _console()
    for split in ("val", "test"):
        if result.metrics.get(split):
            con.print(_metrics_table(result.metrics[split], f"{split} metrics (best checkpoint)"))
    con.print(f"parameters: {result.num_parameters:,}  train time: {result.train_seconds:.1f} s")
    con.print(f"run directory: {result.run_dir}  (metrics.json, recipe.yaml, checkpoints/best.ckpt)")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from mtlframe.prepare import prepare
    from mtlframe.recipe import load_recipe

    import torch

    target = prepare(load_recipe(args.recipe, args.overrides), args.output)
    state = torch.load(target, weights_only=True)
    sizes = ", ".join(f"{c} {len(v):,}" for c, v in state["preprocessor"]["vocab"].items())
    con = _console()
    con.print(f"fitted on {state['rows']:,} rows of {len(state['fingerprint'])} file(s)"
              + (f"; vocabularies: {sizes}" if sizes else ""))
    from mtlframe.preprocess import collision_text

    for col, rep in state["preprocessor"].get("hash_report", {}).items():
        con.print(collision_text(col, rep))
    con.print(f"prepared preprocessor: {target}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from mtlframe.run import evaluate

    try:
        scores = evaluate(args.checkpoint, args.split, accelerator=args.accelerator, data_path=args.data_path,
                          overrides=args.overrides)
    except KeyboardInterrupt as exc:  # also while the data loads, before Lightning's loop
        if str(exc):
            raise
        raise KeyboardInterrupt(f"interrupted (Ctrl-C) while evaluating {args.checkpoint} on the {args.split} "
                                "split") from None
    con = _console()
    con.print(_metrics_table(scores, f"{args.split} metrics"))
    if args.output:
        Path(args.output).write_text(json.dumps({args.split: scores}, indent=2))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from mtlframe.run import (keep_columns, load_checkpoint, predict_frame, predict_warnings, read_table,
                              resolve_device, write_table)

    if Path(args.output).resolve() == Path(args.input).resolve():
        raise MTLFrameError(f"--output {args.output} is the --input file: predicting would overwrite the rows it "
                            "reads; write the predictions to another file.")
    frame = read_table(args.input)  # the user's file first: its mistakes show before the model loads
    device = resolve_device(args.accelerator)
    loaded = load_checkpoint(args.checkpoint)
    loaded.model.to(device)
    report: dict = {}
    out = predict_frame(loaded, frame, source=str(args.input), report=report)
    predicted = list(out.columns)
    if args.keep:
        out = keep_columns(out, frame, args.keep, str(args.input))
    write_table(out, args.output)
    tasks = [t.name for t in loaded.tasks]
    renamed = [f"'{a}' -> '{b}'" for a, b in zip(predicted, out.columns[len(out.columns) - len(predicted):]) if a != b]
    print(f"wrote {len(out)} predictions for tasks {', '.join(tasks)} to {args.output}"
          + (f" (prediction columns renamed beside the kept input columns: {', '.join(renamed)})" if renamed else ""))
    oov = report.get("oov", {})
    if any(r["oov"] for r in oov.values()):
        from rich.console import Console
        from rich.table import Table

        table = Table(title="warning: out-of-vocabulary values per feature (unseen in training)")
        for col in ("feature", "rows", "out-of-vocabulary", "share", "empty"):
            table.add_column(col, justify="left" if col == "feature" else "right")
        for col, r in oov.items():
            table.add_row(col, f"{r['rows']:,}", f"{r['oov']:,}", f"{r['oov'] / max(r['rows'], 1):.1%}",
                          f"{r['missing']:,}")
        Console(stderr=True, highlight=False, markup=False).print(table)
    for line in predict_warnings({k: v for k, v in report.items() if k != "oov"}):
        print(f"warning: {line}", file=sys.stderr)
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    from mtlframe.recommend import recommend

    if Path(args.output).resolve() == Path(args.users).resolve():
        raise MTLFrameError(f"--output {args.output} is the --users file: recommending would overwrite the ids it "
                            "reads; write the recommendations to another file.")
    result = recommend(args.checkpoint, args.users, args.k, args.output, accelerator=args.accelerator,
                       batch_size=args.batch_size, data_path=args.data_path, overrides=args.overrides,
                       progress=False if args.no_progress else None)
    from rich.table import Table

    table = Table(title=f"recommend: top {args.k} per user -> {args.output}")
    table.add_column("")
    table.add_column("", justify="right")
    for what, value in result.summary():
        table.add_row(what, value)
    _console().print(table)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from mtlframe.serve import serve

    serve(args.checkpoint, host=args.host, port=args.port, accelerator=args.accelerator,
          max_batch_size=args.max_batch_size, batch_timeout=args.batch_timeout, workers=args.workers,
          max_rows=args.max_rows, data_path=args.data_path)
    return 0


def cmd_embeddings(args: argparse.Namespace) -> int:
    from mtlframe.embeddings import export_embeddings

    result = export_embeddings(args.checkpoint, args.output, k=args.k, faiss=args.faiss,
                               accelerator=args.accelerator, data_path=args.data_path, overrides=args.overrides)
    from rich.table import Table

    table = Table(title=f"embeddings -> {args.output}")
    for col in ("task", "users", "items", "dim", "similarity", "files"):
        table.add_column(col, justify="left" if col in ("task", "similarity", "files") else "right")
    for task, info in result.items():
        table.add_row(task, f"{info['users']:,}", f"{info['items']:,}", str(info["dim"]), info["similarity"],
                      ", ".join(info["files"]))
    _console().print(table)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from mtlframe.recipe import load_recipe

    from mtlframe.tune import space_problems  # a tune: section is checked as `mtlframe tune` checks it

    recipe = load_recipe(args.recipe, args.overrides, checks=(space_problems,))
    cfg = recipe.config
    tasks = ", ".join(f"{n} ({t.type})" for n, t in cfg.tasks.items())
    print(f"{args.recipe}: valid. dataset {cfg.data.dataset['name']}; tasks {tasks}; "
          f"backbone {cfg.model.backbone['name'] if cfg.model.backbone else 'none'}; combiner {cfg.combiner['name']}.")
    if args.show:
        print(recipe.to_yaml())
    return 0


def _grid_console(args: argparse.Namespace):
    """The console of ``compare`` / ``cv`` (wide when piped to a file: the tables are not squeezed
    into 80 columns), its command line, and the per-run progress printer."""
    import shlex

    con = _console()
    if not con.is_terminal:
        con.width = max(con.width, 240)
    return (con, "mtlframe " + shlex.join(getattr(args, "argv", None) or []),
            lambda line: con.print(line, markup=False, soft_wrap=True))


def _grid_footer(con, result, files: str, runs_dir: str | None) -> int:
    """Print where the results and runs are and the failed runs; the exit code (1 if any failed)."""
    con.print(f"results: {files}; runs under {runs_dir or str(result.output) + '/runs'}/")
    failed = sum(r["status"] != "ok" for c in result.configs for r in c.runs)
    if failed:
        con.print(f"{failed} run(s) failed; see error.txt in their run directories.")
    return 1 if failed else 0


def cmd_explain(args: argparse.Namespace) -> int:
    from mtlframe.explain import explain
    from mtlframe.explain.report import summary_table

    result = explain(args.checkpoint, args.split, output=args.output, max_rows=args.max_rows,
                     accelerator=args.accelerator, data_path=args.data_path, overrides=args.overrides)
    con = _console()
    if not con.is_terminal:  # piped to a file: do not squeeze the table into 80 columns
        con.width = max(con.width, 160)
    con.print(summary_table(result.data))
    for note in result.data["notes"]:
        con.print(f"note: {note}", soft_wrap=True)
    con.print(f"report: {result.report}  ({len(result.images)} PNG files, explain.json)")
    return 0

def cmd_compare(args: argparse.Namespace) -> int:
    from mtlframe.compare import rich_table, run_compare, write_outputs

    con, command, progress = _grid_console(args)
    result = run_compare(args.recipe, args.grid or [], args.seeds, overrides=args.overrides,
                         baseline=[] if args.no_baseline else (args.baseline or ["single-task"]),
                         output=args.output, runs_dir=args.runs_dir, command=command, resume=not args.no_resume,
                         metrics=args.metrics.split(",") if args.metrics else None, progress=progress)
    write_outputs(result)
    con.print(rich_table(result))
    return _grid_footer(con, result, f"{result.output}/results.md, {result.output}/results.json", args.runs_dir)


def cmd_cv(args: argparse.Namespace) -> int:
    from mtlframe.cv import rich_tables, run_cv

    con, command, progress = _grid_console(args)
    result = run_cv(args.recipe, args.overrides, folds=args.folds, scheme=args.scheme, group=args.group,
                    grid=args.grid or [], seeds=args.seeds, baseline=args.baseline, output=args.output,
                    runs_dir=args.runs_dir, command=command, resume=not args.no_resume,
                    metrics=args.metrics.split(",") if args.metrics else None, progress=progress)
    for table in rich_tables(result):
        con.print(table)
    return _grid_footer(con, result, f"{result.output}/cv.md, {result.output}/cv.json", args.runs_dir)


def cmd_tune(args: argparse.Namespace) -> int:
    import shlex

    from mtlframe.tune import rich_table, run_tune

    con = _console()
    if not con.is_terminal:
        con.width = max(con.width, 200)
    result = run_tune(args.recipe, args.trials, overrides=args.overrides, space=args.space, study=args.study,
                      timeout=args.timeout, output=args.output,
                      command="mtlframe " + shlex.join(getattr(args, "argv", None) or []),
                      progress=lambda line: con.print(line, markup=False, soft_wrap=True))
    con.print(rich_table(result))
    if result.best is None:
        con.print(f"no trial completed; see the reasons above and error.txt under {result.output}/trials/")
        return 1
    con.print(f"best recipe (trial {result.best.number}, {result.metric} {result.best.value:.6g}), "
              f"written to {result.output}/best.yaml:")
    print((result.output / "best.yaml").read_text(encoding="utf-8"))
    return 0


def _checkout_root() -> Path | None:
    """The source checkout holding ``benchmarks/run.py``: the one this mtlframe was imported from
    (an editable install or a run from the tree), else the working directory."""
    import mtlframe

    for root in (Path(mtlframe.__file__).resolve().parents[1], Path.cwd()):
        if (root / "benchmarks" / "run.py").is_file() and (root / "mtlframe").is_dir():
            return root
    return None


def cmd_export(args: argparse.Namespace) -> int:
    from mtlframe.export import export_model

    r = export_model(args.checkpoint, args.format, args.output, rows=args.rows, data=args.data,
                     overwrite=args.overwrite)
    worst = ", ".join(f"{t} {d:.1e}" for t, d in r.max_abs_diff.items())
    print(f"wrote {r.model_file} ({len(r.inputs)} inputs, outputs {', '.join(r.outputs)}) and "
          f"{r.output / 'preprocessor.json'}; self-check on {r.rows} held-out rows passed (max abs diff: {worst})")
    return 0


def cmd_benchmark(argv: list[str]) -> int:
    """Run the benchmark harness (``benchmarks/`` of a source checkout; not shipped in the wheel)."""
    root = _checkout_root()
    if root is None:
        raise MTLFrameError("`mtlframe benchmark` runs the harness in benchmarks/ of a source checkout, which the "
                            "installed package does not include. Clone the repository, install it with "
                            "`pip install -e '.[bench]'` and run `mtlframe benchmark --quick` (or "
                            "`python -m benchmarks.run --quick`) inside it.")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from benchmarks.run import main as bench_main

    return bench_main(argv, prog="mtlframe benchmark")


def cmd_plugins(args: argparse.Namespace) -> int:
    from rich.table import Table

    from mtlframe.registry import KINDS, get_registry

    reg = get_registry()
    con = _console()
    kinds = [args.kind] if args.kind else list(KINDS)   # --kind X: only components of that kind
    if args.json:
        payload = {"plugins": {n: {"distribution": p.distribution, "version": p.version} for n, p in reg.plugins.items()},
                   "components": {k: [{"name": c.name, "provider": c.provider.distribution,
                                       "version": c.provider.version, "summary": c.spec.summary}
                                      for c in reg.all(k)] for k in kinds},
                   "failures": [vars(f) for f in reg.failures]}
        print(json.dumps(payload, indent=2))
        return 0
    plugins = Table(title="installed plugins" if not args.kind else f"installed plugins with {args.kind} components")
    for col in ("plugin", "distribution", "version", "components"):
        plugins.add_column(col)
    for name, prov in reg.plugins.items():
        comps = [f"{c.kind}:{c.name}" for k in kinds for c in reg.all(k) if c.provider.plugin == name]
        if comps or not args.kind:
            plugins.add_row(name, prov.distribution, prov.version, ", ".join(comps))
    con.print(plugins)
    comps = Table(title="components" if not args.kind else f"{args.kind} components")
    for col in ("kind", "name", "provider", "summary"):
        comps.add_column(col)
    for k in kinds:
        for c in reg.all(k):
            comps.add_row(k, c.name, str(c.provider), c.spec.summary)
    con.print(comps)
    if reg.failures:
        con.print("plugins that failed to load:", style="bold red")
        for f in reg.failures:
            con.print(f"  {f}")
    return 0


def _rebuild_options(parser: argparse.ArgumentParser, doing: str) -> None:
    """``--accelerator`` and ``--data-path`` of the commands that load a checkpoint's training data again."""
    parser.add_argument("--accelerator", choices=ACCELERATORS, default="auto",
                        help=f"device to {doing} (default auto: a GPU when there is one)")
    parser.add_argument("--data-path", default=None,
                        help="where the data is now, when it moved since training (replaces data.dataset.path)")


def build_parser() -> argparse.ArgumentParser:
    from mtlframe import __version__

    p = argparse.ArgumentParser(prog="mtlframe", description="Multi-task learning for recommender systems: "
                                "train YAML recipes on PyTorch Lightning.")
    p.add_argument("--version", action="version", version=f"mtlframe {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser("train", help="train a recipe, then evaluate its best checkpoint")
    t.add_argument("recipe", nargs="?", help="YAML recipe file (none with --resume)")
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. trainer.max_epochs=3 model.backbone.name=mmoe")
    t.add_argument("--run-dir", default=None, help="output folder (default runs/<recipe>-<time>)")
    t.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    t.add_argument("--overwrite", action="store_true", help="replace a finished run in --run-dir")
    t.add_argument("--resume", metavar="RUN_DIR_OR_CKPT", default=None,
                   help="continue a run from its checkpoints/last.ckpt (interrupted.ckpt after Ctrl-C) or the "
                        "checkpoint given; overrides: trainer.* and early_stopping.* only (docs/resume.md)")
    t.set_defaults(func=cmd_train)

    pp = sub.add_parser("prepare", help="fit the preprocessor over a directory of Parquet files, streamed; saves "
                                        "it next to the data with the files' fingerprint (docs/prepare.md)")
    pp.add_argument("recipe", help="YAML recipe file; data.dataset.path is the directory of training rows")
    pp.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.min_count=5")
    pp.add_argument("--output", default=None, help="folder of the saved state (default: the data directory)")
    pp.set_defaults(func=cmd_prepare)

    e = sub.add_parser("evaluate", help="evaluate a checkpoint on a split of its recipe's data")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--split", choices=["test", "val"], default="test")
    e.add_argument("--output", default=None, help="write the metrics as JSON here")
    _rebuild_options(e, "evaluate on")
    e.add_argument("overrides", nargs="*", help="data.* overrides of the saved recipe, e.g. data.eval_batch_size=512")
    e.set_defaults(func=cmd_evaluate)

    pr = sub.add_parser("predict", help="predict every task for the rows of a CSV / Parquet file")
    pr.add_argument("--checkpoint", required=True)
    pr.add_argument("--input", required=True, help="CSV or Parquet with the model's feature columns")
    pr.add_argument("--output", required=True, help="CSV or Parquet to write (one column per task)")
    pr.add_argument("--keep", nargs="*", default=None,
                    help="input columns to copy into the output (ids), in this order, before the predictions; "
                         "a prediction named like a kept column gets '_pred' (rating -> rating_pred)")
    pr.add_argument("--accelerator", choices=ACCELERATORS, default="auto",
                    help="device to predict on (default auto: a GPU when there is one)")
    pr.set_defaults(func=cmd_predict)

    rc = sub.add_parser("recommend", help="top-K items per user from a checkpoint with a ranking: section")
    rc.add_argument("--checkpoint", required=True)
    rc.add_argument("--users", required=True, help="CSV or Parquet with a column named like the user id feature "
                                                   "(the first of ranking.user_features)")
    rc.add_argument("--k", type=int, default=20, help="items per user (default 20)")
    rc.add_argument("--output", required=True, help="CSV or Parquet to write: user, rank, item, score, source, "
                                                    "<task>_pred per task")
    rc.add_argument("--batch-size", type=int, default=256, help="users scored together (default 256)")
    _rebuild_options(rc, "score on")
    rc.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    rc.add_argument("overrides", nargs="*", help="data.* / ranking.* overrides of the saved recipe, e.g. "
                                                 "ranking.unknown_users=error 'ranking.rank_by={watch: 1}'")
    rc.set_defaults(func=cmd_recommend)

    em = sub.add_parser("embeddings", help="write the user and item vectors of each retrieval task "
                                           "(NumPy, Parquet), an exact top-K and a faiss index")
    em.add_argument("--checkpoint", required=True)
    em.add_argument("--output", required=True, help="folder to write (one subfolder per retrieval task)")
    em.add_argument("--k", type=int, default=None, help="also write top_k.csv: every user's exact top K by "
                                                        "matrix product, seen items excluded")
    em.add_argument("--faiss", choices=["flat", "hnsw"], default=None,
                    help="also write items.faiss, an inner-product index (needs pip install 'mtlframe[faiss]')")
    _rebuild_options(em, "encode on")
    em.add_argument("overrides", nargs="*", help="data.* overrides of the saved recipe")
    em.set_defaults(func=cmd_embeddings)

    ex = sub.add_parser("export", help="export a checkpoint as one ONNX / TorchScript graph plus its "
                                       "preprocessing as plain data (self-checked against predict)")
    ex.add_argument("--checkpoint", required=True)
    ex.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    ex.add_argument("--output", required=True, help="folder to create (model file, preprocessor.json, vocab/)")
    ex.add_argument("--rows", type=int, default=256, help="held-out rows for the self-check (default 256)")
    ex.add_argument("--data", default=None, help="CSV / Parquet of raw rows for the self-check "
                                                 "(default: the checkpoint's test split)")
    ex.add_argument("--overwrite", action="store_true", help="replace an existing --output (after the self-check)")
    ex.set_defaults(func=cmd_export)

    r = sub.add_parser("recipe", help="recipe tools")
    rsub = r.add_subparsers(dest="recipe_command", metavar="SUBCOMMAND")
    v = rsub.add_parser("validate", help="check a recipe without reading data")
    v.add_argument("recipe")
    v.add_argument("overrides", nargs="*")
    v.add_argument("--show", action="store_true", help="print the resolved recipe")
    v.set_defaults(func=cmd_validate)

    c = sub.add_parser("compare", help="train a grid of recipe variants over seeds; one table with the MTL gain")
    c.add_argument("recipe", help="YAML recipe file")
    c.add_argument("overrides", nargs="*", help="dotted overrides applied to every run")
    c.add_argument("--grid", action="append", metavar="KEY=V1,V2",
                   help="a grid axis (repeatable; the cartesian product is trained). Values are YAML, split "
                        "on top-level commas, or on '|' when given: "
                        "'model.backbone={name: mmoe, num_experts: 8}|{name: ple, num_levels: 2}'")
    c.add_argument("--seeds", default="3", help="number of seeds (recipe seed, +1, ...) or a list: 1,2,3")
    c.add_argument("--baseline", action="append", metavar="BACKBONE|KEY=V",
                   help="the baseline for the MTL gain: a backbone name (default single-task) and/or "
                        "overrides (repeatable), e.g. --baseline single-task --baseline combiner.name=static")
    c.add_argument("--no-baseline", action="store_true", help="no gain columns")
    c.add_argument("--metrics", default=None, help="only these metrics in the table, e.g. auc,rmse")
    c.add_argument("--output", default=None, help="folder for runs/, results.json, results.md "
                                                  "(default runs/compare-<time>)")
    c.add_argument("--runs-dir", default=None, help="folder for the run directories (default OUTPUT/runs); "
                                                    "comparisons sharing one reuse each other's runs")
    c.add_argument("--no-resume", action="store_true", help="retrain runs that already have metrics.json")
    c.set_defaults(func=cmd_compare)

    ex = sub.add_parser("explain", help="expert utilization, feature attributions, task relations and calibration "
                                        "of a checkpoint, as an HTML report")
    ex.add_argument("--checkpoint", required=True)
    ex.add_argument("--split", choices=["test", "val"], default="test")
    ex.add_argument("--output", default=None, help="folder to write (default runs/<run>/explain)")
    ex.add_argument("--max-rows", type=int, default=2000, help="rows of the split analysed (default 2000)")
    _rebuild_options(ex, "explain on")
    ex.add_argument("overrides", nargs="*", help="data.* overrides of the saved recipe")
    ex.set_defaults(func=cmd_explain)

    sv = sub.add_parser("serve", help="HTTP server of a checkpoint: /predict, /recommend, /health (docs/serving.md)")
    sv.add_argument("--checkpoint", required=True)
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    sv.add_argument("--port", type=int, default=8000, help="default 8000")
    sv.add_argument("--accelerator", choices=("cpu", "cuda", "gpu", "auto"), default="cpu",
                    help="device of the model (default cpu; cuda: an error without a GPU)")
    sv.add_argument("--max-batch-size", type=int, default=64, help="most /predict requests per forward pass (default 64)")
    sv.add_argument("--batch-timeout", type=float, default=0.005,
                    help="seconds a request waits for others to join its batch (default 0.005)")
    sv.add_argument("--workers", type=int, default=1, help="server processes, each loading the model (default 1)")
    sv.add_argument("--max-rows", type=int, default=1024, help="most rows / users per request (default 1024)")
    sv.add_argument("--data-path", default=None, help="where a ranking checkpoint's training data is now")
    sv.set_defaults(func=cmd_serve)

    v = sub.add_parser("cv", help="cross-validate a recipe (or a grid) over folds; mean ± std, paired differences")
    v.add_argument("recipe", help="YAML recipe file")
    v.add_argument("overrides", nargs="*", help="dotted overrides applied to every run")
    v.add_argument("--folds", type=int, default=None, help="number of folds (default the recipe's, else 5; "
                                                           "predefined: the dataset's)")
    v.add_argument("--scheme", default=None, choices=["kfold", "group-kfold", "time-kfold", "predefined"],
                   help="fold split (default the recipe's data.split.name if a fold split, else kfold)")
    v.add_argument("--group", default=None, help="group-kfold: the column kept in one fold (default the user column)")
    v.add_argument("--grid", action="append", metavar="KEY=V1,V2", help="a grid axis, as for compare (repeatable)")
    v.add_argument("--seeds", default="1", help="seeds (each reshuffles the folds): a count or a list 1,2,3")
    v.add_argument("--baseline", action="append", metavar="BACKBONE|KEY=V",
                   help="baseline for paired differences per fold (a backbone name and/or overrides; repeatable)")
    v.add_argument("--metrics", default=None, help="only these metrics in the tables, e.g. auc,rmse")
    v.add_argument("--output", default=None, help="folder for runs/, cv.json, cv.md (default runs/cv-<time>)")
    v.add_argument("--runs-dir", default=None, help="folder for the run directories (default OUTPUT/runs)")
    v.add_argument("--no-resume", action="store_true", help="retrain folds that already have metrics.json")
    v.set_defaults(func=cmd_cv)

    tu = sub.add_parser("tune", help="search a recipe's hyperparameters with Optuna (TPE, median pruning)")
    tu.add_argument("recipe", help="YAML recipe file (with a tune: section, or pass --space)")
    tu.add_argument("overrides", nargs="*", help="dotted overrides applied to every trial")
    tu.add_argument("--trials", type=int, required=True, help="finished trials wanted in the study (a resumed "
                                                               "study's count toward it)")
    tu.add_argument("--space", default=None, help="YAML file with the tune: mapping (metric, direction, space), "
                                                  "replacing the recipe's")
    tu.add_argument("--study", default=None, help="SQLite file of the study (default OUTPUT/study.db); the same "
                                                  "file continues the study")
    tu.add_argument("--timeout", type=float, default=None, help="start no trial after this many seconds")
    tu.add_argument("--output", default=None, help="folder for trials/, trials.md, trials.json, best.yaml "
                                                   "(default runs/tune-<time>)")
    tu.set_defaults(func=cmd_tune)

    # the arguments are the harness's own (`mtlframe benchmark --help`); main() hands them over unparsed
    sub.add_parser("benchmark", add_help=False,
                   help="run the benchmark harness of a source checkout (options: mtlframe benchmark --help)")

    pl = sub.add_parser("plugins", help="list installed plugins, their components and load failures")
    pl.add_argument("--kind", default=None, choices=["dataset", "encoder", "backbone", "tower", "combiner",
                                                     "sampler", "metric", "scheduler"], help="only this component kind")
    pl.add_argument("--json", action="store_true")
    pl.set_defaults(func=cmd_plugins)
    return p


def _line_buffered_output() -> None:
    """Flush each printed line when output goes to a file or a pipe (``| tee run.log``), so messages
    appear as they happen and in order with stderr, not in blocks or at the end."""
    for stream in (sys.stdout, sys.stderr):
        if not stream.isatty() and hasattr(stream, "reconfigure"):
            try:
                stream.reconfigure(line_buffering=True)
            except (ValueError, OSError):  # a replaced stream that cannot be reconfigured
                pass


def _plain_warnings() -> None:
    """Warnings print as one ``warning: ...`` line, not with the source line that raised them."""
    import warnings

    warnings.formatwarning = lambda message, category, *args, **kwargs: f"warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    _line_buffered_output()
    _plain_warnings()
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["benchmark"]:  # every later argument belongs to the harness
        try:
            return int(cmd_benchmark(args_list[1:]) or 0)
        except MTLFrameError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except BrokenPipeError:
            return _closed_output()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # overrides may come after options (`train r.yaml --run-dir d a.b=1`)
    stray = [a for a in extra if a.startswith("-") or "=" not in a]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = list(args.overrides or []) + extra
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(args.func(args) or 0)
    except MTLFrameError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # train's RunInterrupted says where, and what the run folder keeps
        print(str(exc) or f"interrupted (Ctrl-C) during mtlframe {args.command}", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _closed_output()
    except (IsADirectoryError, NotADirectoryError, PermissionError) as exc:  # an output path given by the user
        print(f"error: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2


def _closed_output() -> int:
    """The reader of our output went away (``mtlframe plugins --json | head -1``): stop quietly, as
    Unix tools do. Later writes (and the flush at exit) go to /dev/null instead of raising again."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout without a file descriptor (tests' captured output)
        pass
    return 1


if __name__ == "__main__":
    sys.exit(main())
