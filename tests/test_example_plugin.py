"""The example plugin as a user meets it: pip-installed, listed by ``mtlframe plugins``, trained.

``plugins/mtlframe-example`` is built and installed with pip into a private folder (``--target``)
that the ``mtlframe`` subprocesses get on ``PYTHONPATH``: a real wheel build and a real
entry-point discovery, without touching the shared environment, and the same result whether or
not the plugin is already installed there (mtlframe loads one ``example`` entry point; the
private copy comes first on the path). Offline: ``--no-index --no-build-isolation`` builds with
the setuptools already installed (>= 70.1 builds wheels without the ``wheel`` package).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PLUGIN = REPO / "plugins" / "mtlframe-example"
RECIPE = REPO / "recipes" / "adult_example_plugin.yaml"


def _setuptools_ok() -> str | None:
    try:
        import setuptools
    except ImportError:
        return "setuptools is not installed"
    major, minor = (int(p) for p in setuptools.__version__.split(".")[:2])
    return None if (major, minor) >= (70, 1) else f"setuptools {setuptools.__version__} is older than 70.1"


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    """A folder holding the installed ``mtlframe-example`` distribution (package + dist-info)."""
    problem = _setuptools_ok()
    if problem:
        pytest.fail(f"{problem}; building the example plugin offline needs it: pip install 'setuptools>=70.1'")
    root = tmp_path_factory.mktemp("example-plugin")
    src = root / "src"
    # build from a copy: setuptools writes build/ and *.egg-info next to the sources
    shutil.copytree(PLUGIN, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".pytest_cache"))
    site = root / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--quiet", "--target", str(site), str(src)],
        capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0:
        pytest.fail(f"pip could not install {PLUGIN}:\n{proc.stdout}\n{proc.stderr}")
    assert (site / "mtlframe_example" / "plugin.py").is_file()
    assert list(site.glob("mtlframe_example-0.1.0.dist-info/entry_points.txt"))
    return site


def _mtlframe(site: Path, *args: str, env: dict[str, str] | None = None,
              timeout: int = 300) -> subprocess.CompletedProcess:
    full = {**os.environ, "MTLFRAME_STRICT_PLUGINS": "1", "OMP_NUM_THREADS": "1"}
    full.pop("MTLFRAME_DISABLE_PLUGINS", None)
    full.update(env or {})
    full["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), full.get("PYTHONPATH", "")) if p)
    return subprocess.run([sys.executable, "-m", "mtlframe.cli", *args], capture_output=True, text=True,
                          cwd=REPO, env=full, timeout=timeout, check=False)


def test_plugins_command_lists_the_distribution_and_its_component(plugin_site):
    proc = _mtlframe(plugin_site, "plugins", "--json")
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout)
    assert payload["plugins"]["example"] == {"distribution": "mtlframe-example", "version": "0.1.0"}
    encoders = {c["name"]: c for c in payload["components"]["encoder"]}
    assert encoders["log-numeric"]["provider"] == "mtlframe-example"
    assert "signed log1p" in encoders["log-numeric"]["summary"]
    assert payload["failures"] == []

    table = _mtlframe(plugin_site, "plugins", "--kind", "encoder")
    assert table.returncode == 0, table.stderr
    assert "log-numeric" in table.stdout and "mtlframe-example" in table.stdout


def test_recipe_needs_the_plugin(plugin_site):
    # (with the plugin, the training test below validates the recipe.) With the plugin blocked:
    # a user error naming the component, the recipe key and the command that lists components
    blocked = _mtlframe(plugin_site, "recipe", "validate", str(RECIPE), env={"MTLFRAME_DISABLE_PLUGINS": "example"})
    assert blocked.returncode == 2
    assert "unknown encoder 'log-numeric'" in blocked.stderr
    assert "model.encoders[2].name" in blocked.stderr and "mtlframe plugins" in blocked.stderr


def test_one_epoch_of_the_example_recipe(plugin_site, tmp_path):
    run_dir = tmp_path / "run"
    proc = _mtlframe(plugin_site, "train", str(RECIPE), "trainer.max_epochs=1", "trainer.accelerator=cpu",
                     "--run-dir", str(run_dir), "--no-progress")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for task in ("income", "never_married"):
        auc = metrics["test"][task]["auc"]
        assert auc is not None and math.isfinite(auc) and 0.6 < auc <= 1.0, (task, auc)
    assert metrics["providers"]["encoder:log-numeric"] == "mtlframe-example 0.1.0"
