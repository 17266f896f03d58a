"""The torch Reynolds step (the GPU path) equals the numba step, on CPU here."""

import numpy as np
import pytest
import torch

from swarm.engine import advance, initial_state
from swarm.reynolds import Reynolds
from swarm.torch_reynolds import reynolds_step


@pytest.mark.parametrize(("n", "box", "chunk"), [(600, 120.0, 97), (40, 15.0, 1 << 20)])
def test_torch_step_equals_numba_step(n, box, chunk):
    rule = Reynolds(separation=3.0)
    pos, dirs = initial_state(n, box, np.random.default_rng(n))
    tpos, tdirs = torch.tensor(pos), torch.tensor(dirs)
    for _ in range(5):
        pos, dirs = advance(pos, dirs, rule, box)
        tpos, tdirs = reynolds_step(tpos, tdirs, box, rule, chunk=chunk)
    np.testing.assert_allclose(tdirs.numpy(), dirs, atol=1e-10)
    np.testing.assert_allclose(tpos.numpy(), pos, atol=1e-9)
