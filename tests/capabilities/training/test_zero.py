"""ZeRO stages 1-3 against plain data parallel, ZeroRedundancyOptimizer and FSDP2 (one process group)."""

import math

import pytest
import torch
import torch._dynamo  # noqa: F401  (imported once here so forked workers do not each import it)
import torch.distributed as dist
from torch import nn

from capabilities.training import ZeroOptimizer, launch, zero_formula_bytes

KW = {"lr": 0.05, "betas": (0.9, 0.99), "eps": 1e-8}
STEPS = 4


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    # 5*7+7 = 42 and 7*3+3 = 24 parameters: none of the four tensors divides by 4 or 5 evenly.
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()


def _data(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 * step + rank)
    return torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(6, 3, generator=g, dtype=torch.float64)


def _loss(m: nn.Module, rank: int, t: int) -> torch.Tensor:
    x, y = _data(rank, t)
    return ((m(x) - y) ** 2).mean()


def _diff(a, b) -> float:
    return max(float((x.detach() - y.detach()).abs().max()) for x, y in zip(a, b, strict=True))


def _all(rank: int, world: int) -> dict:
    out: dict = {}
    # Reference: plain data parallel, gradients all-reduced and averaged, full Adam.
    ref = _model()
    opt = torch.optim.Adam(ref.parameters(), **KW)
    for t in range(STEPS):
        opt.zero_grad()
        _loss(ref, rank, t).backward()
        for p in ref.parameters():
            dist.all_reduce(p.grad)
            p.grad /= world
        opt.step()
    ref_params = [p.detach().clone() for p in ref.parameters()]
    out["moved"] = _diff(ref_params, list(_model().parameters()))
    for stage in (1, 2, 3):
        m = _model()
        z = ZeroOptimizer(m, stage, "Adam", **KW)
        for t in range(STEPS):
            z.zero_grad()
            if t == 2:
                m.zero_grad()  # sets .grad to None: the optimizer must still see the new gradient
            _loss(m, rank, t).backward()
            z.step()
        out[stage] = {"diff": _diff(z.full_parameters(), ref_params), "memory": z.last_memory,
                      "released": [p.untyped_storage().nbytes() for p in m.parameters()]}
        z.close()
    # torch's own stage 1.
    from torch.distributed.optim import ZeroRedundancyOptimizer

    m = _model()
    zro = ZeroRedundancyOptimizer(m.parameters(), optimizer_class=torch.optim.Adam, **KW)
    for t in range(STEPS):
        zro.zero_grad()
        _loss(m, rank, t).backward()
        for p in m.parameters():
            dist.all_reduce(p.grad)
            p.grad /= world
        zro.step()
    out["torch_zero1"] = _diff(list(m.parameters()), ref_params)
    # FSDP2 (fully_shard) as stage 3: per-layer units plus the root, gloo on CPU.
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (world,))
    m = _model()
    for layer in m:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(m, mesh=mesh)
    fopt = torch.optim.Adam(m.parameters(), **KW)
    for t in range(STEPS):
        fopt.zero_grad()
        _loss(m, rank, t).backward()
        fopt.step()
    out["fsdp2"] = _diff([p.full_tensor() for p in m.parameters()], ref_params)
    # Errors.
    try:
        ZeroOptimizer(_model(), 4)
    except ValueError as exc:
        out["bad_stage"] = str(exc)
    return out


def _padded_elems(world: int, full: bool) -> int:
    sizes = [35, 7, 21, 3]
    return sum(math.ceil(n / world) * (world if full else 1) for n in sizes)


@pytest.mark.parametrize("world", [2, 3])
def test_zero_stages_equal_plain_dp_torch_zero1_and_fsdp2(world: int) -> None:
    outs = launch(_all, world, start_method="fork", timeout_s=120)
    for rank, o in enumerate(outs):
        assert o["moved"] > 1e-3  # the parameters did change, so equality means something
        for stage in (1, 2, 3):
            assert o[stage]["diff"] <= 1e-12, (rank, stage, o[stage]["diff"])
        assert o["torch_zero1"] <= 1e-12
        assert o["fsdp2"] <= 1e-12
        assert "stage must be one of (1, 2, 3)" in o["bad_stage"]
        # Stage 3 keeps no full parameter outside forward/backward.
        assert o[3]["released"] == [0, 0, 0, 0]
        # Bytes measured at the end of backward: exactly the formula's terms with each
        # parameter padded to a multiple of N elements (fp64: e = 8, Adam K = 16).
        full, shard = 8 * _padded_elems(world, True), 8 * _padded_elems(world, False)
        assert o[1]["memory"] == {"params": full, "grads": full, "optimizer": 2 * shard, "total": 2 * full + 2 * shard}
        assert o[2]["memory"] == {"params": full, "grads": shard, "optimizer": 2 * shard, "total": full + 3 * shard}
        assert o[3]["memory"] == {"params": shard, "grads": shard, "optimizer": 2 * shard, "total": 4 * shard}
    p = 66
    for stage in (1, 2, 3):
        formula = zero_formula_bytes(p, world, stage, element_size=8)["total"]
        measured = outs[0][stage]["memory"]["total"]
        assert formula <= measured <= formula + 4 * 8 * 4 * world  # padding: < N elements per tensor per kind


def test_formulas_reproduce_the_paper() -> None:
    # ZeRO paper, Figure 1: 7.5B parameters, 64 GPUs, mixed-precision Adam (K = 12).
    gb = [zero_formula_bytes(7.5e9, 64, s, element_size=2, k=12)["total"] / 1e9 for s in range(4)]
    assert gb[0] == pytest.approx(120.0)
    assert gb[1] == pytest.approx(31.4, abs=0.01)
    assert gb[2] == pytest.approx(16.6, abs=0.05)
    assert gb[3] == pytest.approx(1.88, abs=0.01)
    with pytest.raises(ValueError, match="stage must be 0, 1, 2 or 3"):
        zero_formula_bytes(10, 2, 5)


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="stage must be one of"):
        ZeroOptimizer(_model(), stage=0)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        ZeroOptimizer(_model(), stage=1, optimizer="LBFGS")
    with pytest.raises(RuntimeError, match="process group"):
        ZeroOptimizer(_model(), stage=1)
