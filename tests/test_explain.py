"""``mtlframe explain`` and ``track.task_gradients``: hand-computed gate statistics and ECE, Integrated
Gradients completeness, the report in a real headless Chromium, the gradient-cosine callback."""
from __future__ import annotations

import csv
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from mtlframe.backbones.mmoe import MMoE
from mtlframe.backbones.ple import PLE
from mtlframe.errors import RecipeError
from mtlframe.explain.calibration import NUM_BINS, reliability
from mtlframe.explain.gates import GateAccumulator, gate_statistics
from mtlframe.recipe import recipe_from_dict
from mtlframe.testing import tiny_recipe, train_tiny

CHROMIUM = "/usr/bin/chromium"


# -- gates ---------------------------------------------------------------------------------------


def _mmoe_with_hand_gates() -> MMoE:
    """2 experts, tasks a and b, D = 3. Gate a: bias (ln 0.8, ln 0.2), no weight -> (0.8, 0.2) on
    every row. Gate b: logits (x_0, 0) -> (0.9, 0.1) at x_0 = ln 9, (0.5, 0.5) at x_0 = 0."""
    bb = MMoE(num_experts=2, expert_hidden=[4], input_dim=3, task_names=["a", "b"])
    with torch.no_grad():
        for g in bb.gates.values():
            g.linear.weight.zero_()
            g.linear.bias.zero_()
        bb.gates["a"].linear.bias.copy_(torch.tensor([math.log(0.8), math.log(0.2)]))
        bb.gates["b"].linear.weight[0, 0] = 1.0
    return bb


def test_gate_statistics_equal_a_hand_computation():
    bb = _mmoe_with_hand_gates()
    acc = GateAccumulator()
    bb(torch.tensor([[math.log(9.0), 0.0, 0.0]]))                # one row per batch: two batches
    acc.add(bb.gate_weights)
    bb(torch.tensor([[0.0, 1.0, -1.0]]))
    acc.add(bb.gate_weights)
    stats = gate_statistics(bb, acc)
    a, b = stats["gates"]["a"], stats["gates"]["b"]
    assert a["experts"] == ["expert 1", "expert 2"] and a["rows"] == 2
    assert a["mean"] == pytest.approx([0.8, 0.2], abs=1e-6)
    # H(0.8, 0.2) = -(0.8 ln 0.8 + 0.2 ln 0.2) = 0.178515 + 0.321888 = 0.500402 (every row the same)
    assert a["entropy"] == pytest.approx(0.500402, abs=1e-5)
    assert a["row_entropy"] == pytest.approx(0.500402, abs=1e-5)
    # b: rows (0.9, 0.1) and (0.5, 0.5): mean (0.7, 0.3), H = 0.7*0.356675 + 0.3*1.203973 = 0.610864;
    # per-row H(0.9, 0.1) = 0.094825 + 0.230259 = 0.325083 and H(0.5, 0.5) = ln 2 = 0.693147: mean 0.509115
    assert b["mean"] == pytest.approx([0.7, 0.3], abs=1e-6)
    assert b["entropy"] == pytest.approx(0.610864, abs=1e-5)
    assert b["row_entropy"] == pytest.approx(0.509115, abs=1e-5)
    assert a["max_entropy"] == pytest.approx(math.log(2))
    group = stats["groups"][""]
    assert group["rows"] == ["a", "b"]
    assert group["matrix"] == [pytest.approx([0.8, 0.2], abs=1e-6), pytest.approx([0.7, 0.3], abs=1e-6)]
    assert group["collapsed"] == []


