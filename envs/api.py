"""The common agent/environment API shared by swarms, MARL and federated learning.

Small pieces, deliberately not a class hierarchy:

* :class:`Policy` -- anything that maps a batch of observations to a batch of actions: a
  plain function, a Reynolds rule over its perception, a trained MAPPO actor, a Flower
  client's model where it acts.
* Capabilities -- small typed Protocols that running code calls: :class:`DataSource`,
  :class:`Learner`, :class:`Aggregator`, :class:`Communicator`, :class:`Masker`,
  :class:`Scheduler`, :class:`ParameterStore`, :class:`MapReducer`, :class:`Searcher`,
  :class:`Generator`. An object is a capability of a kind when it has that kind's methods
  (structural typing: nothing to inherit).
* :class:`Agent` -- an id, a policy, and capabilities looked up by kind:
  ``agent.get(Learner).fit(model, agent.get(DataSource), seed)``.

Environments are PettingZoo ``ParallelEnv`` objects that also implement ``state()``
(see :mod:`envs.registry` and :func:`envs.check_env`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np

ObsT = TypeVar("ObsT", contravariant=True)
ActT = TypeVar("ActT", covariant=True)
CapT = TypeVar("CapT")


@runtime_checkable
class Policy(Protocol[ObsT, ActT]):
    """Maps a batch of observations to a batch of actions.

    The leading dimension of ``observations`` is the batch (agents, environments, or both);
    the returned actions have the same leading dimension. A plain function is a Policy.
    """

    def __call__(self, observations: ObsT) -> ActT: ...


@runtime_checkable
class DataSource(Protocol):
    """An agent's own examples (a Flower site's partition, a worker's shard); they stay with it."""

    def num_examples(self) -> int:
        """How many examples the source holds (the weight of this agent's update)."""
        ...

    def batches(self, seed: int) -> Iterable[Any]:
        """One pass over the examples in an order fixed by ``seed``."""
        ...


@runtime_checkable
class Learner(Protocol):
    """Local training: updates ``model`` in place on ``data`` and returns its metrics."""

    def fit(self, model: Any, data: DataSource, seed: int) -> Mapping[str, float]: ...


@runtime_checkable
class Aggregator(Protocol):
    """Combines weighted contributions into one (FedAvg's weighted mean, plain or secure)."""

    def aggregate(self, contributions: Sequence[tuple[Any, float]]) -> Any: ...


@runtime_checkable
class Communicator(Protocol):
    """A collective among peers: each peer gets the reduction of every peer's tensor."""

    def all_reduce(self, tensor: Any) -> Any: ...


@runtime_checkable
class Masker(Protocol):
    """The client side of secure aggregation: what leaves the agent is a masked vector.

    ``mask`` returns the masked vector, or the (signed) protocol message that carries it.
    """

    def mask(self, vector: np.ndarray) -> np.ndarray | bytes: ...


@runtime_checkable
class Scheduler(Protocol):
    """Places jobs on resources and says when each runs."""

    def schedule(self, jobs: Sequence[Any]) -> Any: ...


@runtime_checkable
class ParameterStore(Protocol):
    """A parameter server seen from a worker: pull the current parameters, push a gradient."""

    def pull(self) -> Any: ...

    def push(self, gradient: Any) -> Any: ...


@runtime_checkable
class MapReducer(Protocol):
    """Runs a MapReduce job: map every record to ``(key, value)`` pairs, shuffle them by key, reduce each key."""

    def map_reduce(self, records: Iterable[Any], mapper: Callable[[Any], Iterable[tuple[Any, Any]]],
                   reducer: Callable[[Any, list[Any]], Any],
                   combiner: Callable[[Any, list[Any]], Any] | None = None) -> Any: ...


@runtime_checkable
class Searcher(Protocol):
    """Answers a batch of text queries with the ids of the best documents of each, best first."""

    def search(self, queries: Sequence[str]) -> Any: ...


@runtime_checkable
class Generator(Protocol):
    """Continues a batch of token prompts (language-model inference)."""

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int | Sequence[int]) -> list[list[int]]: ...


#: The capability kinds an :class:`Agent` accepts, in the order an error lists them.
CAPABILITY_KINDS: tuple[type, ...] = (DataSource, Learner, Aggregator, Communicator, Masker, Scheduler,
                                      ParameterStore, MapReducer, Searcher, Generator)


def kinds_of(capability: Any) -> list[type]:
    """The capability kinds ``capability`` satisfies (structurally)."""
    return [kind for kind in CAPABILITY_KINDS if isinstance(capability, kind)]


@dataclass
class Agent:
    """An agent: its id, what decides its actions, and what else it can do.

    Args:
        id: Unique id within its world (a PettingZoo agent name, a Flower node id, ...).
        policy: A :class:`Policy` (a function, a rule over a perception, an actor). Default None.
        capabilities: Objects of the kinds in :data:`CAPABILITY_KINDS`. Default none.
    """

    id: str
    policy: Any = None
    capabilities: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        given, self.capabilities = list(self.capabilities), []
        for capability in given:
            self.add(capability)

    def add(self, capability: Any) -> Agent:
        """Adds ``capability``; refuses an object of no known kind, or a second one of a kind."""
        kinds = kinds_of(capability)
        if not kinds:
            allowed = ", ".join(k.__name__ for k in CAPABILITY_KINDS)
            raise TypeError(f"agent {self.id!r}: {type(capability).__name__} is no capability kind "
                            f"(it must have the methods of one of: {allowed})")
        for kind in kinds:
            if self.has(kind):
                raise ValueError(f"agent {self.id!r} already has a {kind.__name__}")
        self.capabilities.append(capability)
        return self

    def has(self, kind: type) -> bool:
        """Whether the agent holds a capability of ``kind``."""
        return any(isinstance(c, kind) for c in self.capabilities)

    def get(self, kind: type[CapT]) -> CapT:
        """The agent's capability of ``kind``; a KeyError lists the kinds the agent has."""
        for capability in self.capabilities:
            if isinstance(capability, kind):
                return capability
        have = ", ".join(sorted({k.__name__ for c in self.capabilities for k in kinds_of(c)})) or "none"
        raise KeyError(f"agent {self.id!r} has no {getattr(kind, '__name__', kind)} (it has: {have})")

    def act(self, observations: Any) -> Any:
        """Runs the agent's policy on a batch of observations."""
        if self.policy is None:
            raise ValueError(f"agent {self.id!r} has no policy")
        return self.policy(observations)

