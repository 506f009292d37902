"""Frozen-mode encoding throughput (cold cache) and the cost of a second run (warm cache).

Embeds clothing-review texts (title and review joined by ". ") with a fresh cache directory, then does
it again with a new encoder instance (as a second run would) and checks that the second pass
loaded no transformer and ran no forward pass. Prints one JSON line per measurement.

    HF_HUB_OFFLINE=1 python plugins/mtlframe-text/benchmarks/throughput.py --n 2000
    HF_HUB_OFFLINE=1 python plugins/mtlframe-text/benchmarks/throughput.py --n 2000 --encode-dtype bfloat16
    # token states of layer 4 (pooling: attention), as recipes/clothing_text_minilm.yaml:
    HF_HUB_OFFLINE=1 python plugins/mtlframe-text/benchmarks/throughput.py --n 2000 --encode-dtype bfloat16 \
        --pooling attention --layer 4
    # the second-run cost over the whole dataset, from the cache a training run filled:
    HF_HUB_OFFLINE=1 python plugins/mtlframe-text/benchmarks/throughput.py --n 0 --cache-dir default
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--n", type=int, default=2000, help="texts to embed (0 = all rows)")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--encode-dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--segments", default="text", choices=["text", "sentences"])
    parser.add_argument("--pooling", default="mean", choices=["mean", "cls", "attention"])
    parser.add_argument("--layer", type=int, default=-1)
    parser.add_argument("--cache-dir", default=None,
                        help="'default' = the user cache ($MTLFRAME_CACHE/text); else a fresh temp dir")
    args = parser.parse_args()

    from mtlframe.datasets.clothing_reviews import ClothingReviews
    from mtlframe_text import models
    from mtlframe_text.encoder import TextEncoder

    frame = ClothingReviews().load().frame
    cols = {c: frame[c].fillna("").astype(str).to_numpy(dtype=object) for c in ("title", "review_text")}
    if args.n:
        cols = {c: v[: args.n] for c, v in cols.items()}
    cache_dir = None if args.cache_dir == "default" else (args.cache_dir or tempfile.mkdtemp(prefix="textcache-"))

    def encoder() -> TextEncoder:
        return TextEncoder(["title", "review_text"], model=args.model, segments=args.segments,
                           max_length=args.max_length, batch_size=args.batch_size, dim=None,
                           pooling=args.pooling, layer=args.layer,
                           encode_dtype=args.encode_dtype, cache_dir=cache_dir, progress=False,
                           fill_empty="")

    common = {"model": args.model, "rows": len(cols["title"]), "segments": args.segments,
              "pooling": args.pooling, "layer": args.layer,
              "max_length": args.max_length,
              "batch_size": args.batch_size, "encode_dtype": args.encode_dtype, "threads": torch.get_num_threads()}
    start = time.perf_counter()
    first = encoder()
    out1 = first.featurize(cols)
    total = time.perf_counter() - start
    s = first.last_stats
    print(json.dumps({**common, "pass": "first", "unique_texts": s["texts"], "encoded": s["encoded"],
                      "cache_hits": s["cache_hits"], "seconds_total": round(total, 2),
                      "seconds_embed": round(s["seconds"], 2),
                      "texts_per_s": round(s["encoded"] / s["seconds"], 1) if s["encoded"] else None}), flush=True)

    loads = [0]
    real = models.load_model
    models.load_model = lambda resolved: (loads.__setitem__(0, loads[0] + 1), real(resolved))[1]
    start = time.perf_counter()
    second = encoder()
    out2 = second.featurize(cols)
    total = time.perf_counter() - start
    models.load_model = real
    s = second.last_stats
    if args.pooling == "attention":   # every row's token states, as the model gathers them
        same = bool(torch.equal(second._gather_tokens(out2[second.key])[0], first._gather_tokens(out1[first.key])[0]))
    else:
        same = bool(torch.equal(second.table[out2[second.key]], first.table[out1[first.key]]))
    print(json.dumps({**common, "pass": "second", "unique_texts": s["texts"], "encoded": s["encoded"],
                      "cache_hits": s["cache_hits"], "transformer_loads": loads[0],
                      "seconds_total": round(total, 3), "identical_embeddings": same}), flush=True)
    if s["encoded"] or loads[0]:
        raise SystemExit("the second pass was not a pure cache hit")


if __name__ == "__main__":
    main()