def test_an_expert_no_gate_uses_is_flagged_collapsed():
    bb = _mmoe_with_hand_gates()
    with torch.no_grad():  # both gates put weight e^-30 / (1 + e^-30) ~ 1e-13 on expert 2
        bb.gates["b"].linear.weight.zero_()
        for g in bb.gates.values():
            g.linear.bias.copy_(torch.tensor([0.0, -30.0]))
    acc = GateAccumulator()
    bb(torch.randn(5, 3))
    acc.add(bb.gate_weights)
    assert gate_statistics(bb, acc)["groups"][""]["collapsed"] == ["expert 2"]
    with torch.no_grad():  # task b uses expert 2 a little (2 %): above the threshold, no longer collapsed
        bb.gates["b"].linear.bias.copy_(torch.tensor([0.0, math.log(0.02 / 0.98)]))
    acc = GateAccumulator()
    bb(torch.randn(5, 3))
    acc.add(bb.gate_weights)
    assert gate_statistics(bb, acc)["groups"][""]["collapsed"] == []


def test_ple_has_one_heatmap_per_level_with_the_experts_each_gate_selects():
    ple = PLE(num_shared_experts=1, num_task_experts=1, expert_hidden=[4], num_levels=2, input_dim=3,
              task_names=["a", "b"])
    acc = GateAccumulator()
    ple(torch.randn(4, 3))
    acc.add(ple.gate_weights)
    groups = gate_statistics(ple, acc)["groups"]
    assert list(groups) == ["level1", "level2"]
    assert groups["level1"]["experts"] == ["a:1", "b:1", "shared:1"]
    assert groups["level1"]["rows"] == ["a", "b", "shared"]           # level 1 has the shared gate
    assert groups["level2"]["rows"] == ["a", "b"]
    a_row = groups["level2"]["matrix"][0]
    assert a_row[1] is None and sum(v for v in a_row if v is not None) == pytest.approx(1.0)  # a cannot pick b:1


# -- calibration ---------------------------------------------------------------------------------


def test_ece_equals_a_hand_computation():
    # 10 bins. bin 0: {0.05} label 0 -> |0 - 0.05| = 0.05; bin 1: {0.15, 0.12} labels 1, 0 -> |0.5 - 0.135|
    # = 0.365; bin 5: {0.55} label 0 -> 0.55; bin 9: {0.95} label 1 -> 0.05.
    # ECE = (1*0.05 + 2*0.365 + 1*0.55 + 1*0.05) / 5 = 1.38 / 5 = 0.276
    r = reliability(np.array([0.05, 0.15, 0.12, 0.95, 0.55]), np.array([0, 1, 0, 1, 0]), bins=10)
    assert r["ece"] == pytest.approx(0.276, abs=1e-12)
    assert r["count"] == [1, 2, 0, 0, 0, 1, 0, 0, 0, 1]
    assert r["accuracy"][1] == 0.5 and r["confidence"][1] == pytest.approx(0.135) and r["accuracy"][2] is None
    # probability 1.0 falls in the last (closed) bin; a perfect prediction has ECE 0
    r = reliability(np.array([1.0, 0.0]), np.array([1, 0]), bins=2)
    assert r["count"] == [1, 1] and r["ece"] == 0.0
    assert NUM_BINS == 15 and reliability(np.array([0.5]), np.array([1]))["bins"] == 15


# -- Integrated Gradients --------------------------------------------------------------------------


class _Linear(torch.nn.Module):
    """``f(x) = x . w + 1``: Integrated Gradients is exact, ``attr_d = w_d (x_d - b_d)``."""

    def __init__(self, w):
        super().__init__()
        self.w = torch.tensor(w)

    def forward_from(self, x):
        return {"t": x @ self.w + 1.0}


