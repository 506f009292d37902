"""Count the device -> host synchronisations of training steps, on any device (CPU included).

On a GPU, ``torch.cuda.set_sync_debug_mode("warn")`` reports every synchronising CUDA call. That
cannot run on a CPU, where tests run, so :class:`HostSyncCounter` records the operations that
*would* synchronise on an accelerator, whatever the device:

* reading a tensor's value on the host: ``Tensor.item``, ``bool(t)`` / ``if t``, ``float(t)``,
  ``int(t)`` (all reach ``aten::_local_scalar_dense``), ``Tensor.tolist``, ``Tensor.cpu``;
* the operators whose output size depends on the data (the host must wait for it):
  ``nonzero``, ``masked_select``, boolean-mask indexing, ``unique``, ``repeat_interleave``
  without ``output_size``, ``equal`` and ``is_nonzero``;
* copies between the host and an accelerator that wait for it (device -> host; host -> device
  without ``non_blocking``): seen on a GPU only, since on a CPU-only run there is no such copy.

Each event is attributed to the innermost Python frame outside torch's tensor glue and to its
owner (``mtlframe``, ``pytorch_lightning``, ``torchmetrics``, ``torch`` or ``other``).

Convention for our code: a value that lives on the host by design (a CPU generator's draw, a
batch still on the host, a counter) is read with ``.numpy()`` or kept as a Python number, never
with ``.item()``/``.tolist()``: ``.numpy()`` raises on a device tensor instead of synchronising,
so it cannot hide a sync, and the counter does not count it. ``torch.optim`` keeps its step
counters on the CPU (unless ``capturable``/``fused``) and reads them with ``.item()``: events owned
by ``torch`` are recorded but are not device syncs for the optimizers' own state.

Example::

    with HostSyncCounter() as syncs:
        loss = model(x).sum()
        if loss > 0:        # recorded: bool of a tensor
            ...
    syncs.events[0].owner   # "other" (this file), syncs.events[0].op == "aten._local_scalar_dense"
"""
from __future__ import annotations

import importlib.util
import os
import traceback
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_TORCH_DIR = os.path.dirname(torch.__file__)
_GLUE = (os.path.join(_TORCH_DIR, "_tensor.py"), os.path.join(_TORCH_DIR, "utils", "_python_dispatch.py"),
         os.path.join(_TORCH_DIR, "_ops.py"), os.path.join(_TORCH_DIR, "overrides.py"),
         os.path.join(_TORCH_DIR, "utils", "_device.py"), os.path.join(_TORCH_DIR, "_tensor_str.py"),
         os.path.join(_TORCH_DIR, "_compile.py"))
_DYNAMO = os.path.join(_TORCH_DIR, "_dynamo") + os.sep


