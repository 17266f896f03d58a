"""Groups of agents, the grouped actor, and trained policies saved as data and loaded back.

**Groups** (BenchMARL's): agents with equal observation and action spaces (and on the same
team) form a group; each group has one :class:`marl.networks.Actor`, its parameters shared
inside the group. Discrete and Box groups live in one environment side by side.

**Actions** travel as one tensor ``[..., N, A]`` (``A`` the widest action): a discrete agent's
index sits in column 0, a continuous agent's pre-squash ``u`` in its first ``size`` columns.
:meth:`GroupedActor.to_env` turns that into what the environment takes: ``[..., N]`` integers
when every agent is discrete, else ``[..., N, A]`` floats (indices in column 0, bounded actions
squashed into their Box).

**Policies**: :class:`JointPolicy` is the grouped actor as one :class:`envs.api.Policy` (the
trainer's greedy policy, a saved policy); its agents are :class:`envs.api.Agent` objects, one
per group, each acting through its group's actor (:class:`GroupPolicy`).

**Saved policies**: a directory with ``policy.json`` (format, environment id and keyword
arguments, agent names, groups with their spaces, sizes, observation preprocessing) and
``actor.pt`` (the actor's ``state_dict``: tensors only, read with
``torch.load(weights_only=True)``, which cannot run code). :func:`load_policy` rebuilds it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from envs.api import Agent
from envs.files import atomic_write_bytes
from envs.image import is_image_shape
from marl.networks import Actor

FORMAT = "agora-policy-1"


@dataclass(frozen=True)
class Group:
    """Agents sharing one actor.

    Args:
        name: The group's name (the agents' common name prefix, e.g. ``adversary``).
        team: The team (learner) the group belongs to.
        agents: Indices of its agents in ``possible_agents``.
        obs_shape: Shape of one agent's observation.
        obs_scale: Divisor of raw observations (255 for uint8 images, else 1).
        discrete: Discrete (True) or Box (False) actions.
        size: Number of discrete actions, or the Box's flat size.
        act_shape: The Box's shape (``()`` for Discrete).
        low: The Box's lower bounds (flat), None when any is infinite or for Discrete.
        high: The Box's upper bounds (flat), None when any is infinite or for Discrete.
    """

    name: str
    team: str
    agents: tuple[int, ...]
    obs_shape: tuple[int, ...]
    obs_scale: float
    discrete: bool
    size: int
    act_shape: tuple[int, ...] = ()
    low: tuple[float, ...] | None = None
    high: tuple[float, ...] | None = None

    @property
    def obs_dim(self) -> int:
        return int(np.prod(self.obs_shape))

    @staticmethod
    def from_json(data: dict[str, Any]) -> Group:
        data = dict(data)
        for key in ("agents", "obs_shape", "act_shape", "low", "high"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        return Group(**data)


def team_of(agent: str, teams: dict[str, list[str]] | None) -> str:
    """The team whose name prefixes match ``agent`` first; ``all`` when no teams are given."""
    if not teams:
        return "all"
    for team, prefixes in teams.items():
        if any(agent.startswith(p) for p in prefixes):
            return team
    raise ValueError(f"agent {agent!r} belongs to no team of {teams} (each team lists agent-name prefixes)")


def _prefix(name: str) -> str:
    return name.rstrip("0123456789").rstrip("_") or name


def groups_of(env: Any, teams: dict[str, list[str]] | None = None) -> list[Group]:
    """Groups of ``env``'s agents by team, observation space and action space (in agent order).

    Raises:
        ValueError: for a space the trainer cannot act in (only Discrete and Box actions, and
            Box observations, are supported), naming the agent.
    """
    keyed: dict[tuple[Any, ...], list[int]] = {}
    info: dict[tuple[Any, ...], dict[str, Any]] = {}
    for k, agent in enumerate(env.possible_agents):
        obs_space, act_space = env.observation_space(agent), env.action_space(agent)
        if not isinstance(obs_space, spaces.Box):
            raise ValueError(f"agent {agent!r}: observation space {obs_space} is not a Box (MAPPO reads Box observations)")
        scale = 255.0 if obs_space.dtype == np.uint8 else 1.0
        if isinstance(act_space, spaces.Discrete):
            if int(act_space.start) != 0:
                raise ValueError(f"agent {agent!r}: Discrete action space must start at 0, got start={act_space.start}")
            act = {"discrete": True, "size": int(act_space.n), "act_shape": (), "low": None, "high": None}
        elif isinstance(act_space, spaces.Box):
            lo, hi = act_space.low.ravel().astype(float), act_space.high.ravel().astype(float)
            finite = bool(np.isfinite(lo).all() and np.isfinite(hi).all())
            act = {"discrete": False, "size": int(np.prod(act_space.shape)), "act_shape": tuple(act_space.shape),
                   "low": tuple(lo.tolist()) if finite else None, "high": tuple(hi.tolist()) if finite else None}
        else:
            raise ValueError(f"agent {agent!r}: action space {act_space} is neither Discrete nor Box")
        team = team_of(agent, teams)
        key = (team, tuple(obs_space.shape), scale, *(tuple(v) if isinstance(v, tuple) else v for v in act.values()))
        keyed.setdefault(key, []).append(k)
        info[key] = {"team": team, "obs_shape": tuple(int(d) for d in obs_space.shape), "obs_scale": scale, **act}
    out = []
    names: set[str] = set()
    for key, members in keyed.items():
        prefixes = {_prefix(env.possible_agents[k]) for k in members}
        name = prefixes.pop() if len(prefixes) == 1 else info[key]["team"]
        base, n = name, 1
        while name in names:
            n += 1
            name = f"{base}{n}"
        names.add(name)
        out.append(Group(name=name, agents=tuple(members), **info[key]))
    return out


def is_image(group: Group) -> bool:
    """An observation the CNN encoder reads: (H, W, C) with C <= 4 and H, W >= 8."""
    return is_image_shape(group.obs_shape)


class GroupedActor(nn.Module):
    """One :class:`Actor` per group over the padded observations ``[..., N, obs_dim]``.

    Args:
        groups: The groups (every agent in exactly one).
        num_agents: N.
        share_params: Share parameters inside each group.
        agent_id: With ``share_params``, the shared actor also reads a one-hot agent id. Default True.
        hidden: Hidden width.
        encoder: ``auto`` (a CNN for image observations), ``mlp`` or ``cnn``.
        log_std_init: Initial log standard deviation of continuous actions. Default -0.5.
        generator: Generator of the initial weights.
    """

    def __init__(self, groups: list[Group], num_agents: int, *, share_params: bool, agent_id: bool = True,
                 hidden: int = 64, encoder: str = "auto", log_std_init: float = -0.5,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.groups = list(groups)
        self.num_agents = num_agents
        self.actors = nn.ModuleList()
        for g in self.groups:
            use_cnn = encoder == "cnn" or (encoder == "auto" and is_image(g))
            if use_cnn and len(g.obs_shape) != 3:
                raise ValueError(f"encoder 'cnn' needs (H, W, C) observations; group {g.name!r} has shape {g.obs_shape}")
            self.actors.append(Actor(len(g.agents), g.obs_dim, g.size, continuous=not g.discrete, share_params=share_params,
                                     agent_id=agent_id, hidden=hidden, log_std_init=log_std_init, low=list(g.low) if g.low else None, high=list(g.high) if g.high else None,
                                     image_shape=g.obs_shape if use_cnn else None, image_scale=g.obs_scale, generator=generator))
            if not use_cnn and g.obs_scale != 1.0:
                self.actors[-1].obs_scale = g.obs_scale
        for i, g in enumerate(self.groups):
            self.register_buffer(f"idx{i}", torch.tensor(g.agents, dtype=torch.long), persistent=False)
        self.act_width = max(1 if g.discrete else g.size for g in self.groups)
        self.all_discrete = all(g.discrete for g in self.groups)
        self.in_features = self.actors[0].in_features if len(self.actors) == 1 else None

    def _parts(self, obs: torch.Tensor) -> list[tuple[int, Actor, torch.Tensor, torch.Tensor]]:
        parts = []
        for i, (g, actor) in enumerate(zip(self.groups, self.actors, strict=True)):
            idx = getattr(self, f"idx{i}")
            x = obs.index_select(-2, idx)[..., : g.obs_dim]
            scale = getattr(actor, "obs_scale", 1.0)
            parts.append((i, actor, idx, x / scale if scale != 1.0 else x))
        return parts

    def _scatter(self, obs: torch.Tensor, values: list[torch.Tensor], width: int | None) -> torch.Tensor:
        lead = obs.shape[:-2]
        shape = (*lead, self.num_agents) if width is None else (*lead, self.num_agents, width)
        out = torch.zeros(shape, device=obs.device, dtype=values[0].dtype if values else torch.float32)
        for i, v in enumerate(values):
            idx = getattr(self, f"idx{i}")
            if width is None:
                out[..., idx] = v
            else:
                out[..., idx, : v.shape[-1]] = v
        return out

    def log_prob_entropy(self, obs: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probability and entropy per agent, ``[..., N]`` each."""
        logps, ents = [], []
        for (_, actor, idx, x), g in zip(self._parts(obs), self.groups, strict=True):
            dist = actor.distribution(x)
            a = actions.index_select(-2, idx)
            a = a[..., 0] if g.discrete else a[..., : g.size]
            lp, ent = actor.log_prob_entropy(dist, a)
            logps.append(lp)
            ents.append(ent)
        return self._scatter(obs, logps, None), self._scatter(obs, ents, None)

    def to_env(self, actions: torch.Tensor) -> torch.Tensor:
        """The environment's actions: ``[..., N]`` long if all discrete, else ``[..., N, A]`` floats."""
        if self.all_discrete:
            return actions[..., 0].round().long()
        out = actions.clone()
        for i, (g, actor) in enumerate(zip(self.groups, self.actors, strict=True)):
            if not g.discrete:
                idx = getattr(self, f"idx{i}")
                out[..., idx, : g.size] = actor.to_env(actions.index_select(-2, idx)[..., : g.size])
        return out