def test_integrated_gradients_of_a_linear_model_are_exact_and_grouped_per_feature():
    from mtlframe.explain.attributions import integrated_gradients, summarize

    x = torch.tensor([[1.0, 2.0, 3.0], [3.0, 0.0, -1.0]])
    ig = integrated_gradients(_Linear([2.0, -1.0, 0.5]), x, "t", "regression", baseline=x.mean(0))
    # baseline (2, 1, 1): row 1: (2*-1, -1*1, 0.5*2) = (-2, -1, 1); row 2: (2, 1, -1)
    want = torch.tensor([[-2.0, -1.0, 1.0], [2.0, 1.0, -1.0]])
    assert torch.allclose(ig["attributions"], want, atol=1e-5), ig["attributions"]
    assert ig["delta"].abs().max() < 1e-5
    s = summarize(ig, [("f", torch.tensor([0])), ("g + h", torch.tensor([1, 2]))])
    # f: |-2|, |2| -> 2; g + h: -1 + 1 = 0 on both rows -> 0
    assert [r["feature"] for r in s["features"]] == ["f", "g + h"]
    assert s["features"][0]["mean_abs"] == pytest.approx(2.0) and s["features"][1]["mean_abs"] == pytest.approx(0.0)
    assert s["features"][0]["share"] == pytest.approx(1.0)


# -- the command on a tiny trained model (one shared run) ---------------------------------------------


@pytest.fixture(scope="module")
def explained(tmp_path_factory):
    """A tiny MMoE trained one epoch with PCGrad (manual optimization), track.task_gradients every 2
    steps and a CSV logger, then `mtlframe explain` on 100 test rows."""
    from mtlframe.cli import main

    root = tmp_path_factory.mktemp("explain")
    train_tiny(root / "run", track={"task_gradients": {"every_n_steps": 2}}, logger={"name": "csv"},
               combiner={"name": "pcgrad"}, **{"data.dataset.num_rows": 1000})
    out = root / "report"
    code = main(["explain", "--checkpoint", str(root / "run" / "checkpoints" / "best.ckpt"), "--output", str(out),
                 "--max-rows", "100", "--accelerator", "cpu"])
    assert code == 0
    return root


def test_explain_writes_the_report_png_and_json(explained, capsys):
    import json

    out = explained / "report"
    data = json.loads((out / "explain.json").read_text())
    assert data["rows"] == 100 and data["backbone"] == "MMoE"
    assert sorted(p.name for p in out.glob("*.png")) == [
        "attributions_task_0.png", "attributions_task_1_bin.png", "calibration_task_1_bin.png", "gates.png",
        "relations.png"]
    assert set(data["gates"]["gates"]) == {"task_0", "task_1_bin"}
    for g in data["gates"]["gates"].values():
        assert sum(g["mean"]) == pytest.approx(1.0)
    ranked = [r["feature"] for r in data["attributions"]["task_0"]["features"]]
    assert sorted(ranked) == sorted([f"x_{i:03d}" for i in range(8)] + ["cat_0"])  # one row per feature
    assert list(data["calibration"]) == ["task_1_bin"] and data["calibration"]["task_1_bin"]["bins"] == 15
    rel = data["relations"]
    assert rel["prediction_correlation"]["task_0"]["task_0"] == pytest.approx(1.0)
    assert -1.0 <= rel["gradient_cosine"]["task_0"]["task_1_bin"] <= 1.0
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 5
    assert not re.search(r"(src|href)=[\"'](?!data:)", html) and "http" not in html  # nothing external


def test_attributions_satisfy_completeness_within_tolerance(explained):
    import json

    data = json.loads((explained / "report" / "explain.json").read_text())
    for task, a in data["attributions"].items():
        c = a["completeness"]
        # sum of attributions = f(x) - f(baseline) up to the 50-step integration error (the ReLUs' kinks):
        # on average under 1 % of the output change, on every row under 5 % of its mean
        assert c["mean_abs_delta"] < 0.01 * c["mean_abs_output_change"], (task, c)
        assert c["max_abs_delta"] < 0.05 * c["mean_abs_output_change"], (task, c)
        assert c["mean_abs_output_change"] > 0.01                     # the check is not empty