def _package_dir(name: str) -> str | None:
    """The installed folder of package ``name`` (with a trailing separator), or ``None``."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.abspath(list(spec.submodule_search_locations)[0]) + os.sep


#: ``(owner, package folder)``: a frame belongs to the package whose installed folder holds its file
#: (not to any folder that happens to be named like it, such as a checkout called ``mtlframe``)
_OWNERS = tuple((owner, folder) for owner, folder in (
    (owner, _package_dir(pkg)) for owner, pkg in (
        ("mtlframe", "mtlframe"), ("pytorch_lightning", "pytorch_lightning"),
        ("pytorch_lightning", "lightning_fabric"), ("torchmetrics", "torchmetrics"))) if folder)


def owner_of(filename: str) -> str:
    """``mtlframe``, ``pytorch_lightning``, ``torchmetrics``, ``torch`` or ``other``: the package
    whose installed folder holds ``filename``."""
    fn = os.path.abspath(filename)
    owner = next((name for name, folder in _OWNERS if fn.startswith(folder)), None)
    if owner is None:
        owner = "torch" if fn.startswith(_TORCH_DIR + os.sep) else "other"
    return owner

#: aten operators that read a value on the host or wait for a data-dependent output size
SYNC_OPS = frozenset({
    "aten._local_scalar_dense.default", "aten.nonzero.default", "aten.masked_select.default",
    "aten.is_nonzero.default", "aten.equal.default", "aten._unique2.default", "aten.unique_dim.default",
    "aten.unique_consecutive.default", "aten._unique.default", "aten.nonzero_static.default",
})


@dataclass(frozen=True)
class SyncEvent:
    """One host synchronisation: ``op`` (aten operator or Python method), ``where``
    (``file:line`` of the innermost caller outside torch's glue), its ``owner`` and the ``step``
    (the counter's :attr:`HostSyncCounter.step` when it happened; ``None`` outside steps)."""

    op: str
    where: str
    owner: str
    step: int | None


def _origin() -> tuple[str, str]:
    here = os.path.abspath(__file__)
    for frame in reversed(traceback.extract_stack()[:-2]):
        fn = os.path.abspath(frame.filename)
        if fn == here or fn in _GLUE or fn.startswith(_DYNAMO):
            continue
        return f"{frame.filename}:{frame.lineno}", owner_of(fn)
    return "?", "other"


@dataclass
class HostSyncCounter(TorchDispatchMode):
    """Context manager recording :class:`SyncEvent` s (see the module docstring).

    Set :attr:`step` to label the events (e.g. the global step from a callback); ``None`` while
    outside a step. :meth:`by_step` groups the events.
    """

    events: list[SyncEvent] = field(default_factory=list)
    step: int | None = None

    def __post_init__(self) -> None:
        super().__init__()

    def _record(self, op: str) -> None:
        where, owner = _origin()
        self.events.append(SyncEvent(op, where, owner, self.step))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        name = str(func)
        if name in SYNC_OPS:
            self._record(f"aten.{name.split('.', 1)[1]}" if name.startswith("aten.") else name)
        elif name == "aten.index.Tensor" and any(
                i is not None and i.dtype == torch.bool for i in (args[1] if len(args) > 1 else [])):
            self._record("aten.index.Tensor(bool mask)")
        elif name in ("aten._to_copy.default", "aten.copy_.default") and self._blocking_transfer(name, args, kwargs):
            self._record(f"{name} (blocking host <-> device copy)")
        elif name.startswith("aten.repeat_interleave") and kwargs.get("output_size") is None and (
                len(args) < 4 or args[3] is None) and torch.is_tensor(args[0]) and torch.is_tensor(
                    args[1] if len(args) > 1 else kwargs.get("repeats")):
            self._record(name)
        return func(*args, **kwargs)

    @staticmethod
    def _blocking_transfer(name: str, args: tuple, kwargs: dict) -> bool:
        """A copy between the host and an accelerator that waits for the device: device -> host
        always, host -> device unless ``non_blocking`` (never true on a CPU-only run)."""
        if name == "aten._to_copy.default":
            src, dst = args[0].device, kwargs.get("device") or args[0].device
            non_blocking = bool(kwargs.get("non_blocking", False))
        else:
            dst = args[0].device
            src = getattr(args[1], "device", dst) if len(args) > 1 else dst
            non_blocking = bool(args[2]) if len(args) > 2 else bool(kwargs.get("non_blocking", False))
        src, dst = torch.device(src), torch.device(dst)
        if src.type == dst.type or "meta" in (src.type, dst.type):
            return False
        return dst.type == "cpu" or not non_blocking

    def __enter__(self) -> "HostSyncCounter":
        counter = self
        self._saved = {name: getattr(torch.Tensor, name) for name in ("tolist", "cpu")}

        def wrap(name: str, original):  # noqa: ANN001, ANN202
            def method(self, *a, **k):  # noqa: ANN001, ANN202
                counter._record(f"Tensor.{name}")
                return original(self, *a, **k)
            return method

        for name, original in self._saved.items():
            setattr(torch.Tensor, name, wrap(name, original))
        return super().__enter__()

    def __exit__(self, *exc) -> None:  # noqa: ANN002
        try:
            super().__exit__(*exc)
        finally:
            for name, original in self._saved.items():
                setattr(torch.Tensor, name, original)

    def by_step(self, owners: tuple[str, ...] = ("mtlframe", "pytorch_lightning", "torchmetrics")
                ) -> dict[int | None, list[SyncEvent]]:
        """``{step: events}`` of the events owned by ``owners``."""
        out: dict[int | None, list[SyncEvent]] = {}
        for e in self.events:
            if e.owner in owners:
                out.setdefault(e.step, []).append(e)
        return out
