"""mtlframe: plugin-based multi-task learning for recommender systems.

Importing the package is cheap: torch and Lightning load only where training needs them.
"""
from mtlframe.errors import ArgumentError
from mtlframe.hookspecs import hookimpl
from mtlframe.registry import ComponentSpec, get_registry

__version__ = "0.1.0"
__all__ = ["ArgumentError", "ComponentSpec", "get_registry", "hookimpl", "__version__"]
