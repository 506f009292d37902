"""mtlframe plugin module of ``mtlframe-text`` (entry point ``text`` in the ``mtlframe`` group).

Hook implementations only; the factory is a lazy import path, so ``mtlframe plugins`` and
``mtlframe recipe validate`` do not import transformers.
"""
from __future__ import annotations

from mtlframe import ComponentSpec, hookimpl

DISTRIBUTION = "mtlframe-text"


@hookimpl
def mtlframe_encoders():
    return [
        ComponentSpec("text", "mtlframe_text.encoder:TextEncoder",
                      "pretrained transformer (BERT, MiniLM, E5, BGE...) embeddings of text, pooled (mean, cls) "
                      "or by learned attention over token states of any layer; "
                      "frozen with an on-disk cache, or fine-tuned (last N layers / LoRA)"),
    ]
