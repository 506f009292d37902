"""Dataset loaders: row counts, label prevalences, download/checksum, user-file errors, synthetic.

Expected numbers were counted by hand with pandas on the original files in ../shared/data.
"""
from __future__ import annotations

import hashlib
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mtlframe.datasets.adult import Adult
from mtlframe.datasets.base import Table
from mtlframe.datasets.clothing_reviews import ClothingReviews
from mtlframe.datasets.movielens import MovieLens100K
from mtlframe.datasets.synthetic import Synthetic
from mtlframe.datasets.tabular import CsvDataset, ParquetDataset
from mtlframe.errors import DataError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ML100K = SHARED / "ml-100k"
needs_ml100k = pytest.mark.skipif(
    not (ML100K / "u.data").is_file(),
    reason=f"MovieLens 100K is not bundled (licence); expected a GroupLens copy at {ML100K}")


# --------------------------------------------------------------------------- clothing reviews

def test_clothing_reviews_bundled():
    t = ClothingReviews().load()
    f = t.frame
    assert isinstance(t, Table)
    assert len(f) == 23486
    assert t.labels == ["rating", "recommended", "helpful"]
    assert t.item == "clothing_id" and t.user is None and t.timestamp is None
    assert t.features == {"clothing_id": "categorical", "age": "numeric", "division": "categorical",
                          "department": "categorical", "class_name": "categorical",
                          "title": "text", "review_text": "text"}
    assert "positive_feedback_count" in f.columns
    assert "positive_feedback_count" not in t.features  # it determines `helpful`
    assert f["rating"].sum() == 98548 and set(f["rating"].unique()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert f["recommended"].sum() == 19314
    assert f["helpful"].sum() == 12310
    assert f["clothing_id"].nunique() == 1206
    assert f["title"].isna().sum() == 0 and (f["title"] == "").sum() == 3810
    assert (f["review_text"] == "").sum() == 845
    assert f["division"].isna().sum() == 14
    assert "CC0" in t.credit


def test_clothing_reviews_user_path_matches_bundle():
    src = SHARED / "womens-clothing-reviews" / "Womens Clothing E-Commerce Reviews.csv"
    if not src.is_file():
        pytest.skip(f"original Kaggle CSV not at {src}")
    a = ClothingReviews(path=str(src)).load().frame
    b = ClothingReviews().load().frame
    pd.testing.assert_frame_equal(a, b)


def test_clothing_reviews_wrong_csv(tmp_path):
    bad = tmp_path / "reviews.csv"
    bad.write_text("Clothing Id,Age\n1,30\n")
    with pytest.raises(DataError) as e:
        ClothingReviews(path=str(bad)).load()
    msg = str(e.value)
    assert str(bad) in msg and "'Clothing ID'" in msg and "'Clothing Id'" in msg


# --------------------------------------------------------------------------- adult

def test_adult_bundled():
    t = Adult().load()
    f = t.frame
    assert len(f) == 48842
    assert t.labels == ["income", "never_married"]
    assert f["income"].sum() == 11687  # 0.2393
    assert f["income"].mean() == pytest.approx(0.23928, abs=1e-5)
    assert f["never_married"].sum() == 16117  # 0.3300
    assert "marital_status" not in f.columns and "marital_status" not in t.features
    assert t.features["relationship"] == "categorical"
    assert t.features["native_country"] == "categorical"
    assert [c for c, k in t.features.items() if k == "numeric"] == [
        "age", "fnlwgt", "educational_num", "capital_gain", "capital_loss", "hours_per_week"]
    # "?" is read as missing
    assert f["workclass"].isna().sum() == 2799
    assert f["occupation"].isna().sum() == 2809
    assert f["native_country"].isna().sum() == 857
    assert not (f[["workclass", "occupation", "native_country"]] == "?").any().any()
    assert "CC BY 4.0" in t.credit


def test_adult_uci_spelling_and_test_suffix(tmp_path):
    # original UCI spellings (education-num, sex), leading spaces, "?" and the test file's "."
    p = tmp_path / "adult.csv"
    p.write_text(
        "age,workclass,fnlwgt,education,education-num,marital-status,occupation,relationship,"
        "race,sex,capital-gain,capital-loss,hours-per-week,native-country,income\n"
        "25, Private, 226802, 11th, 7, Never-married, ?, Own-child, Black, Male, 0, 0, 40, "
        "United-States, <=50K.\n"
        "52, Self-emp-inc, 287927, HS-grad, 9, Married-civ-spouse, Exec-managerial, Wife, White, "
        "Female, 15024, 0, 40, United-States, >50K.\n")
    f = Adult(path=str(p)).load().frame
    assert f["income"].tolist() == [0.0, 1.0]
    assert f["never_married"].tolist() == [1.0, 0.0]
    assert f["occupation"].isna().tolist() == [True, False]
    assert f["gender"].tolist() == ["Male", "Female"]
    assert f["educational_num"].tolist() == [7.0, 9.0]


# --------------------------------------------------------------------------- movielens

@needs_ml100k
def test_movielens_from_folder():
    t = MovieLens100K(path=str(ML100K)).load()
    f = t.frame
    assert len(f) == 100000
    assert f["user_id"].nunique() == 943 and f["item_id"].nunique() == 1682
    assert (t.user, t.item, t.timestamp) == ("user_id", "item_id", "timestamp")
    assert t.labels == ["rating", "like", "watch"]
    assert f["rating"].sum() == 352986
    assert f["like"].sum() == 55375
    # original u.data order is kept (the canonical u1..u5 folds are row ranges)
    assert f.iloc[0][["user_id", "item_id", "rating", "timestamp"]].tolist() == [196, 242, 3.0, 881250949]
    toy = f[f["item_id"] == 1].iloc[0]
    assert toy["title"] == "Toy Story"
    assert toy["genres"] == "Animation|Children's|Comedy"
    assert toy["release_year"] == 1995.0
    assert f.loc[f["item_id"] == 267, "release_year"].isna().all()
    assert t.features["genres"] == "multi_categorical" and t.features["title"] == "text"
    u1 = f[f["user_id"] == 1].iloc[0]
    assert (u1["age"], u1["gender"], u1["occupation"], u1["zip_prefix"]) == (24.0, "M", "technician", "857")
    assert f["zip_prefix"].isna().sum() == 0
    assert "GroupLens" in t.credit


def _ml_zip(tmp_path: Path) -> Path:
    z = tmp_path / "src" / "ml-100k.zip"
    z.parent.mkdir()
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in ("u.data", "u.item", "u.user", "u.genre"):
            zf.write(ML100K / name, f"ml-100k/{name}")
    return z


@needs_ml100k
def test_movielens_download_from_file_url(tmp_path):
    z = _ml_zip(tmp_path)
    digest = hashlib.md5(z.read_bytes()).hexdigest()
    cache = tmp_path / "cache"
    ds = MovieLens100K(cache_dir=str(cache), url=z.as_uri(), md5=digest)
    ds.prepare()
    assert (cache / "ml-100k" / "u.data").is_file()
    assert not list(cache.glob("*.part")) and not list(cache.glob("ml-100k.*/"))
    assert len(ds.load().frame) == 100000
    # a second prepare() finds the cached copy and does not download (bad URL would fail)
    MovieLens100K(cache_dir=str(cache), url="file:///nonexistent.zip").prepare()


@needs_ml100k
def test_movielens_checksum_mismatch(tmp_path, monkeypatch):
    z = _ml_zip(tmp_path)
    got = hashlib.md5(z.read_bytes()).hexdigest()
    cache = tmp_path / "cache"
    monkeypatch.setenv("MTLFRAME_CACHE", str(cache))
    ds = MovieLens100K(url=z.as_uri())  # expects the published GroupLens MD5
    with pytest.raises(DataError) as e:
        ds.prepare()
    msg = str(e.value)
    assert MovieLens100K.MD5 == "0e33842e24a9c977be4e0107933c0723"
    assert MovieLens100K.MD5 in msg and got in msg and z.as_uri() in msg
    assert not (cache / "ml-100k").exists() and not list(cache.glob("*.part"))


def test_movielens_missing_folder(tmp_path):
    with pytest.raises(DataError) as e:
        MovieLens100K(cache_dir=str(tmp_path), download=False).load()
    msg = str(e.value)
    assert "data.dataset.path" in msg and "download" in msg and str(tmp_path / "ml-100k") in msg
    with pytest.raises(DataError, match="data.dataset.path"):
        MovieLens100K(path=str(tmp_path / "nowhere")).load()


# --------------------------------------------------------------------------- csv / parquet

@pytest.fixture()
def clicks_csv(tmp_path) -> Path:
    p = tmp_path / "clicks.csv"
    pd.DataFrame({
        "user": ["007", "008", "007"], "item": [1, 2, 3], "price": [1.5, None, 3.0],
        "tags": ["a|b", "b", ""], "click": [1, 0, None], "ts": [10, 20, 30],
    }).to_csv(p, index=False)
    return p


def test_csv_loads(clicks_csv):
    t = CsvDataset(str(clicks_csv), features={"user": "categorical", "price": "numeric",
                                              "tags": "multi_categorical"},
                   labels=["click"], timestamp="ts", user="user", item="item").load()
    f = t.frame
    assert f["user"].tolist() == ["007", "008", "007"]  # leading zeros kept
    assert f["price"].isna().tolist() == [False, True, False]
    assert f["click"].isna().sum() == 1 and f["click"].dtype.kind == "f"
    assert list(f.columns) == ["user", "price", "tags", "click", "ts", "item"]
    assert (t.timestamp, t.user, t.item) == ("ts", "user", "item")


def test_csv_missing_column(clicks_csv):
    ds = CsvDataset(str(clicks_csv), features={"prices": "numeric"}, labels=["clicks"])
    with pytest.raises(DataError) as e:
        ds.load()
    msg = str(e.value)
    assert str(clicks_csv) in msg
    assert "'prices' (closest: 'price')" in msg and "'clicks' (closest: 'click')" in msg


def test_csv_bad_numeric_value(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("age,y\n30,1\n41,0\nforty,1\nn/a,0\n")
    with pytest.raises(DataError) as e:
        CsvDataset(str(p), features={"age": "numeric"}, labels=["y"]).load()
    msg = str(e.value)
    # "n/a" is a pandas missing marker; "forty" is the first bad value, data row 3 = file line 4
    assert str(p) in msg and "'age'" in msg and "row 3" in msg and "line 4" in msg
    assert "'forty'" in msg


def test_csv_label_not_numeric(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("age,y\n30,yes\n41,no\n")
    with pytest.raises(DataError) as e:
        CsvDataset(str(p), features={"age": "numeric"}, labels=["y"]).load()
    msg = str(e.value)
    assert "label column 'y'" in msg and "row 1" in msg and "'yes'" in msg and str(p) in msg


def test_csv_bad_type_and_missing_file(tmp_path):
    with pytest.raises(DataError, match="Did you mean 'categorical'"):
        CsvDataset(str(tmp_path / "a.csv"), features={"u": "categorcal"}, labels=["y"])
    with pytest.raises(DataError, match="does not exist"):
        CsvDataset(str(tmp_path / "a.csv"), features={"u": "categorical"}, labels=["y"]).load()


def test_parquet(tmp_path, monkeypatch):
    pytest.importorskip("pyarrow")
    p = tmp_path / "d.parquet"
    pd.DataFrame({"u": ["a", "b"], "x": [1.0, 2.0], "y": [0, 1]}).to_parquet(p)
    t = ParquetDataset(str(p), features={"u": "categorical", "x": "numeric"}, labels=["y"],
                       user="u").load()
    assert t.frame["y"].tolist() == [0, 1] and t.user == "u"
    with pytest.raises(DataError, match=r"'xx' \(closest: 'x'\)"):
        ParquetDataset(str(p), features={"xx": "numeric"}, labels=["y"]).load()
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # simulate pyarrow not installed
    with pytest.raises(DataError, match="pip install pyarrow"):
        ParquetDataset(str(p), features={"x": "numeric"}, labels=["y"]).load()


# --------------------------------------------------------------------------- synthetic

@pytest.mark.parametrize("correlation", [0.0, 0.5, 0.9])
def test_synthetic_linear_part_correlation(correlation):
    t = Synthetic(num_rows=20000, correlation=correlation, seed=3).load()
    x_cols = [c for c, k in t.features.items() if k == "numeric"]
    assert x_cols[:2] == ["x_000", "x_001"] and len(x_cols) == 100
    x = t.frame[x_cols].to_numpy(np.float64)
    w = t.extra["weights"]
    assert w.shape == (2, 100)
    assert np.allclose(np.linalg.norm(w, axis=1), 1.0)
    assert w[0] @ w[1] == pytest.approx(correlation, abs=1e-9)
    lin = x @ w.T
    r = np.corrcoef(lin[:, 0], lin[:, 1])[0, 1]
    assert r == pytest.approx(correlation, abs=0.05)
    assert t.labels == ["task_0", "task_1", "task_0_bin", "task_1_bin"]
    assert t.frame["task_0_bin"].mean() == pytest.approx(0.5, abs=1e-3)
    # labels are the linear part plus the shared sine terms plus small noise
    a, b = t.extra["alpha"], t.extra["beta"]
    clean = lin + np.sin(lin[:, :, None] * a + b).sum(-1)
    resid = t.frame[["task_0", "task_1"]].to_numpy(np.float64) - clean
    assert resid.std() == pytest.approx(0.1, abs=0.01)


def test_synthetic_more_tasks_and_categoricals():
    t = Synthetic(num_rows=5000, correlation=0.5, num_tasks=3, num_features=12,
                  num_categorical=2, categorical_cardinality=50, seed=1).load()
    f = t.frame
    w = t.extra["weights"]
    assert np.round(w @ w.T, 6).tolist() == [[1.0, 0.5, 0.5], [0.5, 1.0, 0.25], [0.5, 0.25, 1.0]]
    assert t.features["cat_0"] == "categorical" and f["cat_0"].dtype == np.int32
    assert f["x_000"].dtype == np.float32 and f["task_2"].dtype == np.float32
    counts = f["cat_1"].value_counts()
    assert counts.index[0] == 0 and f["cat_1"].between(0, 49).all()
    # Zipf(1.1) over 50 ids: P(0) = 1 / sum_r r^-1.1
    p0 = 1.0 / (np.arange(1, 51) ** -1.1).sum()
    assert counts.iloc[0] / len(f) == pytest.approx(p0, abs=0.02)
    again = Synthetic(num_rows=5000, correlation=0.5, num_tasks=3, num_features=12,
                      num_categorical=2, categorical_cardinality=50, seed=1).load().frame
    pd.testing.assert_frame_equal(f, again)


def test_synthetic_bad_args():
    with pytest.raises(DataError, match="correlation"):
        Synthetic(correlation=1.5)
    with pytest.raises(DataError, match="num_features"):
        Synthetic(num_tasks=5, num_features=3)
