"""mtlframe-example: the plugin template for mtlframe, adding the ``log-numeric`` encoder.

Install it next to mtlframe and name the encoder in a recipe::

    pip install mtlframe-example
    mtlframe plugins --kind encoder       # lists log-numeric, provided by mtlframe-example

    model:
      encoders:
        - {name: log-numeric, features: [capital_gain, capital_loss], dim: 8}

Importing this package is cheap: the encoder module (and torch) loads when a recipe uses it.
"""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
