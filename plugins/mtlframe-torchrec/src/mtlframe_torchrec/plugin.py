"""mtlframe plugin module of ``mtlframe-torchrec`` (entry point ``torchrec`` in the ``mtlframe`` group).

Hook implementations only; the factory is a lazy import path, so ``mtlframe plugins`` does not
import torchrec.
"""
from __future__ import annotations

from mtlframe import ComponentSpec, hookimpl

DISTRIBUTION = "mtlframe-torchrec"


@hookimpl
def mtlframe_encoders():
    return [
        ComponentSpec("torchrec-embedding", "mtlframe_torchrec.encoder:TorchRecEmbeddingEncoder",
                      "categorical embeddings in TorchRec's EmbeddingBagCollection (the `embedding` "
                      "encoder's output), tables sharded across processes (table-/row-/column-wise) "
                      "with fused row-wise optimizers"),
    ]
