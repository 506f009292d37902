"""``mtlframe serve``: an HTTP server for a checkpoint, with dynamic batching. Callable from Python.

Example::

    from mtlframe.serve import build_server, serve
    app = build_server("runs/quickstart/checkpoints/best.ckpt")   # a FastAPI app (ASGI)
    serve("runs/quickstart/checkpoints/best.ckpt", port=8000)      # build it and run it on uvicorn

Routes (``docs/serving.md`` has the JSON of each, with examples):

* ``POST /predict``: one row object or a list of rows, each ``{column: raw value}`` as a row of the
  file ``mtlframe predict`` reads; answers ``{"predictions": [{task: value, ...}, ...], "warnings":
  [...], "oov": {feature: rows}}``, the values :func:`mtlframe.run.predict_frame` gives.
* ``POST /recommend``: ``{"user": id or [ids], "k": 10}`` -> top-``k`` items per user, by
  :class:`mtlframe.recommend.Recommender` (what ``mtlframe recommend`` uses), when the checkpoint's
  recipe has a ``ranking:`` section (else 404 with the reason).
* ``GET /health``: the checkpoint, its tasks, the device and the batching counters.

Dynamic batching: each ``/predict`` request is parsed and preprocessed on its own (so a bad
request fails alone, with a 4xx naming the field), then waits at most ``batch_timeout`` seconds
for other requests; up to ``max_batch_size`` requests go through the model in one forward pass,
and each gets its own rows back. The model runs on one thread; ``workers`` processes each load
the model once.

Engine: FastAPI + uvicorn with our own asyncio batching queue (:class:`Batcher`). LitServe 0.2.19
was read and not used: its batched loop sends an exception raised for one request of a batch to
every request of the batch, and it answers malformed JSON with a 500 (``docs/serving.md``,
*Why not LitServe*).
"""

import asyncio
import contextlib
import json
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtlframe.errors import MTLFrameError

#: rows (``/predict``) or users (``/recommend``) one request may hold, by default
MAX_ROWS = 1024
#: largest request body read, bytes
MAX_BODY = 16 * 1024 * 1024
#: what ``--accelerator`` of ``serve`` accepts
ACCELERATORS = ("cpu", "cuda", "gpu", "auto")


class RequestError(Exception):
    """A bad request: answered ``status`` with ``{"error": {"field": field, "reason": reason}}``.

    Args:
        status: the HTTP status (4xx).
        field: where in the request (``body``, ``rows[2].age``, ``k``).
        reason: what is wrong and what to send instead.
    """

    def __init__(self, status: int, field: str, reason: str) -> None:
        self.status, self.field, self.reason = status, field, reason
        super().__init__(f"{field}: {reason}")


def _need_serve_extra():
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise MTLFrameError(f"mtlframe serve needs FastAPI and uvicorn ({exc.name} is missing): "
                            "pip install 'mtlframe[serve]'") from None


# ------------------------------------------------------------------------------------------------
# Requests: JSON -> rows / users
# ------------------------------------------------------------------------------------------------


def parse_json(body: bytes) -> Any:
    """The JSON value of a request body.

    Raises:
        RequestError: 400 for an empty body, malformed JSON (line and column given), JSON nested
            too deeply for the parser, ``NaN`` or ``Infinity`` (not JSON; send ``null`` for a
            missing value).
    """
    def constant(name: str):
        raise RequestError(400, "body", f"{name} is not valid JSON (and not a value the model takes); "
                                        "send null for a missing value, or a finite number.")

    if not body.strip():
        raise RequestError(400, "body", "the request body is empty; send a JSON object.")
    try:
        return json.loads(body, parse_constant=constant)
    except json.JSONDecodeError as exc:
        raise RequestError(400, "body", f"malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}.") from None
    except UnicodeDecodeError:
        raise RequestError(400, "body", "the request body is not UTF-8 text; send JSON.") from None
    except RecursionError:
        raise RequestError(400, "body", "the JSON is nested too deeply; send a row object {column: value} "
                                        "or a list of them.") from None