def _chromium_counts(page: Path, tmp: Path) -> dict[str, int]:
    """Open a copy of ``page`` in headless Chromium with a probe script that records, after the load
    event, the number of images, of images loaded (naturalWidth > 0) and the visible text length."""
    probe = ("<script>window.addEventListener('load',function(){var im=document.images,n=0;"
             "for(var i=0;i<im.length;i++){if(im[i].complete&&im[i].naturalWidth>0)n++;}"
             "var b=document.body;b.setAttribute('data-images',im.length);b.setAttribute('data-loaded',n);"
             "b.setAttribute('data-text',b.innerText.trim().length);});</script>")
    copy = tmp / f"probe-{page.name}"
    copy.write_text(page.read_text().replace("</body>", probe + "</body>"))
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp / 'chromium-profile'}", "--virtual-time-budget=5000", "--dump-dom",
           copy.resolve().as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    body = re.search(r"<body[^>]*>", dom)
    assert body, dom[:500]
    return {k: int(v) for k, v in re.findall(r'data-(images|loaded|text)="(\d+)"', body.group(0))}


def test_report_opens_in_headless_chromium_with_every_image_loaded(explained, tmp_path):
    if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        if os.environ.get("MTLFRAME_REQUIRE_CHROMIUM") == "1":
            pytest.fail(f"MTLFRAME_REQUIRE_CHROMIUM=1 and no Chromium at {CHROMIUM}: install Debian's chromium")
        pytest.skip(f"no Chromium at {CHROMIUM}")
    got = _chromium_counts(explained / "report" / "report.html", tmp_path)
    assert got["images"] == 5 and got["loaded"] == 5, got
    assert got["text"] > 500, got                                    # not a blank page
    # the probe does see a broken image
    broken = tmp_path / "broken.html"
    broken.write_text("<html><body><p>x</p><img src='data:image/png;base64,AAAA'></body></html>")
    assert _chromium_counts(broken, tmp_path) == {"images": 1, "loaded": 0, "text": 1}


# -- track.task_gradients ----------------------------------------------------------------------------


def test_gradient_cosines_are_logged_during_training(explained):
    logs = list((explained / "run").rglob("metrics.csv"))
    assert logs, "no CSV log"
    with open(logs[0]) as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/grad_cos/task_0~task_1_bin")]
    steps = sorted(int(r["step"]) for r in rows)
    assert steps and all(s % 2 == 0 for s in steps)                  # every 2nd optimizer step
    assert all(-1.0 <= float(r["train/grad_cos/task_0~task_1_bin"]) <= 1.0 for r in rows)


@pytest.mark.parametrize("track, problem", [
    ({"task_gradients": {"every_n_steps": 0}}, "track.task_gradients.every_n_steps"),
    ({"task_gradient": {}}, "track.task_gradient"),
])
def test_track_keys_are_validated(track, problem):
    with pytest.raises(RecipeError, match=re.escape(problem)):
        recipe_from_dict(tiny_recipe(track=track), "<tiny>")


def test_tracking_one_task_is_refused():
    rec = tiny_recipe(track={"task_gradients": {}})
    del rec["tasks"]["task_0"]
    with pytest.raises(RecipeError, match=r"track\.task_gradients.*1 task"):
        recipe_from_dict(rec, "<tiny>")


