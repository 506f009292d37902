"""MovieLens 100K (GroupLens): 100,000 ratings of 1,682 movies by 943 users.

Source: F. Maxwell Harper and Joseph A. Konstan, "The MovieLens Datasets: History and Context",
ACM TiiS 5(4), 2015; https://grouplens.org/datasets/movielens/100k/. Licence: GroupLens terms —
research use, no redistribution. mtlframe therefore does **not** bundle it: the loader reads a
local folder (``path``) or downloads the official ``ml-100k.zip`` into a cache directory
(``cache_dir``, default ``$MTLFRAME_CACHE`` or ``~/.cache/mtlframe``), verifies its MD5 against
the digest GroupLens publishes, and extracts it there.

Columns:

* features — ``user_id``, ``item_id``, ``gender``, ``occupation``, ``zip_prefix`` (first 3
  characters of the zip code; some are Canadian, e.g. ``T8H``) categorical; ``age`` and
  ``release_year`` numeric (``release_year`` is NaN for the one movie without a release date,
  item 267 "unknown", 9 ratings: a recipe using it declares a fill, e.g.
  ``data.fill_missing: {release_year: mean}``); ``genres`` multi-categorical (``"Animation|Children's|Comedy"``, from the
  19 genre flags of ``u.item``); ``title`` text, without the ``" (1995)"`` year suffix (and a
  trailing ``" (V)"``).
* labels — ``rating`` (float 1..5, regression), ``like`` (1.0 if rating >= 4, binary; 55.4 %) and
  ``watch`` (1.0 on every row: the implicit feedback "the user rated, so watched, the movie", the
  positives of a ``retrieval`` task).
* ``timestamp`` (Unix seconds), user column ``user_id``, item column ``item_id``. Rows keep the
  order of ``u.data``, so rows 1-20,000 are the canonical ``u1.test`` fold.

Predefined folds (``data.split: {name: predefined, fold: K}``, K = 1..5): GroupLens' u1..u5
base/test pairs. Fold K's test part is the rows of ``uK.test`` when the folder has that file
(matched to ``u.data`` rows by user, item, rating and timestamp), else rows 20,000(K-1)+1 ..
20,000K of ``u.data`` in file order, which is how GroupLens' ``mku.sh`` builds ``uK.test``
(``head -20000K u.data | tail -20000``; 20,000 is a fifth of the file: a copy with another
number of rows is cut in fifths of ``len // 5`` rows). ``uK.base`` is every other row.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from mtlframe.datasets.base import RecDataset, Table
from mtlframe.errors import DataError

__all__ = ["MovieLens100K"]

CREDIT = ("MovieLens 100K, GroupLens Research (Harper & Konstan, ACM TiiS 2015); research use, "
          "not redistributed: https://grouplens.org/datasets/movielens/100k/")

GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
          "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
          "Romance", "Sci-Fi", "Thriller", "War", "Western"]
FEATURES: dict[str, str] = {
    "user_id": "categorical",
    "item_id": "categorical",
    "gender": "categorical",
    "occupation": "categorical",
    "zip_prefix": "categorical",
    "age": "numeric",
    "genres": "multi_categorical",
    "release_year": "numeric",
    "title": "text",
}
LABELS: list[str] = ["rating", "like", "watch"]
_FILES = ("u.data", "u.item", "u.user")
_RATING_COLUMNS = ["user_id", "item_id", "rating", "timestamp"]
_RATING_DTYPES = {"user_id": "int64", "item_id": "int64", "rating": "float64", "timestamp": "int64"}
#: the number of GroupLens' predefined folds u1..u5
NUM_FOLDS = 5


def predefined_folds(folder: Path, ratings: pd.DataFrame) -> dict[int, np.ndarray]:
    """Row indices ``[~N/5]`` (int64, file order) of the test part of folds u1..u5 of ``ratings``
    (``u.data`` as read, in file order): ``uK.test`` when ``folder`` has it, else the K-th fifth
    of the rows (GroupLens' ``mku.sh``: rows ``len//5 * (K-1)`` .. ``len//5 * K - 1``).

    Raises:
        DataError: a ``uK.test`` line that is not a row of ``u.data`` (file and line named).
    """
    n = len(ratings)
    size = n // NUM_FOLDS
    keyed = ratings.reset_index(names="_row")
    folds = {}
    for k in range(1, NUM_FOLDS + 1):
        path = folder / f"u{k}.test"
        if not path.is_file():
            folds[k] = np.arange(size * (k - 1), size * k, dtype=np.int64)
            continue
        test = pd.read_csv(path, sep="\t", header=None, names=_RATING_COLUMNS, dtype=_RATING_DTYPES)
        test["_line"] = np.arange(1, len(test) + 1)
        hit = test.merge(keyed, on=_RATING_COLUMNS, how="left")
        lost = hit[hit["_row"].isna()]
        if len(lost) or len(hit) != len(test):
            line = int(lost["_line"].iloc[0]) if len(lost) else int(hit["_line"][hit["_line"].duplicated()].iloc[0])
            raise DataError(f"movielens-100k: {path} line {line} is {'not' if len(lost) else 'more than one'} "
                            f"row of {folder / 'u.data'}; uK.test must come from the same u.data (GroupLens' "
                            "mku.sh). Remove the uK.* files to cut the folds from u.data in file order.")
        folds[k] = np.sort(hit["_row"].to_numpy(np.int64))
    return folds


def default_cache_dir() -> Path:
    """``$MTLFRAME_CACHE`` if set, else ``~/.cache/mtlframe``."""
    env = os.environ.get("MTLFRAME_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mtlframe"


def file_md5(path: Path, chunk: int = 1 << 20) -> str:
    """Hex MD5 digest of a file, read in chunks."""
    h = hashlib.md5()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


class MovieLens100K(RecDataset):
    """MovieLens 100K ratings with user and movie attributes.

    Args:
        path: a folder holding GroupLens's ``u.data``, ``u.item`` and ``u.user``; ``None`` uses
            ``cache_dir/ml-100k`` (downloading it there first when ``download`` is true).
        cache_dir: where the official zip is downloaded and extracted (default
            ``$MTLFRAME_CACHE`` or ``~/.cache/mtlframe``).
        download: fetch ``url`` when the cache holds no copy.
        url: the zip to download (default :attr:`URL`; tests point it at a ``file://`` zip).
        md5: its expected MD5 hex digest (default :attr:`MD5`, as published by GroupLens).

    ``load()`` returns one row per rating (100,000); see the module docstring for the columns.
    """

    URL: str = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
    MD5: str = "0e33842e24a9c977be4e0107933c0723"
    FOLDER: str = "ml-100k"
    NUM_FOLDS: int = NUM_FOLDS  # u1..u5 (see the module docstring)

    def __init__(self, path: str | None = None, cache_dir: str | None = None,
                 download: bool = True, url: str | None = None, md5: str | None = None) -> None:
        self.path = path
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.download = download
        self.url = url or self.URL
        self.md5 = (md5 or self.MD5).lower()

    @property
    def folder(self) -> Path:
        """The folder ``load()`` reads."""
        return Path(self.path).expanduser() if self.path else self.cache_dir / self.FOLDER

    def _complete(self, folder: Path) -> bool:
        return all((folder / f).is_file() for f in _FILES)

    def prepare(self) -> None:
        """Download and extract the zip into ``cache_dir`` unless a copy is there (or ``path`` set)."""
        if self.path is not None or self._complete(self.folder) or not self.download:
            return
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        target = self.cache_dir / "ml-100k.zip"
        fd, tmp_name = tempfile.mkstemp(prefix="ml-100k.", suffix=".zip.part", dir=self.cache_dir)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            try:
                with urllib.request.urlopen(self.url, timeout=60) as resp, open(tmp, "wb") as out:
                    shutil.copyfileobj(resp, out)
            except (urllib.error.URLError, OSError, ValueError) as exc:
                raise DataError(f"movielens-100k: cannot download {self.url} ({exc}). Download it "
                                f"yourself and pass the extracted folder as data.dataset.path, "
                                f"or place it at {self.folder}.") from None
            got = file_md5(tmp)
            if got != self.md5:
                raise DataError(f"movielens-100k: checksum mismatch for {target.name} downloaded "
                                f"from {self.url}: expected MD5 {self.md5}, got {got}. The download "
                                f"is corrupt or not the official ml-100k.zip; it was deleted. Retry, "
                                f"or pass an extracted copy as data.dataset.path.")
            tmp.replace(target)
        finally:
            tmp.unlink(missing_ok=True)
        extract = Path(tempfile.mkdtemp(prefix="ml-100k.", dir=self.cache_dir))
        try:
            try:
                with zipfile.ZipFile(target) as zf:
                    zf.extractall(extract)
            except zipfile.BadZipFile as exc:
                raise DataError(f"movielens-100k: {target} is not a valid zip ({exc})") from None
            found = [p.parent for p in extract.rglob("u.data") if self._complete(p.parent)]
            if not found:
                raise DataError(f"movielens-100k: {target} holds no folder with {', '.join(_FILES)}")
            if self.folder.exists():
                shutil.rmtree(self.folder)
            found[0].replace(self.folder)
        finally:
            shutil.rmtree(extract, ignore_errors=True)

    def load(self) -> Table:
        folder = self.folder
        if not self._complete(folder):
            if self.path is None and self.download:
                self.prepare()
            if not self._complete(folder):
                missing = [f for f in _FILES if not (folder / f).is_file()]
                if self.path is not None:
                    fix = ("pass the extracted GroupLens ml-100k folder as data.dataset.path, or set "
                           "it to null to use the cache dir and allow download")
                else:
                    fix = (f"pass the extracted GroupLens ml-100k folder as data.dataset.path, or "
                           f"allow download (data.dataset.download: true) to fetch {self.url} "
                           f"into {self.cache_dir}")
                raise DataError(f"movielens-100k: {folder} lacks {', '.join(missing)}. MovieLens "
                                f"is not bundled with mtlframe: {fix}.")
        ratings = pd.read_csv(folder / "u.data", sep="\t", header=None, names=_RATING_COLUMNS,
                              dtype=_RATING_DTYPES)
        folds = predefined_folds(folder, ratings)
        users = pd.read_csv(folder / "u.user", sep="|", header=None,
                            names=["user_id", "age", "gender", "occupation", "zip_code"],
                            dtype={"user_id": "int64", "age": "float64", "gender": "str",
                                   "occupation": "str", "zip_code": "str"})
        users["zip_prefix"] = users["zip_code"].str[:3]
        item_cols = ["item_id", "title", "release_date", "video_release_date", "imdb_url", *GENRES]
        items = pd.read_csv(folder / "u.item", sep="|", header=None, names=item_cols,
                            encoding="latin-1",
                            dtype={"item_id": "int64", "title": "str", "release_date": "str",
                                   "video_release_date": "str", "imdb_url": "str",
                                   **{g: "int8" for g in GENRES}})
        joined = pd.Series("", index=items.index, dtype="str")
        for g in GENRES:  # 19 vectorized passes over the items
            joined = joined + items[g].map({1: g + "|"}).fillna("")
        items["genres"] = joined.str.rstrip("|")
        items["release_year"] = pd.to_datetime(items["release_date"], format="%d-%b-%Y",
                                                errors="coerce").dt.year.astype("float64")
        items["title"] = (items["title"].fillna("")
                          .str.replace(r"\s*\(\d{4}\)\s*(\(V\))?\s*$", "", regex=True).str.strip())
        frame = ratings.merge(users[["user_id", "age", "gender", "occupation", "zip_prefix"]],
                              on="user_id", how="left", validate="many_to_one")
        frame = frame.merge(items[["item_id", "title", "genres", "release_year"]], on="item_id",
                            how="left", validate="many_to_one")
        frame["like"] = (frame["rating"] >= 4).astype("float64")
        frame["watch"] = 1.0
        frame = frame[[*FEATURES, *LABELS, "timestamp"]]
        return Table(frame=frame, features=dict(FEATURES), labels=list(LABELS),
                     timestamp="timestamp", user="user_id", item="item_id", source=str(folder),
                     credit=CREDIT, folds=folds)