def _jtype(value: Any) -> str:
    """The JSON type name of a decoded value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


@dataclass
class RowSchema:
    """The columns a ``/predict`` row may hold, and the JSON each takes.

    Attributes:
        kinds: ``column -> kind``: ``numeric`` (a number or null), ``categorical`` (a string, an
            integer or null), ``list`` (a ``|``-separated string or a list of ids: multi-categorical
            and sequence features), ``text`` (a string or null), ``scalar`` (a sequence's log columns;
            a label column, ignored but for its unseen classes).
        required: the columns every row must hold (the preprocessor's inputs), in order.
    """

    kinds: dict[str, str]
    required: list[str]

    @classmethod
    def of(cls, pre) -> "RowSchema":
        """The schema of a fitted :class:`~mtlframe.preprocess.Preprocessor`."""
        kinds: dict[str, str] = {}
        required: list[str] = []
        for col, typ in pre.features.items():
            sources = pre._sources(col, None)
            spec = pre.sequences.get(col)
            for c in sources:
                if c == col:
                    kind = {"numeric": "numeric", "categorical": "categorical", "multi_categorical": "list",
                            "sequence": "list", "text": "text"}.get(typ, "scalar")
                else:   # a sequence's side fields (lists beside its ids) or its log columns (scalars)
                    kind = "list" if spec is not None and spec.of is None else "scalar"
                kinds.setdefault(c, kind)
                if c not in required:
                    required.append(c)
        for lab in pre.labels:
            kinds.setdefault(lab.column, "scalar")
        return cls(kinds, required)

    def check_value(self, col: str, value: Any, where: str) -> Any:
        """``value`` as the table cell of column ``col`` (lists joined with ``|``).

        Raises:
            RequestError: 422 for a value of the wrong JSON type (the field and the types it takes).
        """
        kind = self.kinds[col]
        if value is None:
            return None
        if kind == "numeric":
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if not math.isfinite(float(value)):   # 1e999 parses as infinity
                    raise RequestError(422, where, f"numeric feature '{col}' takes a finite number (or null), "
                                                   f"got {value}.")
                return float(value)
            raise RequestError(422, where, f"numeric feature '{col}' takes a number (or null), got {_jtype(value)} "
                                           f"{json.dumps(value)[:60]}.")
        if kind == "list":
            if isinstance(value, list):
                bad = [v for v in value if isinstance(v, bool) or not isinstance(v, (str, int, float))]
                if bad:
                    raise RequestError(422, where, f"feature '{col}' takes a list of ids (strings or numbers), "
                                                   f"got {_jtype(bad[0])} in the list.")
                return "|".join(str(v) for v in value) if value else None
            if isinstance(value, (str, int)) and not isinstance(value, bool):
                return value
            raise RequestError(422, where, f"feature '{col}' takes a list of ids or a '|'-separated string "
                                           f"('12|7|33'), got {_jtype(value)}.")
        if kind == "text":
            if isinstance(value, str):
                return value
            raise RequestError(422, where, f"text feature '{col}' takes a string (or null), got {_jtype(value)}.")
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            what = "categorical feature" if kind == "categorical" else "column"
            raise RequestError(422, where, f"{what} '{col}' takes a string or a number (or null), got {_jtype(value)}.")
        return value


@dataclass
class Rows:
    """The checked rows of one ``/predict`` request: ``cells`` maps each column to its values, one
    per row (lists joined with ``|``, numbers as floats)."""

    cells: dict

    def __len__(self) -> int:
        return len(next(iter(self.cells.values()), []))


def check_rows(payload: Any, schema: RowSchema, max_rows: int = MAX_ROWS) -> Rows:
    """The :class:`Rows` of a ``/predict`` body: one row object or a list of them.

    Raises:
        RequestError: 422 for a body that is not a row or a list of rows, an empty list, a row
            that is not an object, an unknown column (closest name given), a missing column, a
            value of the wrong type; 413 for more than ``max_rows`` rows.
    """
    from mtlframe.errors import closest, near_hint

    rows = [payload] if isinstance(payload, dict) else payload
    if not isinstance(rows, list):
        raise RequestError(422, "body", "send one row object {column: value} or a list of them, "
                                        f"got {_jtype(payload)}.")
    if not rows:
        raise RequestError(422, "body", "the list of rows is empty; send at least one row.")
    if len(rows) > max_rows:
        raise RequestError(413, "body", f"{len(rows):,} rows is more than this server takes in one request "
                                        f"(--max-rows {max_rows:,}); split the rows over several requests.")
    cells: dict[str, list[Any]] = {c: [] for c in schema.required}
    extra: dict[str, list[Any]] = {}
    for i, row in enumerate(rows):
        where = "body" if isinstance(payload, dict) else f"body[{i}]"
        if not isinstance(row, dict):
            raise RequestError(422, where, f"a row is an object {{column: value}}, got {_jtype(row)}.")
        for col in row:
            if col not in schema.kinds:
                raise RequestError(422, f"{where}.{col}", "unknown column" + near_hint(
                    closest(col, schema.kinds), ".") + f" The model reads {', '.join(schema.required)}.")
        missing = [c for c in schema.required if c not in row]
        if missing:
            raise RequestError(422, f"{where}.{missing[0]}", f"missing column (every row needs "
                                                             f"{', '.join(schema.required)}; send null for an "
                                                             f"empty value); missing: {', '.join(missing)}.")
        for col in schema.required:
            cells[col].append(schema.check_value(col, row[col], f"{where}.{col}"))
        for col, value in row.items():   # label columns: optional
            if col not in cells:
                extra.setdefault(col, [None] * i).append(schema.check_value(col, value, f"{where}.{col}"))
        for values in extra.values():
            if len(values) < i + 1:
                values.append(None)
    return Rows({**cells, **extra})


def rows_table(parts: Sequence[Rows], schema: RowSchema):
    """One pandas table of the rows of several requests, in order (a column only some requests
    hold, a label, is empty in the others)."""
    import pandas as pd

    columns = list(dict.fromkeys(c for part in parts for c in part.cells))
    data = {}
    for col in columns:
        values: list = []
        for part in parts:
            values += part.cells.get(col) or [None] * len(part)
        data[col] = pd.Series(values, dtype="float64") if schema.kinds.get(col) == "numeric" else values
    return pd.DataFrame(data)


def rows_frame(payload: Any, schema: RowSchema, max_rows: int = MAX_ROWS):
    """The pandas table of a ``/predict`` body (:func:`check_rows`, then :func:`rows_table`).

    Raises:
        RequestError: as :func:`check_rows`.
    """
    return rows_table([check_rows(payload, schema, max_rows)], schema)


_COLUMN = re.compile(r"column '([^']+)'")


def _data_error(exc: Exception, schema: RowSchema) -> RequestError:
    """A preprocessor's refusal as a 422 naming its column."""
    m = _COLUMN.search(str(exc))
    col = m.group(1) if m and m.group(1) in schema.kinds else None
    return RequestError(422, f"body.{col}" if col else "body", str(exc))


def recommend_request(payload: Any, max_users: int, max_k: int) -> tuple[list[Any], int, bool]:
    """``(user ids, k, one user asked)`` of a ``/recommend`` body ``{"user": id or [ids], "k": 10}``.

    Raises:
        RequestError: 422 for a body that is not an object, an unknown key, no ``user``, an id
            that is not a string or an integer, an empty list, ``k`` not an integer in
            ``1..max_k``; 413 for more than ``max_users`` users.
    """
    from mtlframe.errors import closest, near_hint

    if not isinstance(payload, dict):
        raise RequestError(422, "body", f'send an object {{"user": id or [ids], "k": 10}}, got {_jtype(payload)}.')
    for key in payload:
        if key not in ("user", "k"):
            raise RequestError(422, f"body.{key}", "unknown key" + near_hint(closest(key, ["user", "k"]), ".")
                               + " The keys are user and k.")
    if "user" not in payload:
        raise RequestError(422, "body.user", 'missing: send "user": an id or a list of ids.')
    one = not isinstance(payload["user"], list)
    users = [payload["user"]] if one else payload["user"]
    if not users:
        raise RequestError(422, "body.user", "the list of users is empty; send at least one id.")
    if len(users) > max_users:
        raise RequestError(413, "body.user", f"{len(users):,} users is more than this server takes in one request "
                                             f"(--max-rows {max_users:,}); split them over several requests.")
    for i, u in enumerate(users):
        if isinstance(u, bool) or not isinstance(u, (str, int)):
            where = "body.user" if one else f"body.user[{i}]"
            raise RequestError(422, where, f"a user id is a string or an integer, got {_jtype(u)}.")
    k = payload.get("k", 10)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= max_k:
        raise RequestError(422, "body.k", f"k (items per user) is an integer from 1 to {max_k} (the catalogue's "
                                          f"size), got {json.dumps(k)[:40]}.")
    return users, k, one


def _jsonable(value: Any) -> Any:
    """A table cell as JSON (numpy scalars as Python numbers; NaN as null)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ------------------------------------------------------------------------------------------------
# Dynamic batching
# ------------------------------------------------------------------------------------------------


@dataclass
class BatchStats:
    """Counters of the batcher: model calls and the requests / rows each took."""

    calls: int = 0
    requests: int = 0
    rows: int = 0
    largest: int = 0           # most requests in one call
    sizes: list[int] = field(default_factory=list)   # requests per call, the last 1000 calls

    def add(self, requests: int, rows: int) -> None:
        self.calls += 1
        self.requests += requests
        self.rows += rows
        self.largest = max(self.largest, requests)
        self.sizes = (self.sizes + [requests])[-1000:]


class Batcher:
    """Dynamic batching on asyncio: requests wait at most ``timeout`` seconds for others; up to
    ``max_batch_size`` requests go through ``run`` together.

    Args:
        run: ``[item, ...] -> [result or exception, ...]`` (one per item, in order); called on
            ``executor`` (one thread, so ``run`` never runs twice at once). An exception in the list
            is raised to its request only.
        max_batch_size: requests per call (1: no batching).
        timeout: seconds the first request of a batch waits for more (0: take what is queued).
        executor: where ``run`` runs.
    """

    def __init__(self, run: Callable[[list], list], max_batch_size: int, timeout: float,
                 executor: ThreadPoolExecutor) -> None:
        self.run, self.max_batch_size, self.timeout, self.executor = run, max_batch_size, timeout, executor
        self.stats = BatchStats()
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None

    def _start(self) -> asyncio.Queue:
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._queue = asyncio.Queue()
            self._task = loop.create_task(self._loop(self._queue))
        return self._queue

    async def submit(self, item: Any, rows: int = 1) -> Any:
        """The result of ``item`` (``rows`` rows, for the counters), computed in a batch."""
        future = asyncio.get_running_loop().create_future()
        self._start().put_nowait((item, rows, future))
        return await future

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
            self._task = None

    async def _loop(self, queue: asyncio.Queue) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await queue.get()]
            deadline = loop.time() + self.timeout
            while len(items) < self.max_batch_size:
                try:
                    left = deadline - loop.time()
                    items.append(queue.get_nowait() if left <= 0 else await asyncio.wait_for(queue.get(), left))
                except (asyncio.QueueEmpty, asyncio.TimeoutError):
                    break
            items = [it for it in items if not it[2].cancelled()]   # a client that went away
            if not items:
                continue
            self.stats.add(len(items), sum(it[1] for it in items))
            try:
                results = await loop.run_in_executor(self.executor, self.run, [it[0] for it in items])
            except Exception as exc:  # noqa: BLE001 - each waiting request gets it
                results = [exc] * len(items)
            for (_, _, future), result in zip(items, results):
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)


@dataclass
class Prediction:
    """One ``/predict`` request's answer: its rows of :func:`~mtlframe.run.predict_frame`'s table as
    JSON objects, and its report."""

    records: list
    report: dict


def _records(table) -> list[dict]:
    """The rows of a prediction table as JSON objects (numpy scalars as Python numbers)."""
    return [{c: _jsonable(v) for c, v in zip(table.columns, row)} for row in table.itertuples(index=False)]


#: report entries other than a categorical feature's out-of-vocabulary count
_OTHER_EVENTS = ("filled", "clipped", "truncated", "unseen_classes")


def predict_batch(loaded, parts: Sequence[Rows], schema: RowSchema, source: str = "request") -> list:
    """:func:`~mtlframe.run.predict_frame` of several requests' rows (:func:`check_rows`) in one
    preprocessing pass and one forward pass: ``[Prediction or exception]``, one per request, in order.

    A request the preprocessor refuses gets its :class:`~mtlframe.errors.DataError` alone: the
    batch is then redone request by request, so the others still get their predictions. Each
    report is the request's own: out-of-vocabulary counts of categorical features come from the
    batch's ids; when the batch had other events (a fill, a clip, a multi-categorical or sequence
    out-of-vocabulary token, a truncation, an unseen class), the requests' reports are recomputed
    one by one.
    """
    from mtlframe.errors import CheckpointError, DataError
    from mtlframe.preprocess import _as_str
    from mtlframe.run import model_predictions, prediction_table, prepare_rows

    whole = rows_table(parts, schema)
    ids: dict = {}
    try:
        columns, report = prepare_rows(loaded, whole, source, transformed=ids)
    except DataError as exc:
        if len(parts) == 1:
            return [exc]
        return [predict_batch(loaded, [p], schema, source)[0] for p in parts]   # find the bad one(s); the rest go on
    outputs = model_predictions(loaded, columns)
    pre = loaded.preprocessor
    categorical = [c for c, t in pre.features.items() if t == "categorical"]
    others = any(report.get(k) for k in _OTHER_EVENTS) or any(
        r.get("oov") or r.get("missing") for c, r in report.get("oov", {}).items() if c not in categorical)
    missing = {c: _as_str(whole[c]).isna().to_numpy() for c in categorical   # once per batch, when any
               if report.get("oov", {}).get(c, {}).get("missing")}
    try:   # one table for the batch (non-finite predictions: request by request below)
        records = _records(prediction_table(loaded, outputs, whole.index, source))
    except CheckpointError:
        records = None
    results: list = []
    start = 0
    for part in parts:
        n = len(part)
        if records is not None:
            mine = records[start:start + n]
        else:
            try:
                mine = _records(prediction_table(loaded, {t: v[start:start + n] for t, v in outputs.items()},
                                                 range(n), source))
            except CheckpointError as exc:
                results.append(exc)
                start += n
                continue
        if len(parts) == 1:
            own = report
        elif others:
            own = prepare_rows(loaded, rows_table([part], schema), source)[1]
        else:
            own = {}
            for c in categorical:
                empty = int(missing[c][start:start + n].sum()) if c in missing else 0
                unknown = int((ids[c][start:start + n] == 0).sum()) - empty
                own.setdefault("oov", {})[c] = {"rows": n, "oov": unknown, "missing": empty}
        results.append(Prediction(mine, own))
        start += n
    return results


# ------------------------------------------------------------------------------------------------
# The app
# ------------------------------------------------------------------------------------------------


@dataclass
class ServerState:
    """What :func:`build_server` loaded (``app.state.mtlframe``)."""

    checkpoint: str
    loaded: Any
    device: Any
    schema: RowSchema
    batcher: Batcher
    executor: ThreadPoolExecutor
    max_rows: int
    recommender: Any = None
    no_ranking: str | None = None
    started: float = field(default_factory=time.time)


def build_server(checkpoint: str | Path, *, accelerator: str = "cpu", max_batch_size: int = 64,
                 batch_timeout: float = 0.005, max_rows: int = MAX_ROWS, data_path: str | Path | None = None):
    """A FastAPI app serving ``checkpoint`` (routes in the module docstring); the model is loaded
    once, here, and a ranking checkpoint's data and catalogue too.

    Args:
        checkpoint: an mtlframe checkpoint (``runs/<run>/checkpoints/best.ckpt``).
        accelerator: ``cpu`` (default), ``cuda``/``gpu`` (an error without a CUDA GPU), ``auto``.
        max_batch_size: most ``/predict`` requests per forward pass (>= 1; 1 disables batching).
        batch_timeout: seconds a request waits for others to join its batch (>= 0).
        max_rows: most rows (``/predict``) or users (``/recommend``) per request; more -> 413.
        data_path: where a ranking checkpoint's training data is now (as ``mtlframe recommend``).

    Returns the app (run it with uvicorn, or :func:`serve`); ``app.state.mtlframe`` is its
    :class:`ServerState` (``.batcher.stats`` counts the model calls).

    Raises:
        MTLFrameError: FastAPI missing; a bad option (named); no GPU for ``cuda``.
        CheckpointError: the checkpoint is missing or not mtlframe's.
    """
    _need_serve_extra()
    check_options(accelerator=accelerator, max_batch_size=max_batch_size, batch_timeout=batch_timeout,
                  max_rows=max_rows)
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    from mtlframe.errors import CheckpointError, DataError
    from mtlframe.run import _quiet_lightning, load_checkpoint, predict_warnings, resolve_device

    _quiet_lightning()
    device = resolve_device("cuda" if accelerator == "gpu" else accelerator)
    loaded = load_checkpoint(checkpoint)
    loaded.model.to(device).eval()
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mtlframe-model")
    schema = RowSchema.of(loaded.preprocessor)
    batcher = Batcher(lambda parts: predict_batch(loaded, parts, schema), max_batch_size, batch_timeout, executor)
    state = ServerState(str(checkpoint), loaded, device, schema, batcher, executor,
                        max_rows)
    if getattr(loaded.recipe.config, "ranking", None) is not None:
        from mtlframe.recommend import Recommender

        state.recommender = Recommender(checkpoint, loaded, device=device, data_path=data_path)
    else:
        state.no_ranking = (f"{checkpoint} was trained from a recipe without a ranking: section, so it has no "
                            "user and item sides to rank a catalogue with; /recommend needs a ranking checkpoint "
                            "(see docs/ranking.md).")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await batcher.stop()
        executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="mtlframe", description=f"checkpoint {checkpoint}", docs_url=None, redoc_url=None,
                  lifespan=lifespan)
    app.state.mtlframe = state

    @app.exception_handler(RequestError)
    async def _bad_request(request, exc: RequestError):
        return JSONResponse({"error": {"field": exc.field, "reason": exc.reason}}, status_code=exc.status)

    @app.exception_handler(Exception)
    async def _server_error(request, exc: Exception):
        return JSONResponse({"error": {"field": None, "reason": f"the server failed: {type(exc).__name__}: {exc}"}},
                            status_code=500)

    async def body_of(request: Request) -> Any:
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > MAX_BODY:
            raise RequestError(413, "body", f"the body is {int(size):,} bytes; this server reads at most {MAX_BODY:,}.")
        body = bytearray()
        async for chunk in request.stream():   # no Content-Length (chunked): stop at the limit, not at the end
            body += chunk
            if len(body) > MAX_BODY:
                raise RequestError(413, "body", f"the body is over {MAX_BODY:,} bytes; this server reads at most "
                                                f"{MAX_BODY:,}.")
        return parse_json(bytes(body))

    @app.get("/health")
    async def health():
        s = batcher.stats
        return {"status": "ok", "checkpoint": state.checkpoint, "device": str(device),
                "tasks": {t.name: t.type for t in loaded.tasks}, "columns": state.schema.required,
                "recommend": state.recommender is not None, "max_batch_size": batcher.max_batch_size,
                "batch_timeout": batcher.timeout, "max_rows": max_rows,
                "batches": {"calls": s.calls, "requests": s.requests, "rows": s.rows, "largest": s.largest},
                "uptime_s": round(time.time() - state.started, 3)}

    @app.post("/predict")
    async def predict(request: Request):
        rows = check_rows(await body_of(request), schema, max_rows)
        try:
            answer = await batcher.submit(rows, len(rows))
        except DataError as exc:
            raise _data_error(exc, state.schema) from None
        except CheckpointError as exc:   # the weights, not the request: a server error
            return JSONResponse({"error": {"field": None, "reason": str(exc)}}, status_code=500)
        records, report = answer.records, answer.report
        oov = {c: r["oov"] for c, r in report.get("oov", {}).items() if r.get("oov")}
        return {"predictions": records, "warnings": predict_warnings(report), "oov": oov}

    @app.post("/recommend")
    async def recommend(request: Request):
        rec = state.recommender
        if rec is None:
            return JSONResponse({"error": {"field": None, "reason": state.no_ranking}}, status_code=404)
        users, k, one = recommend_request(await body_of(request), max_rows, len(rec.item_raw))
        import numpy as np

        keys = rec.user_keys(users)
        _, first = np.unique(keys.astype(str), return_index=True)
        first = np.sort(first)
        raw = np.asarray(users, dtype=object)[first]
        try:
            result = await asyncio.get_running_loop().run_in_executor(
                executor, lambda: rec.rank(raw, keys[first], k, source="the request"))
        except DataError as exc:   # unknown users under ranking.unknown_users: error
            raise RequestError(404, "body.user", str(exc)) from None
        out = []
        frame = result.frame
        for user, part in frame.groupby("user", sort=False):
            items = [{c: _jsonable(v) for c, v in zip(part.columns[1:], row)}
                     for row in part.drop(columns="user").itertuples(index=False)]
            out.append({"user": _jsonable(user), "source": items[0]["source"] if items else "model",
                        "items": [{c: v for c, v in it.items() if c != "source"} for it in items]})
        return {"k": k, "results": out[0] if one and out else out}

    return app


def check_options(*, accelerator: str = "cpu", max_batch_size: int = 64, batch_timeout: float = 0.005,
                  max_rows: int = MAX_ROWS, port: int = 8000, workers: int = 1) -> None:
    """Refuse a bad ``serve`` option, naming the flag.

    Raises:
        MTLFrameError: an unknown accelerator, ``max_batch_size``/``max_rows``/``workers`` < 1,
            ``batch_timeout`` < 0 or not finite, ``port`` outside 0..65535.
    """
    if accelerator not in ACCELERATORS:
        raise MTLFrameError(f"--accelerator {accelerator!r} is not one of {', '.join(ACCELERATORS)}.")
    for flag, value in (("--max-batch-size", max_batch_size), ("--max-rows", max_rows), ("--workers", workers)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise MTLFrameError(f"{flag} must be an integer >= 1, got {value!r}.")
    if not isinstance(batch_timeout, (int, float)) or not math.isfinite(batch_timeout) or batch_timeout < 0:
        raise MTLFrameError(f"--batch-timeout must be a number of seconds >= 0, got {batch_timeout!r}.")
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise MTLFrameError(f"--port must be an integer from 0 to 65535, got {port!r}.")


_ENV = "MTLFRAME_SERVE_OPTIONS"


def _app_from_env():
    """The app of a uvicorn worker process (``--workers`` > 1): options from the environment."""
    return build_server(**json.loads(os.environ[_ENV]))


def _check_port(host: str, port: int) -> None:
    """Refuse a ``host:port`` another process listens on before the model is loaded (uvicorn would
    say so only after, and exit with status 3).

    Raises:
        MTLFrameError: the address is in use.
    """
    import errno
    import socket

    with contextlib.suppress(OSError), socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as uvicorn binds: TIME_WAIT is no conflict
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise MTLFrameError(f"--port {port}: {host}:{port} is already in use (another server?); pass another "
                                    "--port, or stop the process that listens there.") from None
            raise   # another problem (a host not of this machine): uvicorn's own message, suppressed here


def serve(checkpoint: str | Path, *, host: str = "127.0.0.1", port: int = 8000, accelerator: str = "cpu",
          max_batch_size: int = 64, batch_timeout: float = 0.005, workers: int = 1, max_rows: int = MAX_ROWS,
          data_path: str | Path | None = None, log_level: str = "info") -> None:
    """Build the server (:func:`build_server`) and run it on uvicorn until interrupted (Ctrl+C).

    With ``workers`` > 1, uvicorn starts that many processes on the port, each loading the model.

    Raises:
        MTLFrameError: as :func:`build_server`; a bad ``--port`` / ``--workers``; the port in use.
    """
    _need_serve_extra()
    check_options(accelerator=accelerator, max_batch_size=max_batch_size, batch_timeout=batch_timeout,
                  max_rows=max_rows, port=port, workers=workers)
    _check_port(host, port)
    import uvicorn

    options = dict(checkpoint=str(checkpoint), accelerator=accelerator, max_batch_size=max_batch_size,
                   batch_timeout=batch_timeout, max_rows=max_rows,
                   data_path=str(data_path) if data_path is not None else None)
    if workers == 1:
        uvicorn.run(build_server(**options), host=host, port=port, log_level=log_level)
        return
    build_server(**options)   # refuse a bad checkpoint here, once, before the workers start
    os.environ[_ENV] = json.dumps(options)
    uvicorn.run("mtlframe.serve:_app_from_env", factory=True, host=host, port=port, workers=workers,
                log_level=log_level)
