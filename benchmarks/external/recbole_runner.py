"""One RecBole training run (BPR or LightGCN) on ML-100K; runs in RecBole's own environment.

Called by ``benchmarks/recbole_ml100k.py`` (which runs in mtlframe's environment) as::

    /work/recbole-venv/bin/python benchmarks/external/recbole_runner.py --data-dir DIR --dataset ml-100k \\
        --model BPR --seed 2026 --output result.json [--benchmark-files]

``DIR/ml-100k/`` holds RecBole atomic files: ``ml-100k.inter`` (RecBole splits it itself with its
default ``eval_args``: per-user random 8:1:1, full ranking) or, with ``--benchmark-files``,
``ml-100k.{train,valid,test}.inter`` (``benchmark_filename``: the split is taken as written).
Every other setting is RecBole 1.2.1's default (``properties/overall.yaml``, the model's yaml and
``properties/dataset/ml-100k.yaml``), except the machine-side ones: CPU, no progress bar, no
workers, checkpoints and logs in a temporary folder.

This file imports nothing from mtlframe and is never imported by the harness (it lives in
``benchmarks/external/``, outside the ``bench`` extra's scope): RecBole 1.2.1 is installed in a
separate venv, because its dependencies (``colorlog==4.7.2``, ...) and its torch must not enter
mtlframe's environment.

Compatibility shim (RecBole 1.2.1 predates numpy 2 and torch >= 2.6), applied before RecBole is
imported, nothing in site-packages edited:

* numpy 2 removed ``np.float_``, ``np.complex_`` and ``np.unicode_``;
  ``recbole.config.Config.compatibility_settings`` aliases ``np.float = np.float_`` etc. and fails
  without them: they are put back as aliases of ``np.float64``, ``np.complex128``, ``np.str_``.
* scipy >= 1.13 removed the private ``dok_matrix._update`` (an unchecked ``dict.update`` of
  ``{(row, col): value}``) that LightGCN's adjacency matrix uses; it is put back as exactly that,
  on the ``_dict`` newer scipy keeps the entries in.
* torch >= 2.6 loads checkpoints with ``weights_only=True``; RecBole's own best-model checkpoint
  (written by this very run) holds its ``Config`` object: ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``.
* RecBole reads a dataset named ``ml-100k`` from its bundled copy whatever ``data_path`` says;
  ``data_path`` is set again after ``Config`` is built, so the files given here are read (the
  bundled ``ml-100k.inter`` has the same 100,000 rows as GroupLens's ``u.data``: equal sorted MD5).
* pandas 3 (copy-on-write) makes RecBole's ``feat[field].fillna(..., inplace=True)`` a no-op
  (a ``ChainedAssignmentError`` warning); ML-100K's loaded columns have no missing value, so
  nothing is left unfilled.
* ``ray`` (hyper-parameter tuning only, imported by ``recbole.quick_start``) is not installed;
  ``recbole.quick_start`` is not used.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time


def shim() -> list[str]:
    """Apply the compatibility shim described in the module docstring; returns what was changed."""
    import numpy as np

    done = []
    for old, new in (("float_", np.float64), ("complex_", np.complex128), ("unicode_", np.str_)):
        if old not in np.__dict__:
            setattr(np, old, new)
            done.append(f"np.{old} = {new.__name__}")
    import scipy.sparse as sp

    if not hasattr(sp.dok_matrix, "_update"):
        sp.dok_matrix._update = lambda self, data: self._dict.update(data)
        done.append("scipy.sparse.dok_matrix._update = unchecked dict update")
    if os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD") != "1":
        os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
        done.append("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1")
    return done


def run(data_dir: str, dataset: str, model_name: str, seed: int, benchmark_files: bool,
        epochs: int | None, threads: int) -> dict:
    shimmed = shim()
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_logger, init_seed

    work = tempfile.mkdtemp(prefix="recbole-")
    os.chdir(work)  # RecBole writes ./log and ./log_tensorboard under the working directory
    cfg = {"data_path": data_dir, "seed": seed, "use_gpu": False, "show_progress": False, "worker": 0,
           "checkpoint_dir": os.path.join(work, "saved"), "state": "WARNING",
           "metric_decimal_place": 6}
    if benchmark_files:
        cfg["benchmark_filename"] = ["train", "valid", "test"]
    if epochs is not None:
        cfg["epochs"] = epochs
    config = Config(model=model_name, dataset=dataset, config_dict=cfg)
    # RecBole 1.2.1 points the dataset named "ml-100k" at its bundled copy whatever data_path says
    # (Config._set_default_parameters); read the files given here instead
    config["data_path"] = os.path.join(data_dir, dataset)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    t0 = time.perf_counter()
    ds = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, ds)
    split_check = _split_rows(ds, (train_data, valid_data, test_data), data_dir, dataset, benchmark_files)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    t1 = time.perf_counter()
    best_valid, best_valid_result = trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    t2 = time.perf_counter()
    test_result = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
    t3 = time.perf_counter()
    keys = {"recall@10": "Recall@10", "ndcg@10": "NDCG@10", "mrr@10": "MRR@10", "hit@10": "Hit@10",
            "precision@10": "Precision@10"}
    lower = {k.lower(): float(v) for k, v in test_result.items()}
    return {
        "model": model_name, "seed": seed, "split": "files" if benchmark_files else "recbole-RS-8:1:1",
        "test": {k: lower[k] for k in keys if k in lower},
        "valid": {k.lower(): float(v) for k, v in best_valid_result.items()},
        "epochs_run": _epochs_run(trainer),
        "setup_s": t1 - t0, "train_s": t2 - t1, "test_s": t3 - t2, "wall_s": t3 - t0,
        "config": {k: _plain(config[k]) for k in ("epochs", "train_batch_size", "learning_rate", "embedding_size",
                                                   "train_neg_sample_args", "eval_args", "stopping_step",
                                                   "valid_metric", "n_layers", "reg_weight", "weight_decay",
                                                   "benchmark_filename", "topk", "metrics")},
        "split_check": split_check, "shim": shimmed, "recbole_threads": threads,
        "versions": {"numpy": np.__version__, "torch": torch.__version__,
                     "recbole": __import__("recbole").__version__},
    }


def _epochs_run(trainer) -> int:
    # RecBole's Trainer.fit leaves the last epoch index nowhere public; count the training losses it kept
    return len(getattr(trainer, "train_loss_dict", {}) or {})


def _plain(v):
    try:
        json.dumps(v)
        return v
    except TypeError:
        return str(v)


def _split_rows(ds, loaders, data_dir: str, dataset: str, benchmark_files: bool) -> dict:
    """Check that RecBole's id remapping kept every written row in its split: the (user, item)
    token pairs of each built split equal those of its file (as multisets)."""
    from collections import Counter

    out = {"rows": {}}
    names = ("train", "valid", "test")
    for name, loader in zip(names, loaders):
        d = loader._dataset
        u = d.id2token(d.uid_field, d.inter_feat[d.uid_field].numpy())
        i = d.id2token(d.iid_field, d.inter_feat[d.iid_field].numpy())
        built = Counter(zip(u.tolist(), i.tolist()))
        out["rows"][name] = int(sum(built.values()))
        if benchmark_files:
            path = os.path.join(data_dir, dataset, f"{dataset}.{name}.inter")
            with open(path, encoding="utf-8") as f:
                next(f)
                written = Counter(tuple(line.rstrip("\n").split("\t")[:2]) for line in f)
            out[f"{name}_equal_to_file"] = built == written
    if benchmark_files and not all(out[f"{n}_equal_to_file"] for n in names):
        raise SystemExit(f"RecBole changed the split: {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", required=True, help="folder holding DATASET/ (RecBole's data_path)")
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--model", required=True, choices=["BPR", "LightGCN"])
    p.add_argument("--seed", type=int, default=2020)
    p.add_argument("--benchmark-files", action="store_true", help="use DATASET.{train,valid,test}.inter as the split")
    p.add_argument("--epochs", type=int, default=None, help="override RecBole's 300 (smoke tests only)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--output", required=True)
    a = p.parse_args(argv)
    res = run(os.path.abspath(a.data_dir), a.dataset, a.model, a.seed, a.benchmark_files, a.epochs, a.threads)
    with open(a.output, "w", encoding="utf-8") as f:
        json.dump(res, f, indent=2)
    print(json.dumps({k: res[k] for k in ("model", "seed", "test", "wall_s", "epochs_run")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
