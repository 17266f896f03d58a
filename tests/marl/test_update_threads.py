"""``update_threads``: the PPO update runs on its own torch thread count, and the run's count returns after it."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from marl.mappo import MAPPO, MAPPOConfig

CFG = MAPPOConfig(env="sisl/pursuit-v5", env_kwargs={"max_cycles": 20}, backend="parallel", num_envs=4,
                  rollout_steps=10, num_minibatches=2, update_epochs=2, hidden=16, total_steps=80)


def _train(update_threads: int | None, seen: list[int]) -> MAPPO:
    """Two iterations on 1 run thread; ``seen`` records the thread count at every gradient of the actor."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer = MAPPO(CFG.model_copy(update={"update_threads": update_threads}), seed=3)
        for p in trainer.actor.parameters():
            p.register_hook(lambda g: seen.append(torch.get_num_threads()) or g)
        try:
            for _ in range(2):
                trainer.train_iteration()
                # The rollout that follows runs on the run's thread count again.
                assert torch.get_num_threads() == 1
        finally:
            trainer.env.close()
        return trainer
    finally:
        torch.set_num_threads(before)


def test_the_update_runs_on_update_threads_and_trains_as_on_one() -> None:
    # Execute: the same two iterations with the update on 1 thread and on 2.
    seen_one: list[int] = []
    seen_two: list[int] = []
    one = _train(None, seen_one)
    two = _train(2, seen_two)
    # Assert: every backward pass ran on the update's thread count...
    assert seen_one and set(seen_one) == {1}
    assert seen_two and set(seen_two) == {2}
    # ...and gave the same networks up to the order of float32 sums (torch splits work by thread).
    for (name, a), b in zip(one.actor.state_dict().items(), two.actor.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)
    for ca, cb in zip(one.critics, two.critics, strict=True):
        for (name, a), b in zip(ca.state_dict().items(), cb.state_dict().values(), strict=True):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)


def test_the_thread_count_returns_when_the_update_raises() -> None:
    torch_before = torch.get_num_threads()
    torch.set_num_threads(1)
    trainer = MAPPO(CFG.model_copy(update={"update_threads": 2}), seed=0)
    try:
        buf = trainer.collect()
        del buf["action"]  # a rollout without its actions: the update fails
        with pytest.raises(KeyError, match="action"):
            trainer.update(buf)
        assert torch.get_num_threads() == 1
    finally:
        trainer.env.close()
        torch.set_num_threads(torch_before)


@pytest.mark.parametrize("bad", [0, 257, 1.5])
def test_update_threads_out_of_range_is_refused(bad: object) -> None:
    with pytest.raises(ValidationError, match="update_threads"):
        MAPPOConfig(update_threads=bad)