# --------------------------------------------------------------------------------------------
# The actors as Policies


class GroupPolicy:
    """One group's actor as an :class:`envs.api.Policy`: its agents' observations in, their actions out.

    Called with observations ``[..., n, obs]`` (``n`` the group's agents; any ``n`` when the
    actor reads no one-hot agent id), it returns the environment's actions: indices ``[..., n]``
    for a Discrete group, actions squashed into the Box ``[..., n, size]`` for a continuous one.

    Args:
        group: The group.
        actor: Its actor.
        greedy: Most likely actions (default) or samples.
        generator: Generator of the samples (shared by the groups of one joint policy).
        rows: ``(start, stop, total)`` when the observations are rows start..stop-1 of a batch
            of ``total`` (a data-parallel learner's shard): samples are drawn for the whole batch
            and these rows kept, so the shards sample what the whole batch would. Default None.
    """

    def __init__(self, group: Group, actor: Actor, *, greedy: bool = True, generator: torch.Generator | None = None,
                 rows: tuple[int, int, int] | None = None) -> None:
        self.group, self.actor, self.greedy, self.generator, self.rows = group, actor, greedy, generator, rows

    def raw(self, obs: torch.Tensor) -> torch.Tensor:
        """Actions before the environment's conversion: ``[..., n, 1]`` indices (float) or ``u``."""
        x = obs[..., : self.group.obs_dim]
        scale = getattr(self.actor, "obs_scale", 1.0)
        if scale != 1.0:
            x = x / scale
        if self.greedy:
            a = self.actor.greedy(x)
            return a if self.actor.continuous else a.float().unsqueeze(-1)
        dist = self.actor.distribution(x)
        lo, hi, total = self.rows if self.rows is not None else (0, x.shape[0], x.shape[0])
        if self.actor.continuous:
            noise = torch.randn((total, *dist.mean.shape[1:]), generator=self.generator, device=obs.device,
                                dtype=dist.mean.dtype)[lo:hi]
            return dist.mean + dist.stddev * noise
        probs = dist.probs
        if self.rows is not None:
            # Each row's draw depends on its own probabilities only: the other rows are filler never used.
            full = probs.new_full((total, *probs.shape[1:]), 1.0 / probs.shape[-1])
            full[lo:hi] = probs
            probs = full
        idx = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=self.generator).view(probs.shape[:-1])[lo:hi]
        return idx.to(obs.dtype).unsqueeze(-1)

    @torch.no_grad()
    def __call__(self, observations: torch.Tensor) -> torch.Tensor:
        raw = self.raw(torch.as_tensor(observations, dtype=next(self.actor.parameters()).dtype))
        return raw[..., 0].round().long() if self.group.discrete else self.actor.to_env(raw)


