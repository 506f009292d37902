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


def test_validate_names_overrides_wrong_levels_and_repeated_features():
    cases = [
        (["trainer..max_epochs=3"], "trainer..max_epochs", "has an empty part between two dots; write it as "
                                                          "trainer.max_epochs"),
        (["learning_rate=0.1"], "learning_rate (command-line override learning_rate=0.1)",
         "mtlframe calls 'learning_rate' optimizer.lr: write lr under optimizer."),
        (["model.encoders[1].features=[age, age]"],
         "model.encoders[1].features[1] (command-line override model.encoders[1].features=[age, age])",
         "feature 'age' is listed twice: here and at model.encoders[1].features[0]"),
    ]
    for overrides, where, what in cases:
        proc = _run(["recipe", "validate", "recipes/adult_mmoe.yaml", *overrides])
        assert proc.returncode == 2, (overrides, proc.stderr)
        assert where in proc.stderr and what in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr


def _one_line_error(proc, *expected):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for text in expected:
        assert text in lines[0], (text, lines[0])


def test_a_folder_binary_or_non_utf8_file_given_as_a_recipe_is_a_one_line_error(tmp_path):
    import torch

    folder = tmp_path / "recipes_dir"
    folder.mkdir()
    ckpt = tmp_path / "best.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(3)}}, ckpt)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("seed: 1\ncafé: 2\n".encode("latin-1"))
    for argv, expected in [
            (["recipe", "validate", str(folder)], (f"recipe {folder}: is a folder, not a file",)),
            (["train", str(folder)], ("is a folder, not a file", "recipes/quickstart.yaml")),
            (["compare", str(folder), "--seeds", "1"], ("is a folder, not a file",)),
            (["train", str(ckpt)], (f"recipe {ckpt}: is a binary file, not text (a checkpoint",)),
            (["recipe", "validate", str(latin)], ("is not UTF-8 text: byte 0xe9 on line 2", "save it as UTF-8"))]:
        _one_line_error(_run(argv), *expected)


def test_a_folder_as_checkpoint_input_or_output_is_a_one_line_error(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "best.ckpt").write_bytes(b"")
    folder = tmp_path / "a_folder"
    folder.mkdir()
    # a run folder given as the checkpoint: the file inside it is named
    _one_line_error(_run(["evaluate", "--checkpoint", str(run)]),
                    f"checkpoint {run} is a folder, not a file; pass {run / 'checkpoints' / 'best.ckpt'}")
    rows = tmp_path / "rows.csv"
    rows.write_text("x\n1\n")
    # the same checks in-process (a subprocess each would import torch again)
    from mtlframe.cli import main

    for argv, expected in [
            (["predict", "--checkpoint", str(folder), "--input", str(rows), "--output", "y.csv"],
             ("is a folder, not a file", "runs/<name>/checkpoints/best.ckpt")),
            (["predict", "--checkpoint", str(run), "--input", str(folder), "--output", "y.csv"],
             (f"input file {folder} is a folder, not a file",))]:
        assert main(argv) == 2
        _one_line_error(subprocess.CompletedProcess(argv, 2, "", capsys.readouterr().err), *expected)


def test_a_folder_as_a_dataset_file_or_an_output_file_names_it():
    import pandas as pd
    import pytest

    from mtlframe.datasets.tabular import CsvDataset, ParquetDataset
    from mtlframe.errors import DataError
    from mtlframe.run import write_table

    with pytest.raises(DataError, match="output .* is a folder, not a file; pass a file name such as"):
        write_table(pd.DataFrame({"a": [1]}), REPO / "recipes")
    for cls in (CsvDataset, ParquetDataset):
        with pytest.raises(DataError, match=r"recipes is a folder, not a file\. Check data.dataset.path"):
            cls(str(REPO / "recipes"), {"x": "numeric"}, ["y"]).load()


def _to_closed_pipe(argv):
    """Run the CLI with its stdout a pipe whose reader has already gone."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        return subprocess.run([sys.executable, "-m", "mtlframe.cli", *argv], stdout=write_end, stderr=subprocess.PIPE,
                              text=True, cwd=REPO, env=env, timeout=120)
    finally:
        os.close(write_end)


def test_a_closed_output_pipe_ends_quietly():
    for argv in (["plugins", "--json"], ["plugins"]):
        proc = _to_closed_pipe(argv)
        assert proc.returncode == 1 and proc.stderr == "", (argv, proc.stderr)


def test_tables_print_bracketed_values_as_written(capsys):
    """Grid labels and task names hold brackets (`features: [hist_items]`); rich would read them
    as style tags and drop them."""
    from mtlframe.cli import _console, _metrics_table

    _console().print(_metrics_table({"encoders=[{name: pool, features: [hist_items]}]": {"auc": 0.5}}, "t"))
    assert "[hist_items]" in capsys.readouterr().out
