"""The common agent/environment API shared by swarms, MARL and federated learning.

Three small pieces, deliberately not a class hierarchy:

* :class:`Policy` -- anything that maps a batch of observations to a batch of actions
  (a Vicsek rule, a Reynolds rule, a trained MAPPO actor, a Flower client's model).
* :class:`Capability` -- something an agent can do (hold data, train, serve inference,
  be scheduled). Capabilities are duck-typed: each one only needs a ``name``.
* :class:`Agent` -- an id, a policy or model, and a dict of capabilities.

Environments are PettingZoo ``ParallelEnv`` objects that also implement ``state()``
(see :mod:`envs.registry` and :func:`envs.check_env`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np

ObsT = TypeVar("ObsT", contravariant=True)
ActT = TypeVar("ActT", covariant=True)


@runtime_checkable
class Policy(Protocol[ObsT, ActT]):
    """Maps a batch of observations to a batch of actions.

    The leading dimension of ``observations`` is the batch (agents, environments, or both);
    the returned actions have the same leading dimension.
    """

    def __call__(self, observations: ObsT) -> ActT: ...


@runtime_checkable
class Capability(Protocol):
    """Something an agent can do. ``name`` is the key under which an :class:`Agent` holds it."""

    name: str


@dataclass
class Agent:
    """An agent: its id, what decides its actions, and what else it can do.

    Args:
        id: Unique id within its world (a PettingZoo agent name, a Flower node id, ...).
        policy: A :class:`Policy` or a model (for example a ``torch.nn.Module``). Default None.
        capabilities: Capabilities keyed by their ``name``. Default empty.
    """

    id: str
    policy: Any = None
    capabilities: dict[str, Capability] = field(default_factory=dict)

    def add(self, capability: Capability) -> Agent:
        """Adds ``capability`` under its ``name``; refuses a second one of the same name."""
        if not isinstance(capability, Capability):
            raise TypeError(f"capability must have a 'name' attribute, got {type(capability).__name__}")
        if capability.name in self.capabilities:
            raise ValueError(f"agent {self.id!r} already has a capability named {capability.name!r}")
        self.capabilities[capability.name] = capability
        return self

    def can(self, name: str) -> bool:
        """Whether the agent holds a capability called ``name``."""
        return name in self.capabilities

    def capability(self, name: str) -> Capability:
        """The capability called ``name``; a KeyError lists the ones the agent has."""
        try:
            return self.capabilities[name]
        except KeyError:
            have = ", ".join(sorted(self.capabilities)) or "none"
            raise KeyError(f"agent {self.id!r} has no capability {name!r} (it has: {have})") from None

    def act(self, observations: Any) -> Any:
        """Runs the agent's policy on a batch of observations."""
        if self.policy is None:
            raise ValueError(f"agent {self.id!r} has no policy")
        return self.policy(observations)


class RandomPolicy:
    """Samples uniformly from an action space, one action per observation in the batch.

    Args:
        action_space: A Gymnasium space.
        seed: Seed of the policy's own generator. Default None (fresh entropy).
    """

    def __init__(self, action_space: Any, seed: int | None = None) -> None:
        self.action_space = action_space
        self.action_space.seed(seed)

    def __call__(self, observations: np.ndarray) -> np.ndarray:
        return np.stack([self.action_space.sample() for _ in range(len(observations))])


def agents_for(env: Any, policies: Policy | Mapping[str, Policy]) -> dict[str, Agent]:
    """Builds one :class:`Agent` per agent of a ParallelEnv, sharing one policy or one each."""
    out = {}
    for name in env.possible_agents:
        policy = policies[name] if isinstance(policies, Mapping) else policies
        out[name] = Agent(id=name, policy=policy)
    return out