def test_tracking_leaves_training_untouched_and_measures_the_true_cosine(explained):
    """One measurement between steps: RNG state, .grad, train/eval modes and the parameters are as
    before, and the logged cosine equals one computed directly from the two task losses."""
    from types import SimpleNamespace

    import torch.nn.functional as F

    from mtlframe.explain.relations import TaskGradientCosine
    from mtlframe.run import load_checkpoint, rebuild_system

    ckpt = explained / "run" / "checkpoints" / "best.ckpt"
    dm, module = rebuild_system(ckpt, load_checkpoint(ckpt))
    module.train()
    batch = next(iter(dm.train_dataloader()))
    logged: dict = {}
    logger = SimpleNamespace(log_metrics=lambda metrics, step: logged.update(metrics))
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    rng = torch.get_rng_state()
    cb = TaskGradientCosine(every_n_steps=5)
    cb.on_train_batch_start(SimpleNamespace(global_step=3, loggers=[logger]), module, batch, 0)
    assert logged == {}                                              # not a 5th step
    cb.on_train_batch_start(SimpleNamespace(global_step=10, loggers=[logger]), module, batch, 0)
    assert list(logged) == ["train/grad_cos/task_0~task_1_bin"]
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(m.training for m in module.modules())
    assert all(p.grad is None for p in module.parameters())
    assert all(torch.equal(p, before[n]) for n, p in module.named_parameters())
    measured = logged.pop("train/grad_cos/task_0~task_1_bin")
    cb.on_train_batch_start(SimpleNamespace(global_step=10, loggers=[logger]), module, batch, 1)
    assert logged == {}                                              # accumulated micro-batch: once per step
    # directly: eval mode, each task's summed loss, gradients on model.shared_parameters() flattened
    model = module.model.eval()
    out = model(batch)
    losses = [F.mse_loss(out["task_0"], batch["label/task_0"], reduction="sum"),
              F.binary_cross_entropy_with_logits(out["task_1_bin"], batch["label/task_1_bin"], reduction="sum")]
    params = [p for p in model.shared_parameters() if p.requires_grad]
    flat = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params, retain_graph=True)])
            for loss in losses]
    want = float(F.cosine_similarity(flat[0].double(), flat[1].double(), dim=0))
    assert measured == pytest.approx(want, abs=1e-6)


def test_bad_arguments_are_one_line_errors_before_the_data_loads(tmp_path):
    from mtlframe.errors import MTLFrameError
    from mtlframe.explain import explain

    with pytest.raises(MTLFrameError, match=r"--max-rows 0: analyse at least 1 row"):
        explain(tmp_path / "missing.ckpt", max_rows=0)
    with pytest.raises(MTLFrameError, match=r"--split 'train': explain reads the test or the val split"):
        explain(tmp_path / "missing.ckpt", split="train")


def test_a_backbone_without_gates_and_a_skipped_task_are_said_in_the_report(tmp_path):
    from mtlframe.explain.report import render_html

    data = {"checkpoint": "c.ckpt", "split": "test", "rows": 10, "backbone": "SharedBottom",
            "tasks": {"click": "binary", "watch": "retrieval"}, "gates": None, "attributions": {},
            "relations": {}, "calibration": {},
            "notes": ["attributions: task 'watch' is a retrieval task (a dot product of two towers), skipped."]}
    page = render_html(data, tmp_path)
    assert "The backbone has no gates." in page
    assert "task &#x27;watch&#x27; is a retrieval task" in page


def test_dselect_k_selectors_name_the_expert_each_selector_picks():
    from mtlframe.backbones.dselect_k import DSelectK
    from mtlframe.explain.gates import selector_statistics

    ds = DSelectK(num_experts=4, k=2, gamma=1.0, expert_hidden=[4], input_dim=3, task_names=["a"])
    with torch.no_grad():  # smooth-step saturates at |z| >= gamma / 2: bits (1, 0) -> code 1 -> expert 2;
        ds.gates["a"].z.copy_(torch.tensor([[1.0, -1.0], [1.0, 1.0]]))  # bits (1, 1) -> code 3 -> expert 4
        ds.gates["a"].alpha.copy_(torch.tensor([math.log(3.0), 0.0]))   # selector weights (0.75, 0.25)
    sel = selector_statistics(ds, torch.randn(6, 3))["a"]
    assert sel["picks"] == [2, 4]
    assert sel["weights"] == pytest.approx([0.75, 0.25])
    assert sel["experts"][0] == pytest.approx([0.0, 1.0, 0.0, 0.0])
    assert selector_statistics(MMoE(num_experts=2, expert_hidden=[4], input_dim=3, task_names=["a"]),
                               torch.randn(2, 3)) is None


def test_aitm_attention_columns_are_named_transferred_and_own():
    from mtlframe.backbones.aitm import AITM

    bb = AITM(click="click", conversion="buy", tower_hidden=[4], input_dim=3, task_names=["click", "buy"],
              task_types={"click": "binary", "buy": "binary"})
    acc = GateAccumulator()
    bb(torch.randn(4, 3))
    acc.add(bb.gate_weights)
    group = gate_statistics(bb, acc)["groups"][""]
    assert group["rows"] == ["buy"] and group["experts"] == ["transferred", "own"]


