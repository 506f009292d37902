"""The torchrec-embedding encoder in one process: same initialisation and same output as the
built-in ``embedding`` encoder (single-valued and multi-categorical features), its own fused
optimizer, argument errors, and the sharding errors that need no second process."""
from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from torchrec_available import torchrec_or_skip  # noqa: E402

torchrec_or_skip()

from mtlframe.encoders.embedding import EmbeddingEncoder  # noqa: E402
from mtlframe.errors import ArgumentError, MTLFrameError  # noqa: E402
from mtlframe.features import FeatureInfo  # noqa: E402
from mtlframe_torchrec.encoder import TorchRecEmbeddingEncoder  # noqa: E402

INFO = {"user": FeatureInfo("user", "categorical", 7), "item": FeatureInfo("item", "categorical", 5),
        "genres": FeatureInfo("genres", "multi_categorical", 6, max_len=3)}
FEATURES = ["user", "genres", "item"]


def _pair(**kw):
    torch.manual_seed(3)
    ref = EmbeddingEncoder(FEATURES, dim=4, feature_info=INFO)
    after_ref = torch.rand(1)
    torch.manual_seed(3)
    enc = TorchRecEmbeddingEncoder(FEATURES, dim=4, feature_info=INFO, **kw)
    after_enc = torch.rand(1)
    return ref, enc, after_ref, after_enc


def _batch(encoder, rows):
    cols = {"user": torch.tensor([r[0] for r in rows]), "item": torch.tensor([r[1] for r in rows])}
    b = encoder.featurize(dict(cols))
    b["genres"] = torch.tensor([r[2] for r in rows])
    return b


ROWS = [(0, 4, [2, 3, 0]), (6, 0, [0, 0, 0]), (3, 2, [5, 5, 1]), (1, 1, [4, 0, 0])]


def test_same_init_and_output_as_the_builtin_encoder():
    ref, enc, after_ref, after_enc = _pair()
    assert after_ref == after_enc                        # the same random draws, so the rest of the model matches
    fused = ref.fused.table.weight
    ebc = enc.tables.ebc.embedding_bags
    torch.testing.assert_close(ebc["t_user"].weight, fused[:7], rtol=0, atol=0)
    torch.testing.assert_close(ebc["t_item"].weight, fused[7:], rtol=0, atol=0)
    torch.testing.assert_close(ebc["t_genres"].weight, ref.bags["genres"].weight, rtol=0, atol=0)
    out, want = enc(_batch(enc, ROWS)), ref(_batch(ref, ROWS))
    assert out.shape == (4, 12) and enc.output_dim == 12
    torch.testing.assert_close(out, want, rtol=0, atol=1e-7)
    # row 1: genres all padding -> zeros; row 2: mean of rows 5, 5, 1 of the genres table
    assert out[1, 8:].abs().max() == 0
    g = ebc["t_genres"].weight
    torch.testing.assert_close(out[2, 8:], (2 * g[5] + g[1]) / 3)
    assert enc.feature_slices() == ref.feature_slices() == {"user": (0, 4), "item": (4, 8), "genres": (8, 12)}


def test_tables_train_with_their_own_optimizer_in_backward():
    ref, enc, _, _ = _pair(optimizer="sgd", lr=0.5)
    w0 = enc.tables.ebc.embedding_bags["t_user"].weight.detach().clone()
    out = enc(_batch(enc, ROWS))
    out.sum().backward()                                 # the fused SGD steps inside backward
    w = enc.tables.ebc.embedding_bags["t_user"].weight
    assert w.grad is None                                # consumed: the recipe's optimizer never sees it
    # d(sum)/d(row) = 1 per lookup: users 0, 6, 3, 1 each looked up once -> moved by -0.5
    torch.testing.assert_close(w0 - w.detach(), torch.tensor([0.5, 0.5, 0, 0.5, 0, 0, 0.5]).unsqueeze(1).expand(7, 4))


@pytest.mark.parametrize(("kw", "param", "text"), [
    ({"sharding": "diagonal"}, "sharding", "unknown sharding 'diagonal'"),
    ({"sharding": {"nope": "table-wise"}}, "sharding.nope", "'nope' is not a feature"),
    ({"optimizer": "lamb"}, "optimizer", "unknown optimizer 'lamb'"),
    ({"lr": 0.0}, "lr", "lr must be > 0"),
    ({"dim": 0}, "dim", "dim must be >= 1"),
])
def test_argument_errors_name_the_parameter(kw, param, text):
    with pytest.raises(ArgumentError, match=text) as err:
        TorchRecEmbeddingEncoder(FEATURES, feature_info=INFO, **{"dim": 4, **kw})
    assert err.value.param == param


