"""Paged KV cache against contiguous max-length preallocation, measured in the same run.

Cases:
* wasted KV slots on ShareGPT-like and Alpaca-like length distributions (vLLM reports under
  4% for paged against 60-80% for max-length reservation);
* sequences that fit at once in a fixed memory budget (target: at least 2x contiguous);
* blocks used by parallel samples of one prompt, with prefix sharing against separate copies;
* generation throughput of the tiny decoder through each cache, same batch, same tokens;
* serving throughput with continuous batching on the same KV memory: the paged cache admits
  more requests per step (same tokens again).

CPU timings use one thread (a fixed thread count keeps the comparison fair on a shared
machine); memory numbers are exact counts.
"""

from __future__ import annotations

import time

import torch

from benchmarks.common import emit, parse_args
from capabilities.inference.kv_memory import (
    memory_report,
    prefix_sharing_blocks,
    sample_lengths,
    sequences_in_budget,
)
from capabilities.inference.serving import Request, serve
from capabilities.inference.tiny_decoder import TinyDecoder, TinyDecoderConfig, generate

BENCH = "paged_kv"


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    torch.set_num_threads(1)
    num = 300 if args.quick else 3000
    max_len, block = 2048, 16
    for workload in ("sharegpt", "alpaca"):
        lengths = sample_lengths(num, workload=workload, max_seq_len=max_len, seed=0)
        rep = memory_report(lengths, block_size=block, max_seq_len=max_len)
        emit(BENCH, f"waste {workload} n={num} block={block}", "% slots wasted", round(100 * rep.paged_waste, 3),
             round(100 * rep.contiguous_waste, 3), reference_name=f"contiguous max_seq_len={max_len}",
             higher_is_better=False, mean_len=float(lengths.mean()))
    lengths = sample_lengths(num, workload="sharegpt", max_seq_len=max_len, seed=1)
    rows = 16 if args.quick else 64
    paged, contig = sequences_in_budget(lengths, budget_tokens=rows * max_len, block_size=block, max_seq_len=max_len)
    emit(BENCH, f"sequences in budget of {rows * max_len} slots (sharegpt)", "sequences", paged, contig,
         reference_name=f"contiguous max_seq_len={max_len}")
    shared, unshared = prefix_sharing_blocks(512, 8, 256, block_size=block)
    emit(BENCH, "8 samples of a 512-token prompt, +256 tokens each", "blocks", shared, unshared,
         reference_name="paged without prefix sharing", higher_is_better=False)

    # Decode throughput: same model, same batch, same tokens; only the cache differs.
    torch.manual_seed(0)
    cfg = TinyDecoderConfig(vocab_size=256, d_model=128, num_heads=4, num_layers=4, d_ff=256, max_seq_len=512)
    model = TinyDecoder(cfg, seed=0)
    batch, new = (8, 32) if args.quick else (32, 128)
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 256, (int(n),), generator=gen).tolist()
               for n in torch.randint(16, 256, (batch,), generator=gen)]
    timings, outs = {}, {}
    for kind in ("paged", "contiguous"):
        cache = model.new_cache(kind, block_size=block, num_blocks=batch * cfg.max_seq_len // block, max_seqs=batch)
        t0 = time.perf_counter()
        outs[kind] = generate(model, cache, prompts, new)
        timings[kind] = time.perf_counter() - t0
    emit(BENCH, f"tiny decoder generate batch={batch} new={new}", "tokens/s", batch * new / timings["paged"],
         batch * new / timings["contiguous"], reference_name="contiguous cache, same model",
         identical_tokens=outs["paged"] == outs["contiguous"])

    # Serving on equal KV memory (rows * max_seq_len slots), continuous batching.
    cfg = TinyDecoderConfig(vocab_size=256, d_model=64, num_heads=4, num_layers=2, d_ff=128, max_seq_len=512)
    model = TinyDecoder(cfg, seed=0)
    n_req, rows = (32, 4) if args.quick else (128, 8)
    lengths = sample_lengths(n_req, workload="alpaca", max_seq_len=cfg.max_seq_len, seed=2)
    requests = []
    for n in lengths:
        p = max(1, int(n) // 3)
        requests.append(Request(tuple(torch.randint(0, 256, (p,), generator=gen).tolist()), max(1, int(n) - p)))
    stats, secs = {}, {}
    for kind in ("paged", "contiguous"):
        cache = model.new_cache(kind, block_size=block, num_blocks=rows * cfg.max_seq_len // block, max_seqs=rows)
        t0 = time.perf_counter()
        stats[kind] = serve(model, cache, requests)
        secs[kind] = time.perf_counter() - t0
    generated = sum(r.max_new_tokens for r in requests)
    same = stats["paged"].outputs == stats["contiguous"].outputs
    emit(BENCH, f"serve {n_req} alpaca-like requests on {rows}x{cfg.max_seq_len} KV slots", "tokens/s",
         generated / secs["paged"], generated / secs["contiguous"], reference_name="contiguous cache, same memory",
         identical_tokens=same, mean_batch_paged=stats["paged"].mean_batch,
         mean_batch_contiguous=stats["contiguous"].mean_batch)
    emit(BENCH, f"serve {n_req} alpaca-like requests on {rows}x{cfg.max_seq_len} KV slots", "forward steps",
         stats["paged"].steps, stats["contiguous"].steps, reference_name="contiguous cache, same memory",
         higher_is_better=False)


if __name__ == "__main__":
    main()
