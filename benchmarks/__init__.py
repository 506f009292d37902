"""mtlframe's performance harness (not part of the installed package).

Run ``python -m benchmarks.run --help``. It trains the same MMoE on UCI Adult with a hand-written
PyTorch loop (the reference), mtlframe's recipe path, torch-rechub and DeepCTR-Torch, alternating
the systems in one process, then measures the data path on synthetic tables of growing size, and
writes ``results.json``, a bar chart and ``docs/performance.md``.
"""
