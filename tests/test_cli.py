"""The command line: fast light commands, one-paragraph errors, exit codes."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(code_or_args, python=False):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-c", code_or_args] if python else [sys.executable, "-m", "mtlframe.cli", *code_or_args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=120)


def test_light_commands_do_not_import_lightning():
    # --help, plugins and recipe validate must stay fast: Lightning alone takes seconds to import.
    code = ("import sys; from mtlframe.cli import main\n"
            "for argv in (['plugins'], ['recipe', 'validate', 'recipes/quickstart.yaml']):\n"
            "    assert main(argv) == 0\n"
            "bad = [m for m in ('pytorch_lightning', 'lightning', 'torchmetrics') if m in sys.modules]\n"
            "print('HEAVY', bad)")
    proc = _run(code, python=True)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout


def test_help_lists_commands():
    proc = _run(["--help"])
    assert proc.returncode == 0
    for cmd in ("train", "evaluate", "predict", "recipe", "plugins"):
        assert cmd in proc.stdout


def test_plugins_lists_builtins():
    proc = _run(["plugins", "--kind", "backbone"])
    assert proc.returncode == 0
    assert "mmoe" in proc.stdout and "mtlframe" in proc.stdout


def test_plugins_kind_shows_only_that_kind():
    import json

    proc = _run(["plugins", "--kind", "tower"])
    assert proc.returncode == 0, proc.stderr
    assert "tower:mlp" in proc.stdout and "MLP task tower" in proc.stdout
    for other in ("mmoe", "backbone", "encoder:", "embedding", "auc", "static", "synthetic"):
        assert other not in proc.stdout, other
    proc = _run(["plugins", "--kind", "tower", "--json"])
    data = json.loads(proc.stdout)
    assert list(data["components"]) == ["tower"] and [c["name"] for c in data["components"]["tower"]] == ["mlp"]


def test_bad_recipes_exit_2_with_one_paragraph(tmp_path):
    base = (REPO / "recipes" / "adult_mmoe.yaml").read_text()
    cases = {
        "typo": (base.replace("num_experts: 4", "num_expert: 4"), "model.backbone.num_expert", "num_experts"),
        "unknown": (base.replace("name: mmoe", "name: mmoee"), "model.backbone.name", "Did you mean 'mmoe'"),
        "type": (base.replace("max_epochs: 10", "max_epochs: ten"), "trainer.max_epochs", "valid integer"),
    }
    for name, (text, path, fix) in cases.items():
        p = tmp_path / f"{name}.yaml"
        p.write_text(text)
        for argv in (["recipe", "validate", str(p)], ["train", str(p)]):
            proc = _run(argv)
            assert proc.returncode == 2, (name, argv, proc.stderr)
            assert path in proc.stderr and fix in proc.stderr and str(p) in proc.stderr
            assert "Traceback" not in proc.stderr


def test_unknown_feature_column_is_a_recipe_error(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text((REPO / "recipes" / "adult_mmoe.yaml").read_text().replace("hours_per_week]", "hours_per_wek]"))
    proc = _run(["train", str(p), "trainer.max_epochs=1"])
    assert proc.returncode == 2
    assert "model.encoders[1].features[5]" in proc.stderr and "hours_per_week" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_override_after_options_and_validate_show():
    proc = _run(["recipe", "validate", "recipes/adult_mmoe.yaml", "--show", "model.backbone.num_experts=2"])
    assert proc.returncode == 0, proc.stderr
    assert "num_experts: 2" in proc.stdout


def test_value_errors_found_by_validate_and_by_train_before_data(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text((REPO / "recipes" / "adult_mmoe.yaml").read_text().replace("num_experts: 4", "num_experts: 0"))
    for argv in (["recipe", "validate", str(p)], ["train", str(p), "--run-dir", str(tmp_path / "run")]):
        proc = _run(argv)
        assert proc.returncode == 2, (argv, proc.stderr)
        assert "model.backbone.num_experts" in proc.stderr and "num_experts must be >= 1, got 0" in proc.stderr
        assert f"{p}:" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()  # train stopped before reading data or making the run
