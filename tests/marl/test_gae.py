"""GAE against hand-computed values: termination stops the bootstrap, truncation keeps it."""

from __future__ import annotations

import pytest
import torch

from marl.gae import compute_gae

GAMMA, LAM = 0.9, 0.5


def _t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_no_episode_end_bootstraps_through() -> None:
    # Prepare: two steps, values 1 and 2, next values 2 and 3 (the state after step 1).
    rewards, values, next_values = _t(1.0, 2.0), _t(1.0, 2.0), _t(2.0, 3.0)
    no = torch.zeros(2, dtype=torch.bool)
    # Execute
    adv, ret = compute_gae(rewards, values, next_values, no, no, GAMMA, LAM)
    # Assert: delta_1 = 2 + 0.9*3 - 2 = 2.7; delta_0 = 1 + 0.9*2 - 1 = 1.8; A_0 = 1.8 + 0.45*2.7.
    assert adv.tolist() == pytest.approx([1.8 + 0.45 * 2.7, 2.7])
    assert ret.tolist() == pytest.approx([1.8 + 0.45 * 2.7 + 1.0, 4.7])


def test_termination_does_not_bootstrap_and_cuts_the_trace() -> None:
    # Step 0 ends the episode by termination; step 1 starts a new one.
    rewards, values, next_values = _t(1.0, 2.0), _t(1.0, 2.0), _t(5.0, 3.0)
    terminated = torch.tensor([True, False])
    truncated = torch.tensor([False, False])
    adv, _ = compute_gae(rewards, values, next_values, terminated, truncated, GAMMA, LAM)
    # delta_0 = 1 + 0 - 1 = 0 (the final state's value 5 is ignored); A_0 does not see A_1.
    assert adv.tolist() == pytest.approx([0.0, 2.0 + 0.9 * 3.0 - 2.0])


def test_truncation_bootstraps_on_the_final_state_and_cuts_the_trace() -> None:
    rewards, values, next_values = _t(1.0, 2.0), _t(1.0, 2.0), _t(5.0, 3.0)
    terminated = torch.tensor([False, False])
    truncated = torch.tensor([True, False])
    adv, _ = compute_gae(rewards, values, next_values, terminated, truncated, GAMMA, LAM)
    # delta_0 = 1 + 0.9*5 - 1 = 4.5 (bootstrapped on the final state's value); no trace from step 1.
    assert adv.tolist() == pytest.approx([4.5, 2.7])


def test_batched_agents_are_independent() -> None:
    # [T=3, B=1, N=2]: agent 0 terminated at t=1, agent 1 truncated at t=1.
    rewards = torch.ones(3, 1, 2, dtype=torch.float64)
    values = torch.zeros(3, 1, 2, dtype=torch.float64)
    next_values = torch.full((3, 1, 2), 10.0, dtype=torch.float64)
    terminated = torch.zeros(3, 1, 2, dtype=torch.bool)
    truncated = torch.zeros(3, 1, 2, dtype=torch.bool)
    terminated[1, 0, 0] = True
    truncated[1, 0, 1] = True
    adv, _ = compute_gae(rewards, values, next_values, terminated, truncated, GAMMA, LAM)
    d_boot = 1 + 0.9 * 10  # 10
    assert adv[2, 0].tolist() == pytest.approx([d_boot, d_boot])
    assert adv[1, 0].tolist() == pytest.approx([1.0, d_boot])
    assert adv[0, 0].tolist() == pytest.approx([d_boot + 0.45 * 1.0, d_boot + 0.45 * d_boot])


def test_shape_mismatch_is_rejected() -> None:
    with pytest.raises(ValueError, match="one shape"):
        compute_gae(_t(1.0), _t(1.0, 2.0), _t(1.0), torch.tensor([False]), torch.tensor([False]), GAMMA, LAM)
