"""Shared pieces of the harness: the benchmark setting, the prepared Adult arrays, timing and memory.

Every system trains the same MMoE on the same seeded 80/10/10 split of UCI Adult: categorical
features embedded with width 8, numeric features standardized with the training split's
statistics, 4 experts with hidden [64], one softmax gate and one tower [32] per task, Adam 1e-3,
batch 1024. The anchors (the reference loop, torch-rechub, DeepCTR-Torch) are fed the arrays of
:func:`prepare_adult`, built with mtlframe's own split and preprocessor, so every system sees the
same rows, vocabularies and standardization; mtlframe builds its own from its recipe.
"""
from __future__ import annotations

import contextlib
import io
import os
import resource
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np

RECIPE = "recipes/adult_mmoe.yaml"
CATEGORICAL = ["workclass", "education", "occupation", "relationship", "race", "gender", "native_country"]
NUMERIC = ["age", "fnlwgt", "educational_num", "capital_gain", "capital_loss", "hours_per_week"]
TASKS = ["income", "never_married"]
EMBED_DIM = 8
NUM_EXPERTS = 4
EXPERT_HIDDEN = [64]
TOWER_HIDDEN = [32]
LR = 1e-3
BATCH_SIZE = 1024


@dataclass
class Split:
    """One split as arrays: ``cat [N, F]`` int64 ids (0 = OOV, per feature, no offsets),
    ``num [N, 6]`` float32 standardized, ``y [N, T]`` float32 labels."""

    cat: np.ndarray
    num: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Prepared:
    seed: int
    cardinalities: list[int]
    splits: dict[str, Split]
    frames: dict = field(default_factory=dict)  # raw pandas test frame for predict
    setup_seconds: float = 0.0
    truncated: bool = False


def prepare_adult(seed: int) -> Prepared:
    """Seeded 80/10/10 split of Adult, preprocessed with mtlframe's preprocessor (fit on train)."""
    from mtlframe.datamodule import split_indices
    from mtlframe.datasets.adult import Adult
    from mtlframe.features import label_key
    from mtlframe.preprocess import LabelSpec, Preprocessor

    start = time.perf_counter()
    table = Adult().load()
    idx = split_indices(table, "random", 0.1, 0.1, seed)
    frames = {k: table.frame.iloc[v].reset_index(drop=True) for k, v in idx.items()}
    features = {c: "categorical" for c in CATEGORICAL} | {c: "numeric" for c in NUMERIC}
    pre = Preprocessor(features, [LabelSpec(t, t, "binary") for t in TASKS]).fit(frames["train"])
    splits = {}
    for name, frame in frames.items():
        cols = pre.transform(frame)
        splits[name] = Split(
            cat=np.stack([cols[c].numpy() for c in CATEGORICAL], axis=1).astype(np.int64),
            num=np.stack([cols[c].numpy() for c in NUMERIC], axis=1).astype(np.float32),
            y=np.stack([cols[label_key(t)].numpy() for t in TASKS], axis=1).astype(np.float32))
    info = pre.feature_info()
    return Prepared(seed, [info[c].cardinality for c in CATEGORICAL], splits, {"test": frames["test"]},
                    time.perf_counter() - start)


def auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC (ties averaged) without scikit-learn."""
    y = np.asarray(y).astype(bool)
    p = np.asarray(p, dtype=np.float64)
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(len(p), dtype=np.float64)
    sp = p[order]
    # average ranks of ties
    bounds = np.flatnonzero(np.diff(sp)) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [len(p)]])
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    pos = int(y.sum())
    neg = len(y) - pos
    if pos == 0 or neg == 0:
        return float("nan")
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg))


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def max_rss_bytes() -> int:
    """The process's peak RSS so far.

    On Linux, ``VmHWM`` from ``/proc/self/status``: the peak of this process image. ``ru_maxrss``
    survives ``fork`` + ``exec``, so a size run started from the harness (itself ~700 MB with
    Adult and the anchors' libraries loaded) would report at least the harness's RSS. Elsewhere,
    ``ru_maxrss``.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024   # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


class PeakRSS:
    """Samples this process's RSS on a thread while the block runs.

    ``peak`` is the highest RSS seen in the block (the process's whole RSS, so it includes what
    earlier systems left allocated); ``delta`` is ``peak`` minus the RSS at entry.
    """

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.start = self.peak = 0
        self._stop = threading.Event()

    def __enter__(self) -> "PeakRSS":
        self.start = self.peak = rss_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def delta(self) -> int:
        return self.peak - self.start


@contextlib.contextmanager
def quiet():
    """Swallow the anchors' prints and progress bars (stdout and stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        yield


def available_memory_bytes() -> int:
    """``MemAvailable`` from /proc/meminfo (0 if unknown)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table as lines: ``header``, the rule, one line per row (cells already formatted;
    a short row is padded with empty cells)."""
    pad = [r + [""] * (len(header) - len(r)) for r in rows]
    return ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"] + ["| " + " | ".join(r) + " |" for r in pad]
