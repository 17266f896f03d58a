"""MoE forward throughput: batched capacity dispatch against per-expert loops, same run.

Ours: route, scatter tokens into ``[E, capacity, d]`` buffers, one batched matmul for all
experts, gather back. References: a Python loop over experts that gathers each expert's
tokens (the common straightforward implementation), and running every expert on every token
and masking (dense). All three produce the same output (checked here). One CPU thread, so
the comparison is not distorted by other load on a shared machine.
"""

from __future__ import annotations

import torch

from benchmarks.common import best_of, emit, parse_args
from capabilities.inference.moe import MoELayer, dense_all_experts, per_expert_loop

BENCH = "moe"


def measure(experts: int, k: int, tokens: int, d: int, ff: int, repeats: int) -> None:
    """Emits our tokens/s against the per-expert loop and, when it fits in memory, the dense reference."""
    layer = MoELayer(d, ff, experts, k=k, capacity_factor=1.25, seed=0).eval()
    x = torch.randn(tokens, d, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = layer(x).y
        routing = layer.route(x)
        assert torch.allclose(ours, per_expert_loop(layer, x, routing), atol=1e-4)
        t_ours = best_of(lambda: layer(x), repeats)
        t_loop = best_of(lambda: per_expert_loop(layer, x, layer.route(x)), repeats)
        case = f"T={tokens} d={d} ff={ff} E={experts} k={k} cf=1.25"
        emit(BENCH, case, "tokens/s", tokens / t_ours, tokens / t_loop, reference_name="per-expert gather loop",
             dropped=routing.dropped)
        if experts * tokens * ff <= 2**26:  # the dense reference holds [E, T, ff] activations
            assert torch.allclose(ours, dense_all_experts(layer, x, routing), atol=1e-4)
            t_dense = best_of(lambda: dense_all_experts(layer, x, layer.route(x)), repeats)
            emit(BENCH, case, "tokens/s", tokens / t_ours, tokens / t_dense,
                 reference_name="dense: every expert on every token")


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    torch.set_num_threads(1)
    tokens, d, ff = (1024, 64, 128) if args.quick else (8192, 256, 512)
    repeats = 3 if args.quick else 5
    for experts, k in ((8, 1), (32, 1), (8, 2), (64, 2)):
        measure(experts, k, tokens, d, ff, repeats)


if __name__ == "__main__":
    main()