class JointPolicy:
    """Every agent's actor as one :class:`envs.api.Policy` over ``[..., N, obs_dim]``.

    Its agents (:attr:`group_agents`) are :class:`envs.api.Agent` objects, one per group, whose
    policy is the group's :class:`GroupPolicy`; a call hands each its agents' rows and gathers
    their actions: ``[..., N]`` integers when every agent is discrete, else ``[..., N, A]``
    floats (indices in column 0, bounded actions squashed into their Box).

    Args:
        actor: The grouped actor (trained in place: the policy always acts with its current weights).
        greedy: Most likely actions (default) or samples.
        generator: Generator of the samples. Default None (torch's global one).
        device: Where observations are moved before acting. Default CPU.
        rows: A data-parallel learner's shard of a larger batch (see :class:`GroupPolicy`). Default None.
    """

    def __init__(self, actor: GroupedActor, *, greedy: bool = True, generator: torch.Generator | None = None,
                 device: str | torch.device = "cpu", rows: tuple[int, int, int] | None = None) -> None:
        self.actor, self.device = actor, torch.device(device)
        self.group_agents = [Agent(g.name, policy=GroupPolicy(g, a, greedy=greedy, generator=generator, rows=rows))
                             for g, a in zip(actor.groups, actor.actors, strict=True)]

    def raw(self, obs: torch.Tensor) -> torch.Tensor:
        """Every agent's action before the environment's conversion, ``[..., N, A]`` (indices in
        column 0, ``u`` for continuous agents): what training stores and scores."""
        parts = [agent.policy.raw(obs.index_select(-2, getattr(self.actor, f"idx{i}")))
                 for i, agent in enumerate(self.group_agents)]
        return self.actor._scatter(obs, parts, self.actor.act_width)

    @torch.no_grad()
    def __call__(self, observations: torch.Tensor) -> torch.Tensor:
        obs = torch.as_tensor(observations, dtype=next(self.actor.parameters()).dtype, device=self.device)
        lead, n = obs.shape[:-2], self.actor.num_agents
        parts = [(getattr(self.actor, f"idx{i}"), agent.act(obs.index_select(-2, getattr(self.actor, f"idx{i}"))))
                 for i, agent in enumerate(self.group_agents)]
        if self.actor.all_discrete:
            out = torch.zeros((*lead, n), dtype=torch.long, device=obs.device)
            for idx, a in parts:
                out[..., idx] = a
            return out
        out = torch.zeros((*lead, n, self.actor.act_width), device=obs.device)
        for (idx, a), g in zip(parts, self.actor.groups, strict=True):
            if g.discrete:
                out[..., idx, 0] = a.float()
            else:
                out[..., idx, : g.size] = a
        return out


