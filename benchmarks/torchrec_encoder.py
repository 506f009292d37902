"""TorchRec's sharded tables vs the built-in ``embedding`` encoder, two processes.

The same model both ways: ``K`` categorical features (``V`` ids each, Zipf(1.1) ids, width ``d``)
-> encoder -> an MLP (``K d -> 64 -> 1``) -> BCE on a random label; SGD (lr 0.05) on everything.
Each of two processes trains on its own batches of ``B`` rows (``torch.multiprocessing``, gloo on
CPU; NCCL on two GPUs in the GPU section). Variants:

* ``embedding``: the built-in encoder under PyTorch DDP, every table whole in every process, its
  dense gradient all-reduced at every step;
* ``embedding-sparse``: the same with ``sparse: true`` (sparse gradients, DDP all-reduces the rows
  of the batch);
* ``torchrec-table-wise`` / ``torchrec-column-wise``: ``torchrec-embedding`` sharded by
  ``DistributedModelParallel`` (each process holds its shards; lookups exchanged with all-to-all;
  fused SGD in the backward pass), the MLP under DDP.

Reported per variant: samples/s over both processes (``2 B steps / wall seconds`` of the timed
steps, after ``--warmup`` steps), the processes' CPU seconds per 1,000 samples (what to compare on
a shared machine), and per process the peak RSS and the RSS the model added: at its peak (building
included) and after the timed steps (steady state), both minus the RSS before the model was
built, libraries imported (tables, gradients, optimizer state, communication buffers). Run::

    OMP_NUM_THREADS=1 python -m benchmarks.torchrec_encoder                 # CPU, defaults below
    python -m benchmarks.torchrec_encoder --vocab 1000000 --features 8 --dim 32 --output out.json

The GPU section runs when two CUDA devices and a CUDA build of FBGEMM (``fbgemm-gpu``) are present,
and prints why not otherwise.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import socket
import sys
import time

import torch

VARIANTS = ("embedding", "embedding-sparse", "torchrec-table-wise", "torchrec-column-wise")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batches(args, rank: int, n: int) -> list[dict]:
    g = torch.Generator().manual_seed(1000 + rank)
    # Zipf-like ids: the top of the vocabulary takes most lookups, as in real id features
    weights = 1.0 / torch.arange(1, args.vocab + 1, dtype=torch.float64) ** 1.1
    out = []
    for _ in range(n):
        ids = torch.multinomial(weights, args.batch * args.features, replacement=True, generator=g)
        out.append({"ids": ids.view(args.batch, args.features), "y": torch.randint(0, 2, (args.batch,), generator=g).float()})
    return out


def _worker(rank: int, args, variant: str, port: int, device_type: str, queue) -> None:
    import torch.distributed as dist
    from torch import nn

    from benchmarks.common import max_rss_bytes, rss_bytes
    from mtlframe.features import FeatureInfo

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(args.threads)
    cuda = device_type == "cuda"
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=2)
    feats = [f"cat_{j}" for j in range(args.features)]
    info = {f: FeatureInfo(f, "categorical", args.vocab) for f in feats}
    batches = _batches(args, rank, args.warmup + args.steps)
    if variant.startswith("torchrec"):  # the libraries' own memory is not the model's
        from mtlframe_torchrec.encoder import import_torchrec

        import_torchrec()
        for mod in ("torchrec.distributed.model_parallel", "torchrec.distributed.planner"):
            importlib.import_module(mod)   # not in the bench extra: installed with --no-deps (docs/torchrec.md)
    before = rss_bytes()
    torch.manual_seed(0)
    if variant.startswith("torchrec"):
        from pytorch_lightning.strategies import DDPStrategy

        from mtlframe_torchrec.encoder import TorchRecEmbeddingEncoder

        class _Strategy(DDPStrategy):  # what configure_distributed reads from Lightning's strategy
            @property
            def root_device(self):
                return device

        enc = TorchRecEmbeddingEncoder(feats, dim=args.dim, sharding=variant.split("-", 1)[1],
                                       min_partition=max(4, args.dim // 2), optimizer="sgd", lr=0.05,
                                       feature_info=info)
        enc.configure_distributed(_Strategy())       # DMP: this process keeps its shards only
        offsets = None
    else:
        from mtlframe.encoders.embedding import EmbeddingEncoder

        enc = EmbeddingEncoder(feats, dim=args.dim, sparse=variant.endswith("sparse"), feature_info=info).to(device)
        offsets = enc.fused.offsets.to(device)
    head = nn.Sequential(nn.Linear(args.features * args.dim, 64), nn.ReLU(), nn.Linear(64, 1)).to(device)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc, self.head = enc, head

        def forward(self, ids):
            return self.head(self.enc({enc.key: ids if offsets is None else ids + offsets})).squeeze(-1)

    # DDP over what the module tree holds: the sharded tables are outside it (their own all-to-all)
    ddp = nn.parallel.DistributedDataParallel(Net(), device_ids=[rank] if cuda else None)
    params = list(ddp.parameters())

    def forward(b):
        return ddp(b["ids"])
    opt = torch.optim.SGD(params, lr=0.05)
    loss_fn = nn.BCEWithLogitsLoss()
    batches = [{k: v.to(device) for k, v in b.items()} for b in batches]

    def step(b):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(forward(b), b["y"])
        loss.backward()
        opt.step()
        return loss

    for b in batches[:args.warmup]:
        step(b)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    dist.barrier()
    t0, c0 = time.perf_counter(), time.process_time()
    for b in batches[args.warmup:]:
        loss = step(b)
    loss.item()
    if cuda:
        torch.cuda.synchronize()
    dist.barrier()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak, now = max_rss_bytes(), rss_bytes()
    result = {"rank": rank, "wall_s": wall, "cpu_s": cpu, "peak_rss_mb": peak / 2**20, "base_rss_mb": before / 2**20,
              "model_rss_mb": (peak - before) / 2**20, "steady_rss_mb": (now - before) / 2**20,
              "gpu_peak_mb": torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None,
              "plan": getattr(enc, "plan", None)}
    queue.put(result)
    dist.barrier()
    dist.destroy_process_group()


def run_variant(args, variant: str, device_type: str) -> dict:
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, args, variant, port, device_type, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=args.timeout) for _ in procs]
    for p in procs:
        p.join(60)
    results.sort(key=lambda r: r["rank"])
    wall = max(r["wall_s"] for r in results)
    samples = 2 * args.batch * args.steps
    return {"variant": variant, "device": device_type, "samples_per_s": samples / wall,
            "cpu_s_per_1k_samples": 1000 * sum(r["cpu_s"] for r in results) / samples,
            "peak_rss_mb": [round(r["peak_rss_mb"], 1) for r in results],
            "model_rss_mb": [round(r["model_rss_mb"], 1) for r in results],
            "steady_rss_mb": [round(r["steady_rss_mb"], 1) for r in results],
            "rss_before_model_mb": [round(r["base_rss_mb"], 1) for r in results],
            "gpu_peak_mb": [r["gpu_peak_mb"] for r in results] if device_type == "cuda" else None,
            "plan": results[0]["plan"]}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--features", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--batch", type=int, default=2048, help="rows per process per step")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--output")
    args = ap.parse_args(argv)
    table_mb = args.features * args.vocab * args.dim * 4 / 2**20
    print(f"{args.features} tables x {args.vocab:,} ids x d={args.dim} ({table_mb:.0f} MiB of float32 weights), "
          f"batch {args.batch} per process, {args.steps} timed steps, 2 processes, {args.threads} thread(s) each; "
          f"torch {torch.__version__}, {os.cpu_count()} CPUs", flush=True)
    rows = []
    sections = [("cpu", None)]
    fbgemm_cuda = False
    if torch.cuda.is_available():
        try:
            importlib.import_module("fbgemm_gpu")
            fbgemm_cuda = hasattr(torch.ops.fbgemm, "dense_embedding_codegen_lookup_function") and \
                torch.cuda.device_count() >= 2
        except (ImportError, OSError):
            pass
    if torch.cuda.device_count() >= 2 and fbgemm_cuda:
        sections.append(("cuda", None))
    else:
        why = ("no CUDA device" if not torch.cuda.is_available() else
               f"{torch.cuda.device_count()} CUDA device(s): the section needs 2" if torch.cuda.device_count() < 2 else
               "no CUDA build of FBGEMM (pip install --no-deps fbgemm-gpu==1.N.0 matched to torch)")
        print(f"GPU section skipped: {why}", flush=True)
    for device_type, _ in sections:
        for variant in args.variants.split(","):
            r = run_variant(args, variant, device_type)
            rows.append(r)
            print(f"{device_type:4s} {variant:22s} {r['samples_per_s']:10,.0f} samples/s  "
                  f"{r['cpu_s_per_1k_samples']:6.3f} CPU s/1k samples  peak RSS/process {r['peak_rss_mb']} MiB  "
                  f"model RSS/process peak {r['model_rss_mb']} after {r['steady_rss_mb']} MiB"
                  + (f"  GPU peak {r['gpu_peak_mb']} MiB" if r["gpu_peak_mb"] else ""), flush=True)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as fh:
            json.dump({"args": vars(args), "rows": rows}, fh, indent=2)
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
