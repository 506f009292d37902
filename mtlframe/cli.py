"""The ``mtlframe`` command line.

``train RECIPE [key=value ...]``, ``evaluate``, ``predict``, ``compare``, ``recipe validate``, ``plugins``,
``benchmark`` (the harness of a source checkout).
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
    return Console(stderr=False, highlight=False)


def _metrics_table(metrics: dict, title: str):
    """Rows: tasks; columns: metrics. A metric with a cutoff (``ndcg@10``) is a column of its base
    name with one row per task and K (``watch @10``), so a retrieval task's 7 metrics x len(K)
    stay readable."""
    from rich.table import Table

    names: list[str] = []
    rows: list[tuple[str, dict]] = []
    for task, per_task in metrics.items():
        plain, by_k = {}, {}
        for m, v in per_task.items():
            base, sep, k = m.rpartition("@")
            if sep and k.isdigit():
                by_k.setdefault(int(k), {})[base] = v
            else:
                plain[m] = v
        for m in [*plain, *(b for per_k in by_k.values() for b in per_k)]:
            if m not in names:
                names.append(m)
        if not by_k:
            rows.append((task, plain))
        for j, (k, per_k) in enumerate(by_k.items()):
            rows.append((f"{task} @{k}", {**(plain if j == 0 else {}), **per_k}))
    table = Table(title=title)
    table.add_column("task")
    for m in names:
        table.add_column(m, justify="right")
    for label, values in rows:
        table.add_row(label, *[("-" if values.get(m) is None else f"{values[m]:.4f}") for m in names])
    return table


def cmd_train(args: argparse.Namespace) -> int:
    from mtlframe.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    from mtlframe.run import train

    result = train(recipe, args.run_dir, progress=False if args.no_progress else None, overwrite=args.overwrite)
    if not result.is_global_zero:  # other DDP processes stay quiet
        return 0
    con = _console()
    for split in ("val", "test"):
        if result.metrics.get(split):
            con.print(_metrics_table(result.metrics[split], f"{split} metrics (best checkpoint)"))
    con.print(f"parameters: {result.num_parameters:,}  train time: {result.train_seconds:.1f} s")
    con.print(f"run directory: {result.run_dir}  (metrics.json, recipe.yaml, checkpoints/best.ckpt)")
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
        Console(stderr=True, highlight=False).print(table)
    for line in predict_warnings({k: v for k, v in report.items() if k != "oov"}):
        print(f"warning: {line}", file=sys.stderr)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from mtlframe.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    cfg = recipe.config
    tasks = ", ".join(f"{n} ({t.type})" for n, t in cfg.tasks.items())
    print(f"{args.recipe}: valid. dataset {cfg.data.dataset['name']}; tasks {tasks}; "
          f"backbone {cfg.model.backbone['name'] if cfg.model.backbone else 'none'}; combiner {cfg.combiner['name']}.")
    if args.show:
        print(recipe.to_yaml())
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    import shlex

    from mtlframe.compare import rich_table, run_compare, write_outputs

    con = _console()
    if not con.is_terminal:  # piped to a file: do not squeeze the wide table into 80 columns
        con.width = max(con.width, 240)
    command = "mtlframe " + shlex.join(getattr(args, "argv", None) or [])
    result = run_compare(args.recipe, args.grid or [], args.seeds, overrides=args.overrides,
                         baseline=[] if args.no_baseline else (args.baseline or ["single-task"]),
                         output=args.output, runs_dir=args.runs_dir, command=command, resume=not args.no_resume,
                         metrics=args.metrics.split(",") if args.metrics else None,
                         progress=lambda line: con.print(line, markup=False, soft_wrap=True))
    write_outputs(result)
    con.print(rich_table(result))
    con.print(f"results: {result.output}/results.md, {result.output}/results.json; "
              f"runs under {args.runs_dir or str(result.output) + '/runs'}/")
    failed = sum(r["status"] != "ok" for c in result.configs for r in c.runs)
    if failed:
        con.print(f"{failed} run(s) failed; see error.txt in their run directories.")
    return 1 if failed else 0


def _checkout_root() -> Path | None:
    """The source checkout holding ``benchmarks/run.py``: the one this mtlframe was imported from
    (an editable install or a run from the tree), else the working directory."""
    import mtlframe

    for root in (Path(mtlframe.__file__).resolve().parents[1], Path.cwd()):
        if (root / "benchmarks" / "run.py").is_file() and (root / "mtlframe").is_dir():
            return root
    return None


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
        con.print("[bold red]plugins that failed to load:[/bold red]")
        for f in reg.failures:
            con.print(f"  {f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from mtlframe import __version__

    p = argparse.ArgumentParser(prog="mtlframe", description="Multi-task learning for recommender systems: "
                                "train YAML recipes on PyTorch Lightning.")
    p.add_argument("--version", action="version", version=f"mtlframe {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser("train", help="train a recipe, then evaluate its best checkpoint")
    t.add_argument("recipe", help="YAML recipe file")
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. trainer.max_epochs=3 model.backbone.name=mmoe")
    t.add_argument("--run-dir", default=None, help="output folder (default runs/<recipe>-<time>)")
    t.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    t.add_argument("--overwrite", action="store_true", help="replace a finished run in --run-dir")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="evaluate a checkpoint on a split of its recipe's data")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--split", choices=["test", "val"], default="test")
    e.add_argument("--output", default=None, help="write the metrics as JSON here")
    e.add_argument("--accelerator", choices=ACCELERATORS, default="auto",
                   help="device to evaluate on (default auto: a GPU when there is one)")
    e.add_argument("--data-path", default=None,
                   help="where the data is now, when it moved since training (replaces data.dataset.path)")
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

    # the arguments are the harness's own (`mtlframe benchmark --help`); main() hands them over unparsed
    sub.add_parser("benchmark", add_help=False,
                   help="run the benchmark harness of a source checkout (options: mtlframe benchmark --help)")

    pl = sub.add_parser("plugins", help="list installed plugins, their components and load failures")
    pl.add_argument("--kind", default=None, choices=["dataset", "encoder", "backbone", "tower", "combiner",
                                                     "sampler", "metric"], help="only this component kind")
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