# --------------------------------------------------------------------------------------------
# Saved policies


def save_policy(directory: str | Path, actor: GroupedActor, meta: dict[str, Any]) -> Path:
    """Writes ``actor`` to ``directory`` (``actor.pt`` then ``policy.json``, each atomically).

    Args:
        directory: Where to write (created).
        actor: The trained actor.
        meta: What rebuilds it besides the groups: ``env``, ``env_kwargs``, ``agents``,
            ``obs_dim``, ``hidden``, ``share_params``, ``encoder`` (and anything else to record).

    Returns:
        The directory.
    """
    import io

    directory = Path(directory)
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in actor.state_dict().items()}, buf)
    atomic_write_bytes(directory / "actor.pt", buf.getvalue())
    doc = {"format": FORMAT, **meta, "groups": [asdict(g) for g in actor.groups]}
    atomic_write_bytes(directory / "policy.json", json.dumps(doc, indent=1, sort_keys=True).encode())
    return directory


def find_policy_dir(run_dir: str | Path) -> Path:
    """The saved policy of a run: ``policy/`` (finished), else ``checkpoints/policy/`` (the last checkpoint).

    ``run_dir`` may also be a policy directory itself, or a run of several policies
    (``policy/NAME-seedS/``: the first in sorted order).

    Raises:
        FileNotFoundError: naming where it looked.
    """
    root = Path(run_dir)
    candidates = [root, root / "policy", root / "checkpoints" / "policy"]
    for c in candidates:
        if (c / "policy.json").is_file():
            return c
    for c in candidates[1:]:
        if c.is_dir():
            subs = sorted(p for p in c.iterdir() if (p / "policy.json").is_file())
            if subs:
                return subs[0]
    raise FileNotFoundError(f"no saved policy in {str(root)!r} (looked for policy.json in "
                            f"{', '.join(str(c) for c in candidates)} and their subdirectories)")


