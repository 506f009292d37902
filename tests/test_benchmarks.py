"""The benchmark harness runs end to end in its tiny mode and writes well-formed results.

Speed targets live in the benchmark (docs/performance.md), not here.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]


def test_harness_tiny_mode(tmp_path):
    out = tmp_path / "bench"
    # through `mtlframe benchmark`, from outside the checkout when the command's mtlframe is imported
    # from it (an editable install: the command finds the harness); with a wheel install it finds the
    # harness in the working directory, so it runs from the checkout
    where = subprocess.run([sys.executable, "-c", "import mtlframe; print(mtlframe.__file__)"], cwd=tmp_path,
                           capture_output=True, text=True, check=True).stdout.strip()
    editable = Path(where).resolve().parents[1] == CHECKOUT
    cmd = [sys.executable, "-m", "mtlframe.cli", "benchmark", "--quick", "--rows", "5000", "--systems",
           "reference,mtlframe", "--repeats", "1", "--epochs", "1", "--scale", "none", "--export", "none", "--output", str(out),
           "--no-docs"]
    proc = subprocess.run(cmd, cwd=tmp_path if editable else CHECKOUT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert (out / "performance.png").stat().st_size > 0
    assert set(results) >= {"environment", "adult", "scale", "notes"}
    summary = results["adult"]["summary"]
    assert set(summary) == {"reference", "mtlframe"}
    for system, v in summary.items():
        for key in ("samples_per_s", "epoch_s", "setup_s", "peak_rss_mb", "predict_rows_per_s"):
            assert math.isfinite(v[key]) and v[key] > 0, (system, key, v[key])
        assert set(v["auc"]) == {"income", "never_married"}
        assert all(math.isfinite(a) and 0.0 <= a <= 1.0 for a in v["auc"].values()), v["auc"]
    assert summary["reference"]["ratio_to_reference"] == 1.0
    assert summary["reference"]["ratio_to_reference_per_repeat"] == [1.0]
    assert summary["mtlframe"]["ratio_to"]["reference"] > 0
    assert summary["mtlframe"]["ratio_to_reference_per_repeat"] == [summary["mtlframe"]["ratio_to_reference"]]
    assert results["environment"]["command"].startswith("mtlframe benchmark --quick")
    assert len(results["adult"]["runs"]["mtlframe"]) == 1
    import torch

    if not torch.cuda.is_available():   # the GPU section says why it did not run
        assert results["gpu"]["status"].startswith("skipped: no CUDA device"), results["gpu"]
        assert results["gpu"]["rows"] == []