def test_one_unknown_sharding_for_every_feature_is_one_problem():
    """``sharding: diagonal`` over two features: the recipe lists the problem once, not per feature."""
    from mtlframe.errors import RecipeError
    from mtlframe.recipe import recipe_from_dict
    from mtlframe.testing import tiny_recipe

    spec = {"name": "torchrec-embedding", "features": ["cat_0", "cat_1"], "dim": 4, "sharding": "diagonal"}
    with pytest.raises(RecipeError) as err:
        recipe_from_dict(tiny_recipe(**{"model.encoders[1]": spec}), "r.yaml")
    assert [k for k, _ in err.value.problems] == ["model.encoders[1].sharding"]


def test_row_wise_on_cpu_is_refused_with_the_reason(monkeypatch):
    import torch.distributed as dist
    from pytorch_lightning.strategies import DDPStrategy

    enc = TorchRecEmbeddingEncoder(FEATURES, dim=4, sharding={"user": "row-wise"}, feature_info=INFO)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda *a: 2)
    with pytest.raises(MTLFrameError, match="sharding 'row-wise' for 'user' needs CUDA: TorchRec's CPU kernels"):
        enc.configure_distributed(DDPStrategy(parallel_devices=[torch.device("cpu")] * 2))
    with pytest.raises(MTLFrameError, match="under Lightning's DDP strategy"):
        enc.configure_distributed(object())
    assert not enc.sharded and "tables" in enc._modules   # nothing half-done


def test_one_process_does_not_shard():
    enc = TorchRecEmbeddingEncoder(FEATURES, dim=4, feature_info=INFO)
    enc.configure_distributed(object())                   # no process group: nothing to do
    assert not enc.sharded


def test_memory_plan_counts_the_tables_own_optimizer():
    from types import SimpleNamespace

    from mtlframe.memory_plan import estimate

    enc = TorchRecEmbeddingEncoder(FEATURES, dim=4, optimizer="rowwise-adagrad", feature_info=INFO)
    model = torch.nn.Module()
    model.encoders = torch.nn.ModuleList([enc])
    plan = estimate(model, SimpleNamespace(name="adam", momentum=0.0, sparse_optimizer="auto"))
    user = next(r for r in plan.rows if r.name.endswith("t_user"))
    # 7 x 4 float32: 112 bytes of weights, no gradient kept, one float per row (7 x 4 bytes)
    assert (user.weights, user.grads, user.state, user.kind) == (112, 0, 28, "in-backward rowwise-adagrad")


def test_uneven_evaluation_batches_are_refused_before_they_hang():
    from types import SimpleNamespace

    from mtlframe_torchrec.encoder import check_even_evaluation, eval_batch_counts

    # 201 rows dealt to 2 processes: 101 and 100 rows -> 2 and 1 batches of 100
    assert eval_batch_counts(201, 100, 2) == [2, 1]
    assert eval_batch_counts(200, 100, 2) == [1, 1]
    dm = SimpleNamespace(split_index={"val": range(200), "test": range(201)},
                         cfg=SimpleNamespace(eval_batch_size=100, batch_size=32))
    strategy = SimpleNamespace(lightning_module=SimpleNamespace(trainer=SimpleNamespace(datamodule=dm)))
    with pytest.raises(MTLFrameError, match=r"the test split's 201 rows give the 2 processes 2/1 batches of 100 "
                                            r"\(data.eval_batch_size\).*Set data.eval_batch_size to 99 or 101"):
        check_even_evaluation(strategy, 2)
    dm.split_index["test"] = range(202)
    check_even_evaluation(strategy, 2)                     # 101 / 101 rows: 2 / 2 batches


def test_the_evaluation_guard_counts_batches_as_the_data_module_deals_them():
    """A stream gives each data-loader worker a contiguous share: 43 rows, 2 processes x 2 workers
    are shares 11/11 | 11/10, so batches of 10 are 2+2 against 2+1 (a hang), while rows dealt one by
    one (22 / 21) would be 3 / 3. The guard takes the data module's own count."""
    from types import SimpleNamespace

    from mtlframe.streaming import reader_range
    from mtlframe_torchrec.encoder import check_even_evaluation, eval_batch_counts

    def stream_counts(split, b, world, workers=2):
        return [sum(-(-(hi - lo) // b) for lo, hi in (reader_range(43, r * workers + w, world * workers, False)
                                                      for w in range(workers))) for r in range(world)]

    assert eval_batch_counts(43, 10, 2) == [3, 3] and stream_counts("val", 10, 2) == [4, 3]
    dm = SimpleNamespace(split_index={"val": range(43)}, cfg=SimpleNamespace(eval_batch_size=10, batch_size=8),
                         eval_batches_per_process=stream_counts)
    strategy = SimpleNamespace(lightning_module=SimpleNamespace(trainer=SimpleNamespace(datamodule=dm)))
    with pytest.raises(MTLFrameError, match=r"the val split's 43 rows give the 2 processes 4/3 batches of 10 "
                                            r"\(data.eval_batch_size\).*Set data.eval_batch_size to 9 or 11"):
        check_even_evaluation(strategy, 2)


