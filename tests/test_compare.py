"""``mtlframe compare``: aggregation on hand-made numbers, grid parsing, baselines, failures, resume,
and one tiny end-to-end comparison on the synthetic dataset."""
from __future__ import annotations

import json
import math

import pytest

from mtlframe.cli import main
from mtlframe.compare import (aggregate, delta_m, gains_over, markdown_table, mean_std, parse_grid,
                              parse_seeds, relative_gain, rich_table, run_compare, write_outputs)
from mtlframe.errors import MTLFrameError, RecipeError

# ------------------------------------------------------------------ aggregation, by hand


def test_mean_std_is_sample_std():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)          # sqrt(((1-2)^2 + 0 + (3-2)^2) / 2)
    m, s = mean_std([0.80, 0.84])
    assert m == pytest.approx(0.82) and s == pytest.approx(0.02 * math.sqrt(2))
    m, s = mean_std([0.7])                                   # one value: the spread is undefined, not 0
    assert m == 0.7 and math.isnan(s)
    m, s = mean_std([0.7, float("nan")])                     # a missing value is dropped
    assert m == 0.7 and math.isnan(s)
    assert all(math.isnan(v) for v in mean_std([]))


def test_relative_gain_is_sign_aware():
    # higher is better (AUC): 0.90 vs 0.80 -> +12.5 %; 0.76 vs 0.80 -> -5 %
    assert relative_gain(0.90, 0.80, True) == pytest.approx(0.125)
    assert relative_gain(0.76, 0.80, True) == pytest.approx(-0.05)
    # lower is better (RMSE): 0.90 vs 1.00 -> +10 % (better); 1.10 vs 1.00 -> -10 % (worse)
    assert relative_gain(0.90, 1.00, False) == pytest.approx(0.10)
    assert relative_gain(1.10, 1.00, False) == pytest.approx(-0.10)
    assert math.isnan(relative_gain(1.0, 0.0, True))
    assert math.isnan(relative_gain(float("nan"), 1.0, True))


def test_delta_m_is_mean_of_signed_gains():
    # Δm = 1/T Σ (-1)^{l_t} (M_t - B_t) / B_t: AUC 0.82 vs 0.80 (+2.5 %), RMSE 0.95 vs 1.00 (+5 %)
    gains = [relative_gain(0.82, 0.80, True), relative_gain(0.95, 1.00, False)]
    assert delta_m(gains) == pytest.approx((0.025 + 0.05) / 2)
    # a better AUC and a worse RMSE cancel
    assert delta_m([relative_gain(0.88, 0.80, True), relative_gain(1.10, 1.00, False)]) == pytest.approx(0.0)
    assert math.isnan(delta_m([0.1, float("nan")]))


def test_aggregate_and_gains_over_on_hand_numbers():
    runs = [{"metrics": {"ctr": {"auc": 0.80, "logloss": 0.50}, "rating": {"rmse": 1.00}},
             "num_parameters": 100, "train_seconds": 2.0},
            {"metrics": {"ctr": {"auc": 0.84, "logloss": 0.40}, "rating": {"rmse": 0.90}},
             "num_parameters": 100, "train_seconds": 4.0}]
    agg = aggregate(runs)
    assert agg["metrics"]["ctr"]["auc"]["mean"] == pytest.approx(0.82)
    assert agg["metrics"]["ctr"]["auc"]["std"] == pytest.approx(math.sqrt(2 * 0.02 ** 2))
    assert agg["metrics"]["rating"]["rmse"]["n"] == 2
    assert agg["num_parameters"] == 100 and agg["train_seconds"] == pytest.approx(3.0)
    base = aggregate([{"metrics": {"ctr": {"auc": 0.80}, "rating": {"rmse": 1.00}},
                       "num_parameters": 50, "train_seconds": 1.0}])
    gains, dm = gains_over(agg, base, {"ctr": ("auc", True), "rating": ("rmse", False)})
    assert gains["ctr"] == pytest.approx(0.025)               # (0.82 - 0.80) / 0.80
    assert gains["rating"] == pytest.approx(0.05)             # (1.00 - 0.95) / 1.00
    assert dm == pytest.approx(0.0375)


def test_parse_grid_commas_pipes_and_yaml():
    a = parse_grid("model.backbone.name=shared-bottom,mmoe,ple")
    assert a.values == ("shared-bottom", "mmoe", "ple") and a.header == "backbone"
    b = parse_grid("model.backbone.expert_hidden=[64, 32],[16]")          # commas inside [] do not split
    assert b.values == ([64, 32], [16])
    c = parse_grid("model.backbone={name: mmoe, num_experts: 4}|{name: ple, num_levels: 2}")
    assert c.values == ({"name": "mmoe", "num_experts": 4}, {"name": "ple", "num_levels": 2})
    with pytest.raises(RecipeError):
        parse_grid("model.backbone.name")
    assert parse_seeds(3, 10) == [10, 11, 12] and parse_seeds("1,5", 0) == [1, 5]
    with pytest.raises(MTLFrameError):
        parse_seeds("0", 0)


