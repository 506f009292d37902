"""The plugin module of ``mtlframe-example``: the entry point ``example`` in the ``mtlframe`` group.

Hook implementations only. The factory is a lazy ``"module:Attr"`` string, so ``mtlframe
plugins`` lists the component without importing the encoder module (or torch); mtlframe imports
it when a recipe uses ``log-numeric`` (to validate its arguments, or to build it).
"""
from __future__ import annotations

from mtlframe import ComponentSpec, hookimpl

from mtlframe_example import __version__

#: used when the module is registered without its entry point (tests: ``use_plugins(plugin)``)
DISTRIBUTION = "mtlframe-example"
VERSION = __version__


@hookimpl
def mtlframe_encoders() -> list[ComponentSpec]:
    return [
        ComponentSpec("log-numeric", "mtlframe_example.log_numeric:LogNumericEncoder",
                      "signed log1p of heavy-tailed numeric features (counts, amounts) + linear projection"),
    ]
