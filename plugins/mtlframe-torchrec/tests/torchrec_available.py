"""Skip the plugin's tests where torchrec / FBGEMM cannot be imported, unless
``MTLFRAME_REQUIRE_TORCHREC=1`` (CI, where the install step exists): then their absence fails."""
from __future__ import annotations

import os
import warnings

import pytest
import torch


def torchrec_or_skip() -> None:
    """Import torchrec; skip the calling module when it (or FBGEMM for this torch) is missing."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import fbgemm_gpu  # noqa: F401
            import torchrec  # noqa: F401
    except (ImportError, OSError) as exc:  # OSError: FBGEMM built for another torch (undefined symbol)
        msg = f"torchrec / fbgemm-gpu-cpu unavailable for torch {torch.__version__}: {type(exc).__name__}: {exc}"
        if os.environ.get("MTLFRAME_REQUIRE_TORCHREC") == "1":
            pytest.fail(f"MTLFRAME_REQUIRE_TORCHREC=1 but {msg}", pytrace=False)
        pytest.skip(msg, allow_module_level=True)