# ------------------------------------------------------------------ grid logic with a fake trainer

SYN = ["data.dataset.num_rows=400", "data.dataset.num_features=4", "trainer.max_epochs=1",
       "model.encoders=[{name: numeric, features: [x_000, x_001, x_002, x_003]}]"]

_QUALITY = {"single-task": 1.00, "shared-bottom": 0.95, "mmoe": 0.90}


def _fake_train(recipe, run_dir):
    name = recipe.config.model.backbone["name"]
    if name == "ple":
        raise RuntimeError("boom in ple")
    rmse = _QUALITY[name] + 0.01 * (recipe.config.seed % 2)
    out = {"metrics": {"task_0": {"rmse": rmse, "mae": rmse / 2}, "task_1": {"rmse": 2 * rmse, "mae": rmse}},
           "num_parameters": 10, "train_seconds": 0.5}
    run_dir.mkdir(parents=True, exist_ok=True)  # what mtlframe.run.train leaves behind, for resuming
    (run_dir / "recipe.yaml").write_text(recipe.to_yaml())
    (run_dir / "metrics.json").write_text(json.dumps({"test": out["metrics"], "num_parameters": 10,
                                                      "train_seconds": 0.5}))
    return out


def test_compare_with_one_seed_shows_values_without_a_spread(repo, tmp_path):
    from rich.console import Console

    res = run_compare(repo / "recipes/synthetic_mmoe.yaml", ["model.backbone={name: single-task}|{name: mmoe}"], seeds=1,
                      overrides=SYN, output=tmp_path, train_fn=_fake_train, progress=None)
    md = markdown_table(res)
    assert "±" not in md and "0.0000" not in md
    assert "| 1.0000 |" in md and "| 0.9000 |" in md          # the recipe's seed 2026
    con = Console(width=300, record=True)
    con.print(rich_table(res))
    shown = con.export_text()
    assert "±" not in shown and "one seed (2026): single values, no spread" in shown
    write_outputs(res)
    data = json.loads((tmp_path / "results.json").read_text())
    st = data["configs"][0]["summary"]["metrics"]["task_0"]["rmse"]
    assert st == {"mean": 1.0, "std": None, "n": 1}
    assert "±" not in (tmp_path / "results.md").read_text()


def test_compare_baseline_failures_and_outputs(repo, tmp_path):
    lines: list[str] = []
    res = run_compare(repo / "recipes/synthetic_mmoe.yaml",
                      [("model.backbone={name: shared-bottom, hidden: [8]}|{name: mmoe, num_experts: 2, "
                       "expert_hidden: [8]}|{name: ple}")],
                      seeds=2, overrides=SYN, baseline=["single-task"], output=tmp_path, train_fn=_fake_train,
                      progress=lines.append)
    assert len(lines) == 8 and lines[0].startswith("[1/8]")   # 3 grid rows + the added baseline, x 2 seeds
    rows = {c.label["backbone"].split("(")[0]: c for c in res.configs}
    assert set(rows) == {"shared-bottom", "mmoe", "ple", "single-task"}
    assert rows["single-task"].is_baseline and not rows["single-task"].in_grid
    # mmoe rmse 0.905 vs baseline 1.005 on both tasks: gain (1.005 - 0.905) / 1.005
    assert rows["mmoe"].gains["task_0"] == pytest.approx(0.1 / 1.005)
    assert rows["mmoe"].delta_m == pytest.approx(0.1 / 1.005)
    assert rows["shared-bottom"].delta_m == pytest.approx(0.05 / 1.005)
    assert all(r["status"] == "failed" and "boom in ple" in r["error"] for r in rows["ple"].runs)
    assert any("FAILED" in line for line in lines)
    md = markdown_table(res)
    assert "FAILED (2/2 seeds): RuntimeError: boom in ple" in md and "+9.95%" in md
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["tasks"]["task_0"] == {"metrics": ["rmse", "mae"], "primary": "rmse", "higher_is_better": False}
    assert (tmp_path / "results.md").read_text().count("\n|") >= 5
    assert (tmp_path / "runs" / rows["ple"].slug / "seed-2026" / "error.txt").read_text().count("boom in ple")


def test_compare_rejects_an_invalid_grid_before_training(repo, tmp_path):
    calls = []
    with pytest.raises(MTLFrameError, match="num_experts"):
        # mmoe's arguments do not fit single-task: reported up front, nothing trains
        run_compare(repo / "recipes/synthetic_mmoe.yaml", ["model.backbone.name=single-task,mmoe"], seeds=1,
                    overrides=SYN, output=tmp_path, train_fn=lambda r, d: calls.append(r), progress=None)
    assert calls == []


