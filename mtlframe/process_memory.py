"""Process-wide memory tuning (glibc's allocator), in one place.

The data module calls these around setup: :func:`release_freed_memory` after large temporaries
are freed, :func:`pin_mmap_threshold` before evaluation temporaries start to come and go. Both
are no-ops off glibc. They change the whole process, which is why they live here, named, rather
than inside the data path.
"""
from __future__ import annotations


def release_freed_memory(collect: bool = True) -> None:
    """Collect unreachable objects, then return freed heap pages to the OS (glibc ``malloc_trim``;
    the collection only elsewhere).

    Called after setup steps that free large temporaries (the loaded frame, preprocessed columns;
    pandas objects can keep them in reference cycles until a collection), so the process's
    resident size follows what it holds rather than its high-water mark. ``collect=False`` skips
    the collection (for frees that need none, one column at a time).
    """
    import ctypes
    import gc
    import sys
    if collect:
        gc.collect()
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


#: allocations of at least this many bytes get their own ``mmap`` (see :func:`pin_mmap_threshold`)
MMAP_THRESHOLD = 2 << 20


def pin_mmap_threshold(nbytes: int = MMAP_THRESHOLD) -> bool:
    """Serve every heap allocation of ``nbytes`` or more with its own ``mmap`` (glibc ``mallopt``).

    glibc raises its mmap threshold after a large block is freed (up to 32 MB), after which
    per-batch temporaries of a few MB (evaluation batches of 4,096 rows: the embedding output
    ``[4096, F, d]``) come from the heap, interleaved with small long-lived allocations (the
    exact-AUC state grows every batch), and the heap grows by about one temporary per batch:
    +600 MB over the 1M-row test pass of the 10M-row synthetic benchmark. A fixed threshold hands
    such blocks back to the OS when freed. Training batches' temporaries (below 2 MB at batch
    1024 in the bundled recipes) keep using the heap.

    Returns ``False`` (and changes nothing) off glibc, or when the ``MALLOC_MMAP_THRESHOLD_``
    environment variable already sets the threshold.
    """
    import ctypes
    import os
    import sys
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(-3, int(nbytes)))   # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc
        return False