def test_missing_torchrec_skips_unless_required(monkeypatch):
    from _pytest.outcomes import Failed, Skipped

    monkeypatch.setitem(sys.modules, "torchrec", None)      # import torchrec -> ImportError
    monkeypatch.delenv("MTLFRAME_REQUIRE_TORCHREC", raising=False)
    with pytest.raises(Skipped, match="torchrec / fbgemm-gpu-cpu unavailable"):
        torchrec_or_skip()
    monkeypatch.setenv("MTLFRAME_REQUIRE_TORCHREC", "1")
    with pytest.raises(Failed, match="MTLFRAME_REQUIRE_TORCHREC=1 but torchrec / fbgemm-gpu-cpu unavailable"):
        torchrec_or_skip()
    from mtlframe_torchrec.encoder import import_torchrec
    with pytest.raises(MTLFrameError, match=r"needs torchrec and FBGEMM built for torch 2\.\d+.*pip install --no-deps "
                                            r"fbgemm-gpu-cpu==1\.N\.0 torchrec==1\.N\.0"):
        import_torchrec()


def test_tables_are_not_shared_parameters_for_gradient_combiners():
    enc = TorchRecEmbeddingEncoder(FEATURES, dim=4, feature_info=INFO)
    assert list(enc.shared_parameters()) == [] and len(list(enc.parameters())) == 3


def test_recipe_validation_names_the_key_without_building_tables():
    from mtlframe.errors import RecipeError
    from mtlframe.recipe import recipe_from_dict
    from mtlframe.testing import tiny_recipe

    def problems(**enc):
        spec = {"name": "torchrec-embedding", "features": ["cat_0"], "dim": 4, **enc}
        with pytest.raises(RecipeError) as err:
            recipe_from_dict(tiny_recipe(**{"model.encoders[1]": spec}), "r.yaml")
        return dict(err.value.problems)

    got = problems(sharding="row-wise")                   # tiny_recipe trains on trainer.accelerator: cpu
    assert "sharding 'row-wise' needs CUDA (trainer.accelerator is cpu)" in got["model.encoders[1].sharding"]
    got = problems(sharding={"cat_0": "table-row-wise"})
    assert "needs CUDA" in got["model.encoders[1].sharding.cat_0"]
    assert "unknown optimizer 'lamb'" in problems(optimizer="lamb")["model.encoders[1].optimizer"]
    recipe_from_dict(tiny_recipe(**{"model.encoders[1]": {"name": "torchrec-embedding", "features": ["cat_0"],
                                                          "sharding": "column-wise"}}), "r.yaml")   # valid


def test_resume_warns_that_the_tables_optimizer_state_restarts(tmp_path):
    """A real ``train --resume`` (Lightning restores the weights after ``configure_model``, so the
    warning must come when the tables are loaded, not when the model is configured); evaluating a
    checkpoint, a fresh run and ``sgd`` do not warn."""
    import warnings

    from mtlframe.testing import train_tiny
    from mtlframe.run import train

    def recipe(optimizer):
        return {"model.encoders[1]": {"name": "torchrec-embedding", "features": ["cat_0"], "dim": 4,
                                      "optimizer": optimizer}, "trainer.limit_train_batches": 2}

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", message=".*(DTensor|does not have many workers|is_fx_tracing).*")
        train_tiny(tmp_path / "a", **recipe("rowwise-adagrad"))        # a fresh run (and its evaluation)
        train_tiny(tmp_path / "s", **recipe("sgd"))
        train(None, resume=tmp_path / "s", overrides=["trainer.max_epochs=2"], progress=False)  # sgd: nothing to lose
    with pytest.warns(UserWarning, match=r"resuming from .*last.ckpt: the tables' weights are restored, but their "
                                         r"rowwise-adagrad state \(accumulators\) is not in checkpoints"):
        train(None, resume=tmp_path / "a", overrides=["trainer.max_epochs=2"], progress=False)


def test_the_encoder_contract_check_passes():
    from mtlframe.testing import check_encoder

    enc = check_encoder(TorchRecEmbeddingEncoder, {"city": "categorical", "tags": "multi_categorical"}, dim=8)
    assert enc.output_dim == 16


def test_export_refuses_the_encoder_naming_it_and_the_alternative():
    from mtlframe.export import _refusal

    enc = TorchRecEmbeddingEncoder(FEATURES, dim=4, feature_info=INFO)
    why = _refusal(0, {"name": "torchrec-embedding"}, enc)
    assert why.startswith(f"model.encoders[0] (torchrec-embedding, features {', '.join(FEATURES)}): ")
    assert why.endswith("Export is not supported for this component; serve the checkpoint with `mtlframe serve` "
                        "(Python).")
