"""Read a folder of Parquet files with :class:`ParquetStream` from two gloo processes, each with
two data-loader workers, for two epochs; used by ``tests/test_streaming.py``::

    python tests/stream_ddp_run.py DATA_DIR OUT.json

Training epochs (``drop_uneven=True``) all-reduce once per batch, as DDP's backward does, so a
process with more batches than the other would wait forever; an evaluation pass
(``drop_uneven=False``) follows. Rank zero writes ``{"train": [[ids of epoch 0], [ids of epoch 1]],
"steps": [[rank 0's, rank 1's] per epoch], "eval": [ids]}``.
"""
from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mtlframe.streaming import ParquetStream


def _run(rank: int, data: str, out: str, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    # batch 25: uncut shares (26 + 26 | 26 + 25 rows) would give 4 steps on rank 0 and 3 on rank 1
    train = ParquetStream(data, columns=["id"], batch_size=25, shuffle=True, buffer_rows=12, rank=rank,
                          world_size=2, drop_uneven=os.environ.get("STREAM_DROP", "1") == "1")
    loader = torch.utils.data.DataLoader(train, batch_size=None, num_workers=2, persistent_workers=True)
    result: dict = {"train": [], "steps": []}
    for epoch in range(2):
        train.set_epoch(epoch)
        ids, steps = [], 0
        for batch in loader:
            dist.all_reduce(torch.ones(1))        # what each DDP step does: every process must join
            ids += batch["id"].tolist()
            steps += 1
        gathered: list = [None, None]
        dist.all_gather_object(gathered, (ids, steps))
        result["train"].append([i for part, _ in gathered for i in part])
        result["steps"].append([s for _, s in gathered])
    evaluation = ParquetStream(data, columns=["id"], batch_size=8, rank=rank, world_size=2)
    ids = [i for b in torch.utils.data.DataLoader(evaluation, batch_size=None, num_workers=2) for i in b["id"].tolist()]
    gathered = [None, None]
    dist.all_gather_object(gathered, ids)
    result["eval"] = [i for part in gathered for i in part]
    if rank == 0:
        with open(out, "w") as f:
            json.dump(result, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    # fork: the children start with torch already imported (spawn would import it twice more)
    mp.start_processes(_run, args=(sys.argv[1], sys.argv[2], free), nprocs=2, start_method="fork")
