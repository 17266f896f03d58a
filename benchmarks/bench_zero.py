"""ZeRO stages 1-3: model-state bytes per rank against the paper's formulas and against FSDP2.

One process group of 4 ranks trains an fp32 MLP with plain data parallel, our ZeRO 1/2/3,
torch's ZeroRedundancyOptimizer (stage 1) and FSDP2 ``fully_shard`` (stage 3), all in the same
run. Bytes are the largest rank's parameters + gradients + Adam state at the end of the last
backward pass. Lines: ours vs formula (ratio 1.0 = exactly the formula, below 1 = padding), and
ours vs torch's implementation of the same stage (ratio > 1 = we hold less).
"""

from __future__ import annotations

from benchmarks.common import emit, parse_args
from capabilities.training.launch import launch
from capabilities.training.workers import ZeroSpec, zero_worker
from capabilities.training.zero import zero_formula_bytes


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    world = 4
    # Widths with an odd size so that padding shows; the full run is a few million parameters.
    widths = [64, 255, 255, 16] if args.quick else [512, 1023, 1023, 1023, 64]
    outs = launch(zero_worker, world, ZeroSpec(widths=widths, steps=2, batch=8), timeout_s=300)
    p = outs[0]["num_params"]

    def total(method: str) -> int:
        return max(o[method]["memory"]["total"] for o in outs)

    for method, stage in (("dp", 0), ("zero1", 1), ("zero2", 2), ("zero3", 3)):
        formula = zero_formula_bytes(p, world, stage, element_size=4)["total"]
        emit("zero", f"{method} P={p} N={world} fp32 vs formula", "bytes/rank", total(method), formula,
             reference_name=f"ZeRO paper stage {stage}, fp32 Adam K=8", higher_is_better=False,
             max_param_diff_vs_dp=max(o[method]["diff"] for o in outs))
    for ours, theirs, name in (("zero1", "torch_zero1", "torch ZeroRedundancyOptimizer"),
                               ("zero3", "fsdp2", "FSDP2 fully_shard")):
        emit("zero", f"{ours} vs {theirs} P={p} N={world} fp32", "bytes/rank", total(ours), total(theirs),
             reference_name=name, higher_is_better=False,
             reference_max_param_diff_vs_dp=max(o[theirs]["diff"] for o in outs))


if __name__ == "__main__":
    main()
