"""Make ``src/`` importable when the plugin's tests run without installing it first
(``pytest plugins/mtlframe-example/tests`` from a checkout). An installed copy takes precedence."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("mtlframe_example") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