class SavedPolicy(JointPolicy):
    """A trained MAPPO actor loaded back: a :class:`JointPolicy` with what rebuilds its environment.

    Called with observations ``[B, N, obs_dim]`` (padded as :class:`marl.parallel_batch.ParallelBatch`
    gives them), it returns the environment's actions for all ``B`` worlds; :meth:`act` takes
    one ParallelEnv's observation dict and returns its action dict.

    Args:
        actor: The rebuilt actor.
        meta: The ``policy.json`` document.
        greedy: Most likely actions (default) or samples.
        seed: Seed of the sampling generator.
    """

    def __init__(self, actor: GroupedActor, meta: dict[str, Any], *, greedy: bool = True, seed: int = 0) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        super().__init__(actor.eval(), greedy=greedy, generator=self.generator)
        self.meta = meta
        self.greedy = greedy
        self.agents: list[str] = list(meta["agents"])
        self.obs_dim = int(meta["obs_dim"])
        self.env_id: str = meta["env"]
        self.env_kwargs: dict[str, Any] = dict(meta.get("env_kwargs") or {})
        self.teams: dict[str, list[str]] = {g.team: [] for g in actor.groups}
        for g in actor.groups:
            self.teams[g.team].extend(self.agents[k] for k in g.agents)

    def act(self, observations: dict[str, Any]) -> dict[str, Any]:
        """Actions of the agents present in a ParallelEnv's observation dict."""
        from marl.evaluate import act_on_dict

        return act_on_dict(self, observations, self.agents, self.actor.groups, self.obs_dim)


def load_policy(run_dir: str | Path, *, greedy: bool = True, seed: int = 0) -> SavedPolicy:
    """The policy a MAPPO/IPPO run saved, rebuilt from ``policy.json`` and ``actor.pt``.

    Args:
        run_dir: A run directory (or a policy directory, see :func:`find_policy_dir`).
        greedy: Most likely actions (default) or sampled ones.
        seed: Seed of the sampling generator (when ``greedy`` is False).

    Raises:
        FileNotFoundError: when no policy is saved there.
        ValueError: when ``policy.json`` is not of this format.
    """
    where = find_policy_dir(run_dir)
    try:
        meta = json.loads((where / "policy.json").read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{where / 'policy.json'} is not readable JSON: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{where / 'policy.json'} is not an Agora policy (format {FORMAT!r})")
    groups = [Group.from_json(g) for g in meta["groups"]]
    # Policies saved before the agent_id option always read the id.
    actor = GroupedActor(groups, len(meta["agents"]), share_params=bool(meta["share_params"]),
                         agent_id=bool(meta.get("agent_id", True)), hidden=int(meta["hidden"]),
                         encoder=str(meta.get("encoder", "auto")))
    state = torch.load(where / "actor.pt", map_location="cpu", weights_only=True)
    actor.load_state_dict(state)
    return SavedPolicy(actor, meta, greedy=greedy, seed=seed)