def test_grid_value_errors_name_the_grid_value(repo, tmp_path):
    """A problem caused by a --grid value is reported at that value, not at the recipe file."""
    calls = []
    with pytest.raises(MTLFrameError) as exc:
        run_compare(repo / "recipes/synthetic_mmoe.yaml", ["model.backbone.num_expert=2,3"], seeds=1,
                    overrides=SYN, output=tmp_path, train_fn=lambda r, d: calls.append(r), progress=None)
    msg = str(exc.value)
    assert "model.backbone.num_expert (--grid model.backbone.num_expert=2): unknown key 'num_expert'" in msg
    assert "model.backbone.num_expert (--grid model.backbone.num_expert=3)" in msg
    assert "Did you mean 'num_experts'?" in msg
    assert calls == []
    with pytest.raises(RecipeError, match="has an empty part between two dots; write it as trainer.max_epochs"):
        parse_grid("trainer..max_epochs=1,2")


# ------------------------------------------------------------------ end to end, real training


def test_compare_end_to_end_tiny(repo, tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", str(repo / "recipes/synthetic_mmoe.yaml"), *SYN, "data.batch_size=128",
            "--seeds", "2", "--output", str(out),
            "--grid", "model.backbone={name: single-task, hidden: [8]}|"
                      "{name: mmoe, num_experts: 2, expert_hidden: [8]}"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "[4/4]" in printed and "Δm" in printed and "± " in printed
    data = json.loads((out / "results.json").read_text())
    assert data["command"].startswith("mtlframe compare ") and data["seeds"] == [2026, 2027]
    assert [c["label"]["backbone"] for c in data["configs"]] == ["single-task(hidden=[8])",
                                                                  "mmoe(num_experts=2, expert_hidden=[8])"]
    base, mmoe = data["configs"]
    assert base["is_baseline"] and mmoe["baseline"] == base["slug"] and base["delta_m"] == 0.0
    for c in data["configs"]:
        assert [r["status"] for r in c["runs"]] == ["ok", "ok"]
        assert set(c["summary"]["metrics"]) == {"task_0", "task_1"}
        st = c["summary"]["metrics"]["task_0"]["rmse"]
        assert st["n"] == 2 and st["mean"] > 0 and st["std"] >= 0
        assert c["summary"]["num_parameters"] > 0
    assert math.isfinite(mmoe["delta_m"])
    assert mmoe["delta_m"] == pytest.approx((mmoe["gains"]["task_0"] + mmoe["gains"]["task_1"]) / 2)
    md = (out / "results.md").read_text()
    assert md.startswith("```\nmtlframe compare ") and "| backbone | task_0 rmse |" in md
    # resumable: a second call trains nothing
    assert main(argv) == 0
    assert printed.count("resumed") == 0 and capsys.readouterr().out.count("(resumed)") == 4


def test_baseline_key_outside_the_grid_gets_a_column(repo, tmp_path):
    # grid over the combiner only; the baseline also swaps the backbone: both show in the table
    res = run_compare(repo / "recipes/synthetic_mmoe.yaml", ["combiner.name=static,uncertainty"], seeds=1,
                      overrides=[*SYN, "model.backbone={name: mmoe, num_experts: 2, expert_hidden: [8]}"],
                      baseline=["single-task", "combiner.name=static"], output=tmp_path,
                      train_fn=_fake_train, progress=None)
    assert res.label_headers == ["combiner", "backbone"]
    labels = [(c.label["combiner"], c.label["backbone"].split("(")[0], c.is_baseline) for c in res.configs]
    assert labels == [("static", "mmoe", False), ("uncertainty", "mmoe", False), ("static", "single-task", True)]
    assert res.configs[1].gains["task_0"] == pytest.approx(0.1 / 1.0)   # mmoe 0.90 vs single-task 1.00
    assert "| combiner | backbone |" in markdown_table(res)
    # another comparison sharing the runs folder reuses the identical recipe's run, whatever its label
    lines: list[str] = []
    run_compare(repo / "recipes/synthetic_mmoe.yaml", ["data.batch_size=256,128"], seeds=1, overrides=SYN,
                baseline=None, output=tmp_path / "second", runs_dir=tmp_path / "runs", train_fn=_fake_train,
                progress=lines.append)
    assert [("resumed" in line) for line in lines] == [False, False]
    lines.clear()
    run_compare(repo / "recipes/synthetic_mmoe.yaml", ["data.batch_size=128"], seeds=1, overrides=SYN,
                baseline=None, output=tmp_path / "third", runs_dir=tmp_path / "runs", train_fn=_fake_train,
                progress=lines.append)
    assert len(lines) == 1 and "(resumed)" in lines[0]