def test_multiclass_attributions_explain_each_rows_predicted_class(tmp_path):
    from mtlframe.explain.attributions import integrated_gradients
    from mtlframe.explain.relations import plot_relations

    class TwoClass(torch.nn.Module):
        def forward_from(self, x):                                   # logits (x0, x1): class = larger one
            return {"k": x[:, :2] * torch.tensor([1.0, 3.0])}

    x = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    ig = integrated_gradients(TwoClass(), x, "k", "multiclass", baseline=torch.zeros(2))
    # row 1 predicts class 0 (logit 2 > 0): attr = (1 * 2, 0); row 2 class 1 (6 > 0): attr = (0, 3 * 2)
    assert torch.allclose(ig["attributions"], torch.tensor([[2.0, 0.0], [0.0, 6.0]]), atol=1e-5)
    assert ig["output"].tolist() == [2.0, 6.0] and ig["baseline_output"].tolist() == [0.0, 0.0]
    # no correlation (one binary task, the multiclass one has none) and two tasks with gradients: one panel
    plot_relations({}, {"k": {"k": 1.0, "click": -0.5}, "click": {"k": -0.5, "click": 1.0}},
                   tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 1000


def test_one_row_and_non_finite_predictions_are_said_not_shown_as_numbers(explained, tmp_path):
    from mtlframe.errors import CheckpointError
    from mtlframe.explain import explain

    ckpt = explained / "run" / "checkpoints" / "best.ckpt"
    one = explain(ckpt, max_rows=1, output=tmp_path / "one", accelerator="cpu").data
    # the baseline is the mean encoding of the analysed rows: with one row it is that row
    assert all(f["mean_abs"] == 0.0 for f in one["attributions"]["task_0"]["features"])
    assert any(n.startswith("attributions: 1 row analysed") for n in one["notes"])
    assert one["relations"]["prediction_correlation"]["task_0"]["task_1_bin"] is None
    assert any("task_0, task_1_bin predict the same value on all 1 analysed rows" in n for n in one["notes"])
    # a checkpoint whose weights are NaN: an error naming the task and the rows, not numpy's bincount error
    ck = torch.load(ckpt, map_location="cpu", weights_only=False)
    key = next(k for k in ck["state_dict"] if k.startswith("model.towers.task_1_bin") and k.endswith("bias"))
    ck["state_dict"][key] = torch.full_like(ck["state_dict"][key], float("nan"))
    torch.save(ck, tmp_path / "nan.ckpt")
    with pytest.raises(CheckpointError, match=r"nan.ckpt \(test split\): task 'task_1_bin' gives no finite prediction "
                                              r"for 10 of 10 rows \(rows 1, 2, 3, 4, 5 \.\.\.\)"):
        explain(tmp_path / "nan.ckpt", max_rows=10, output=tmp_path / "nan", accelerator="cpu")


def test_a_data_path_for_a_checkpoint_trained_without_one_says_so(repo, tmp_path):
    # before: "... was trained on data at None." (adult's bundled data has no data.dataset.path)
    from types import SimpleNamespace

    from mtlframe.errors import DataError
    from mtlframe.recipe import load_recipe
    from mtlframe.run import rebuild_system

    loaded = SimpleNamespace(recipe=load_recipe(repo / "recipes/adult_mmoe.yaml"))
    with pytest.raises(DataError, match=r"^the data path given to explain, .*nowhere\.csv, does not exist; run\.ckpt "
                                        r"was trained on dataset 'adult' without data\.dataset\.path \(its own data\): "
                                        r"leave --data-path out\.$"):
        rebuild_system("run.ckpt", loaded, command="explain", data_path=tmp_path / "nowhere.csv")
