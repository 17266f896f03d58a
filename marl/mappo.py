"""MAPPO: decentralized actors, one centralized critic on ``env.state()``; IPPO by one flag.

Reads top to bottom like CleanRL's ``ppo.py``: the config, the environment, the networks, then
one training iteration in three phases -- collect a rollout from B environments at once,
compute advantages (GAE that bootstraps on truncation, not on termination), and update with
the clipped PPO objective over minibatches.

* ``central_critic=True`` (MAPPO): the critic sees the global state, one value per agent.
* ``central_critic=False`` (IPPO): the same code with a critic on each agent's own observation.
* ``share_params=True``: one actor (and one local critic) per group of agents with equal
  spaces, told apart by a one-hot id (:mod:`marl.policy`); Discrete and Box groups mix.
* Teams (``teams``, or the environment's registered teams): each team is its own learner with
  its own critic, value normalization and optimizer; opponents never share a loss.
* Agents that leave early are masked (``active``) in the rollout, GAE and every loss, as in
  MAPPO's own implementation.

Training runs on a batched environment (``envs.make_vec``) or on B copies of any registered
ParallelEnv (:class:`marl.parallel_batch.ParallelBatch`); both have the same interface.

Data parallel (``workers=W``, started by :mod:`marl.distributed`): learner ``r`` steps its own
shard of the B environments, and each minibatch's gradient is summed over the learners with
their agent's :class:`envs.api.Communicator` (the ring all-reduce). The shards draw the random
starts and action samples the whole batch would draw, and every learner sees the whole batch's
advantages, returns and masks (gathered exactly), so W learners take the optimizer steps one
process takes on the union batch, up to the order of floating-point additions.
:meth:`MAPPO.state_dict` holds everything needed to continue bit for bit: networks,
optimizer, value normalization, the sampling generator, the environments and the running
episode returns.
"""

from __future__ import annotations

import math
import time
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from capabilities.training.data_parallel import flat_grad, set_flat_grad, shard_bounds
from marl.gae import compute_gae
from marl.networks import CentralCritic, LocalCritic, ValueNorm, state_image
from marl.parallel_batch import ParallelBatch
from marl.policy import GroupedActor, JointPolicy, groups_of, save_policy


class MAPPOConfig(BaseModel):
    """Hyperparameters of MAPPO / IPPO (defaults tuned for mpe simple_spread, N=3)."""

    # Unknown keys are refused, like every config section of the experiment runner.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    env: str = Field("mpe/simple_spread-v3", description="A registered environment id.")
    env_kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the environment.")
    backend: Literal["vec", "parallel"] = Field("vec", description="vec: envs.make_vec (batched torch); parallel: B copies of envs.make.")
    num_envs: int = Field(128, ge=1, le=65_536, description="Environments stepped together (B).")
    total_steps: int = Field(2_000_000, ge=1, le=10**10, description="Environment steps to train for (each step of one environment counts 1).")
    rollout_steps: int = Field(25, ge=1, le=100_000, description="Steps per environment between updates (T).")
    central_critic: bool = Field(True, description="MAPPO's critic on env.state(); False gives IPPO's critic on local observations.")
    share_params: bool = Field(True, description="One actor for all agents with a one-hot agent id, else one per agent.")
    agent_id: bool = Field(True, description="With share_params: the shared actor reads a one-hot agent id. False: it reads "
                           "the observation alone, so the saved actor runs at any number of agents (a swarm).")
    hidden: int = Field(64, ge=1, le=8192, description="Hidden width of actor and critic.")
    lr: float = Field(3e-3, gt=0, description="Adam learning rate.")
    anneal_lr: bool = Field(True, description="Decay the learning rate linearly to 0 over training.")
    gamma: float = Field(0.99, ge=0, le=1, description="Discount.")
    gae_lambda: float = Field(0.95, ge=0, le=1, description="GAE lambda.")
    clip_coef: float = Field(0.2, gt=0, description="PPO ratio clip.")
    ent_coef: float = Field(0.01, ge=0, description="Entropy bonus weight.")
    vf_coef: float = Field(1.0, ge=0, description="Value loss weight.")
    max_grad_norm: float = Field(10.0, gt=0, description="Global gradient norm clip.")
    update_epochs: int = Field(5, ge=1, le=1000, description="Passes over each rollout.")
    num_minibatches: int = Field(4, ge=1, description="Minibatches per pass (split over environments).")
    value_norm: bool = Field(True, description="Normalize value targets with running statistics.")
    device: str = Field("cpu", description="Torch device: cpu, cuda or cuda:K (cuda only where available).")
    threads: int = Field(1, ge=1, le=256, description="Torch CPU threads for the run (networks this small run best on one).")
    update_threads: int | None = Field(None, ge=1, le=256, description="Torch CPU threads during each PPO update (None: threads). "
                                       "With env_workers the cores that step the copies are idle while the trainer updates.")
    teams: dict[str, list[str]] | None = Field(None, description="Team name -> agent-name prefixes; one learner per team. "
                                               "Default: the environment's registered teams, else one team of all agents.")
    encoder: Literal["auto", "mlp", "cnn"] = Field("auto", description="Observation (and image state) encoder: auto (a CNN for images), mlp or cnn.")
    log_std_init: float = Field(-0.5, ge=-5.0, le=2.0, description="Initial log standard deviation of continuous actions' Gaussian "
                                "(before tanh squashing); lower explores less (multiwalker's walkers fall under large noise).")
    env_workers: int = Field(0, ge=0, le=256, description="backend parallel: processes stepping each learner's copies (0: in the learner's process).")
    workers: int = Field(1, ge=1, le=64, description="Data-parallel learner processes, each stepping its shard of the num_envs environments; "
                         "their gradients are summed over the ring all-reduce (the same updates as one process on all of them).")
    dtype: Literal["float32", "float64"] = Field("float32", description="Floating dtype of the networks, rollouts and (batched env) simulation.")

    @model_validator(mode="after")
    def _minibatches_fit(self) -> MAPPOConfig:
        if self.num_minibatches > self.num_envs:
            raise ValueError(f"num_minibatches ({self.num_minibatches}) must be at most num_envs ({self.num_envs}): minibatches split the environments")
        if self.env_workers and self.backend != "parallel":
            raise ValueError(f"env_workers = {self.env_workers} steps copies of a ParallelEnv: it needs backend 'parallel', not {self.backend!r}")
        if self.workers > self.num_envs:
            raise ValueError(f"workers = {self.workers} exceeds num_envs = {self.num_envs}: each learner steps at least one environment")
        # One rollout is held in memory at once; 2**24 environment steps of it fit in a few GiB.
        if self.num_envs * self.rollout_steps > 2**24:
            raise ValueError(f"num_envs * rollout_steps = {self.num_envs * self.rollout_steps} steps per rollout exceeds "
                             f"{2**24} (memory); lower one of them")
        return self


# --------------------------------------------------------------------------------------------
# The environment: batched torch or B copies of a ParallelEnv, one interface


def make_batched_env(cfg: MAPPOConfig, num_envs: int, seed: int, rows: tuple[int, int] | None = None) -> Any:
    """The training (or evaluation) environments of ``cfg``, reset with ``seed``.

    Args:
        cfg: The configuration (env, backend, env_kwargs, device, dtype, env_workers).
        num_envs: Environments of the whole batch.
        seed: Reset seed.
        rows: Only environments ``rows[0]..rows[1]-1`` of the batch (a learner's shard), started
            as the whole batch would start them. Default None: all of them.
    """
    from envs.registry import make_vec, registered_vec

    lo, hi = rows if rows is not None else (0, num_envs)
    if cfg.backend == "vec":
        if cfg.env not in registered_vec():
            raise ValueError(f"env {cfg.env!r} has no batched implementation (batched: {', '.join(registered_vec())}); use backend 'parallel'")
        kwargs = dict(cfg.env_kwargs)
        if cfg.dtype != "float32":
            kwargs.setdefault("dtype", getattr(torch, cfg.dtype))
        if rows is not None:
            kwargs["shard"] = (lo, num_envs)
        try:
            env = make_vec(cfg.env, num_envs=hi - lo, device=cfg.device, **kwargs)
        except TypeError as exc:
            if rows is None:
                raise
            raise ValueError(f"the batched {cfg.env} cannot be split over learners ({exc}); use backend 'parallel' or workers 1") from None
    else:
        env = ParallelBatch(cfg.env, hi - lo, seed=seed, device=cfg.device, env_workers=cfg.env_workers, first_index=lo,
                            **cfg.env_kwargs)
    env.reset(seed=seed)
    return env


def env_teams(cfg: MAPPOConfig) -> dict[str, list[str]] | None:
    """The config's teams, else the teams the environment was registered with (None: one team)."""
    if cfg.teams is not None:
        return cfg.teams or None
    from envs.registry import spec

    return {team: list(prefixes) for team, prefixes in spec(cfg.env).teams} or None


def _join(first: tuple[Any, ...], second: tuple[Any, ...]) -> tuple[Any, ...]:
    """Two halves' ``step`` results (observations, rewards, terminated, truncated, infos) as one batch's."""
    tensors = [torch.cat((x, y)) for x, y in zip(first[:4], second[:4], strict=True)]
    return (*tensors, {key: torch.cat((first[4][key], second[4][key])) for key in first[4]})


class MAPPO:
    """One training run: environments, networks, optimizers and the loop state.

    Args:
        cfg: The hyperparameters.
        seed: Seed of the network initialization, action sampling, minibatches and environments.
        communicator: With ``cfg.workers > 1``: this learner's :class:`envs.api.Communicator`
            (summing a tensor over the learners in place), e.g. ``agent.get(Communicator)`` of an
            agent holding a :class:`~capabilities.training.RingAllReduce`. Default None.
        rank: This learner's index in ``0..cfg.workers-1``. Default 0.
    """

    def __init__(self, cfg: MAPPOConfig, seed: int, *, communicator: Any = None, rank: int = 0) -> None:
        if cfg.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {cfg.device!r} asked for but CUDA is not available (allowed here: cpu)")
        if cfg.workers > 1 and communicator is None:
            raise ValueError(f"workers = {cfg.workers} needs each learner's communicator: start them with marl.distributed")
        if not 0 <= rank < cfg.workers:
            raise ValueError(f"rank must be in [0, {cfg.workers}) for workers = {cfg.workers}, got {rank}")
        self.cfg = cfg
        self.device = torch.device(cfg.device)
        self.dtype = getattr(torch, cfg.dtype)
        self.communicator, self.rank, self.world = communicator, rank, cfg.workers
        # This learner's environments lo..hi-1 of the batch; num_envs is its own count.
        self.lo, self.hi = shard_bounds(cfg.num_envs, rank, cfg.workers)
        self.num_envs = self.hi - self.lo
        self.allreduce_seconds = 0.0  # wall time spent summing with the other learners
        self.env = make_batched_env(cfg, cfg.num_envs, seed, rows=None if cfg.workers == 1 else (self.lo, self.hi))
        env = self.env
        self.num_agents, self.obs_dim, self.state_dim = env.num_agents, env.obs_dim, env.state_dim
        self.batch_steps = cfg.num_envs * cfg.rollout_steps
        self.num_updates = max(1, math.ceil(cfg.total_steps / self.batch_steps))

        # Networks: one actor per group (local observations); per team, a critic on the state
        # (MAPPO) or on each agent's own observation (IPPO), its value normalization and optimizer.
        init = torch.Generator().manual_seed(seed)
        self.groups = groups_of(env, env_teams(cfg))
        self.actor = GroupedActor(self.groups, self.num_agents, share_params=cfg.share_params, agent_id=cfg.agent_id,
                                  hidden=cfg.hidden, encoder=cfg.encoder, log_std_init=cfg.log_std_init,
                                  generator=init).to(self.device)
        # The policy at execution, as evaluation and playback take any policy: each agent's
        # most likely action from its own observation (the same class a saved policy is).
        self.greedy_policy = JointPolicy(self.actor, greedy=True, device=self.device)
        self.teams: dict[str, list[int]] = {}
        for g in self.groups:
            self.teams.setdefault(g.team, []).extend(g.agents)
        self.team_index = [torch.tensor(sorted(a), dtype=torch.long, device=self.device) for a in self.teams.values()]
        self.critics = nn.ModuleList()
        for idx in self.team_index:
            n = len(idx)
            critic = CentralCritic(n, self.state_dim, cfg.hidden, generator=init,
                                   **state_image(getattr(env, "state_space", None), cfg.encoder)) if cfg.central_critic else \
                LocalCritic(n, self.obs_dim, share_params=cfg.share_params, hidden=cfg.hidden, generator=init)
            self.critics.append(critic.to(self.device, self.dtype))
        self.actor.to(self.dtype)
        # Every trained parameter in one order: the flat gradient the learners sum.
        self.learnable = nn.ModuleList([self.actor, self.critics])
        self.value_norms = nn.ModuleList(ValueNorm() for _ in self.teams).to(self.device)
        self.team_params = []
        for team, critic in zip(self.teams, self.critics, strict=True):
            actors = [a for g, a in zip(self.groups, self.actor.actors, strict=True) if g.team == team]
            self.team_params.append([p for m in (*actors, critic) for p in m.parameters()])
        self.optimizers = [torch.optim.Adam(ps, lr=cfg.lr, eps=1e-5) for ps in self.team_params]
        self.generator = torch.Generator(device=self.device).manual_seed(seed + 1)
        # The policy that collects the rollouts: the same agents, sampling with the run's generator.
        # A shard draws the samples of the whole batch and keeps its own rows.
        self.behaviour = JointPolicy(self.actor, greedy=False, generator=self.generator, device=self.device,
                                     rows=None if cfg.workers == 1 else (self.lo, self.hi, cfg.num_envs))

        # Loop state.
        self.update_index = 0
        self.obs = env.reset(seed=seed)[0].to(self.dtype)
        self.state = env.state().to(self.dtype)
        self.active = self._active_of(env)
        self.episode_return = torch.zeros(self.num_envs, self.num_agents, device=self.device, dtype=self.dtype)

    @property
    def critic(self) -> nn.Module:
        """The critic of the only team (see :attr:`critics` for several)."""
        return self.critics[0]

    def _active_of(self, env: Any, infos: dict[str, Any] | None = None) -> torch.Tensor:
        if infos is not None and "active" in infos:
            return infos["active"].to(self.device)
        if hasattr(env, "active"):
            return env.active.to(self.device)
        return torch.ones(self.num_envs, self.num_agents, dtype=torch.bool, device=self.device)

    # -- what the critic reads ---------------------------------------------------------------
    def value(self, obs: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """Critic outputs [..., N] (each team's own, normalized when value_norm is on)."""
        out = torch.zeros(*obs.shape[:-1], device=obs.device, dtype=obs.dtype)
        for idx, critic in zip(self.team_index, self.critics, strict=True):
            out[..., idx] = critic(state) if self.cfg.central_critic else critic(obs.index_select(-2, idx))
        return out

    def _denorm(self, v: torch.Tensor) -> torch.Tensor:
        if not self.cfg.value_norm:
            return v
        out = v.clone()
        for idx, norm in zip(self.team_index, self.value_norms, strict=True):
            out[..., idx] = norm.denormalize(v[..., idx])
        return out

    # -- phase 1: collect ----------------------------------------------------------------------
    @torch.no_grad()
    def collect(self) -> dict[str, Any]:
        """Steps every environment ``rollout_steps`` times with sampled actions.

        With worker processes (a :class:`ParallelBatch` with ``env_workers``) the two halves of
        the copies are double-buffered, as in Sample Factory: while the workers step one half,
        this process samples the other half's actions and scores the step (log-probabilities,
        critic), so the workers rarely wait for the network. The rollout is the one stepping
        every copy at once gives, bit for bit (:meth:`_collect_halves`).
        """
        T, B, N = self.cfg.rollout_steps, self.num_envs, self.num_agents
        dev, f = self.device, self.dtype
        buf: dict[str, Any] = {
            "obs": torch.zeros(T, B, N, self.obs_dim, device=dev, dtype=f),
            "state": torch.zeros(T, B, self.state_dim, device=dev, dtype=f),
            "action": torch.zeros(T, B, N, self.actor.act_width, device=dev, dtype=f),
            "active": torch.zeros(T, B, N, dtype=torch.bool, device=dev),
            "logprob": torch.zeros(T, B, N, device=dev, dtype=f),
            "value": torch.zeros(T, B, N, device=dev, dtype=f),
            "reward": torch.zeros(T, B, N, device=dev, dtype=f),
            "terminated": torch.zeros(T, B, N, dtype=torch.bool, device=dev),
            "truncated": torch.zeros(T, B, N, dtype=torch.bool, device=dev),
            "done": torch.zeros(T, B, dtype=torch.bool, device=dev),
            "final_value": torch.zeros(T, B, N, device=dev, dtype=f),
        }
        finished: list[torch.Tensor] = []
        if getattr(self.env, "env_workers", 0) and len(self.env.parts) == 2:
            self._collect_halves(buf, finished)
        else:
            for t in range(T):
                # The agents act: each group's policy samples its agents' actions (kept before the
                # environment's conversion, for their log-probabilities).
                action = self.behaviour.raw(self.obs)
                self._score(buf, t, action)
                self._record(buf, t, self.env.step(self.actor.to_env(action)), finished)
        last_value = self._denorm(self.value(self.obs, self.state))
        following = torch.cat((buf["value"][1:], last_value.unsqueeze(0)))
        buf["next_value"] = torch.where(buf["done"].unsqueeze(-1), buf["final_value"], following)
        buf["episode_returns"] = torch.cat(finished) if finished else torch.zeros(0, N, dtype=f)
        return buf

    def _collect_halves(self, buf: dict[str, Any], finished: list[torch.Tensor]) -> None:
        """:meth:`collect` with the copies' two halves stepped in turn by the worker processes.

        Step ``t``: half B's results of ``t - 1`` complete the observations, the whole batch's
        actions are sampled and half B's sent; the step is scored while the workers step half
        A; half A's results come back, and its actions of ``t + 1`` are sampled and sent while
        the workers step half B. Every network call sees the whole batch's shape (half B's rows
        of the early half-A call hold its previous observations), and half A's early sample is
        redrawn from the same generator state, so each row gets what one call on all the copies
        gives: a row's outputs depend on its own inputs and the batch shape only.
        """
        T, f, env, gen = self.cfg.rollout_steps, self.dtype, self.env, self.generator
        (a_lo, a_hi), (b_lo, b_hi) = env.parts
        draws = gen.get_state()
        env.step_async(self.actor.to_env(self.behaviour.raw(self.obs))[a_lo:a_hi], part=0)
        half_a: tuple[Any, ...] = ()
        for t in range(T):
            if t > 0:
                self._record(buf, t - 1, _join(half_a, env.step_wait(part=1)), finished)
            gen.set_state(draws)
            action = self.behaviour.raw(self.obs)
            env.step_async(self.actor.to_env(action)[b_lo:b_hi], part=1)
            self._score(buf, t, action)
            half_a = env.step_wait(part=0)
            if t + 1 < T:
                draws = gen.get_state()
                ahead = torch.cat((half_a[0].to(f), self.obs[b_lo:b_hi]))
                env.step_async(self.actor.to_env(self.behaviour.raw(ahead))[a_lo:a_hi], part=0)
        self._record(buf, T - 1, _join(half_a, env.step_wait(part=1)), finished)

    def _score(self, buf: dict[str, Any], t: int, action: torch.Tensor) -> None:
        """Stores step ``t``'s inputs and actions with their log-probabilities and values."""
        buf["obs"][t], buf["state"][t], buf["active"][t] = self.obs, self.state, self.active
        buf["action"][t] = action
        buf["logprob"][t] = self.actor.log_prob_entropy(self.obs, action)[0]
        buf["value"][t] = self._denorm(self.value(self.obs, self.state))

    def _record(self, buf: dict[str, Any], t: int, step: tuple[Any, ...], finished: list[torch.Tensor]) -> None:
        """Stores step ``t``'s outcome, ends finished episodes and moves to the next observations."""
        f = self.dtype
        obs, reward, terminated, truncated, infos = step
        reward = reward.to(f) * self.active  # a departed agent earns nothing
        buf["reward"][t], buf["terminated"][t], buf["truncated"][t] = reward, terminated, truncated
        done = infos["done"]
        buf["done"][t] = done
        self.episode_return += reward
        if bool(done.any()):
            # The value of the state an episode ended in, for bootstrapping a truncation.
            final = self._denorm(self.value(infos["final_observation"].to(f), infos["final_state"].to(f)))
            buf["final_value"][t] = final
            finished.append(self.episode_return[done].cpu())
            self.episode_return = torch.where(done.unsqueeze(1), torch.zeros_like(self.episode_return), self.episode_return)
        self.obs, self.state = obs.to(f), self.env.state().to(f)
        self.active = self._active_of(self.env, infos)

    # -- phase 2: advantages -------------------------------------------------------------------
    def advantages(self, buf: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """GAE per agent: bootstraps on truncation, not on termination; zero where inactive."""
        return compute_gae(buf["reward"], buf["value"], buf["next_value"], buf["terminated"], buf["truncated"],
                           self.cfg.gamma, self.cfg.gae_lambda, active=buf["active"])

    # -- phase 3: update -----------------------------------------------------------------------
    def update(self, buf: dict[str, Any]) -> dict[str, float]:
        """PPO epochs over minibatches of environments (see :meth:`_update`), on ``update_threads`` torch threads.

        The thread count the run had is restored afterwards, also when the update raises: the
        rollout that follows runs the policy on it while the env workers take the other cores.
        """
        wanted = self.cfg.update_threads
        before = torch.get_num_threads()
        if wanted is None or wanted == before:
            return self._update(buf)
        torch.set_num_threads(wanted)
        try:
            return self._update(buf)
        finally:
            torch.set_num_threads(before)

    def _update(self, buf: dict[str, Any]) -> dict[str, float]:
        """PPO epochs over minibatches of environments (each keeps its whole rollout).

        Each team's losses are means over its active agent-steps only; one backward pass
        serves every team (their parameters are disjoint), then each team clips its own
        gradient and steps its own optimizer. With several learners, a minibatch is a set of
        environments of the whole batch: each learner takes its own of them, scales its sums by
        the minibatch's whole count, and the learners sum their gradients before the clip.
        """
        cfg = self.cfg
        adv, returns = self.advantages(buf)
        # The statistics below span minibatches and learners: computed from the whole batch.
        adv_all, returns_all, active_all = self._whole_batch(adv, returns, buf["active"])
        targets = returns
        if cfg.value_norm:
            targets = returns.clone()
            for idx, norm in zip(self.team_index, self.value_norms, strict=True):
                live = active_all[..., idx]
                if bool(live.any()):
                    norm.update(returns_all[..., idx][live])
                targets[..., idx] = norm.normalize(returns[..., idx])
        stats = {"policy_loss": 0.0, "value_loss": 0.0, "entropy": 0.0, "approx_kl": 0.0, "clipfrac": 0.0}
        count = 0
        per_mb = math.ceil(cfg.num_envs / cfg.num_minibatches)
        for _ in range(cfg.update_epochs):
            order = torch.randperm(cfg.num_envs, generator=self.generator, device=self.device)
            for start in range(0, cfg.num_envs, per_mb):
                idx_all = order[start:start + per_mb]
                # This learner's environments of the minibatch, as indices of its own shard.
                idx = idx_all[(idx_all >= self.lo) & (idx_all < self.hi)] - self.lo
                mask_all = active_all[:, idx_all].to(self.dtype)
                parts = {"policy_loss": 0.0, "value_loss": 0.0, "entropy": 0.0, "approx_kl": 0.0, "clipfrac": 0.0}
                for opt in self.optimizers:
                    opt.zero_grad()
                if idx.numel():
                    obs, state = buf["obs"][:, idx], buf["state"][:, idx]
                    logprob, entropy = self.actor.log_prob_entropy(obs, buf["action"][:, idx])
                    log_ratio = logprob - buf["logprob"][:, idx]
                    ratio = log_ratio.exp()
                    values = self.value(obs, state)
                    mask = buf["active"][:, idx].to(self.dtype)
                    loss = torch.zeros((), device=self.device, dtype=self.dtype)
                    for team in self.team_index:
                        m = mask[..., team]
                        # Normalization over the whole minibatch's active agent-steps.
                        m_all, a_all = mask_all[..., team], adv_all[:, idx_all][..., team]
                        cnt = m_all.sum().clamp(min=1.0)
                        mean = (a_all * m_all).sum() / cnt
                        std = (((a_all - mean) ** 2 * m_all).sum() / cnt).sqrt()
                        a = (adv[:, idx][..., team] - mean) / (std + 1e-8)
                        r, lr_ = ratio[..., team], log_ratio[..., team]
                        pl = (torch.max(-a * r, -a * r.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef)) * m).sum() / cnt
                        vl = 0.5 * ((values[..., team] - targets[:, idx][..., team]).pow(2) * m).sum() / cnt
                        ent = (entropy[..., team] * m).sum() / cnt
                        loss = loss + pl - cfg.ent_coef * ent + cfg.vf_coef * vl
                        with torch.no_grad():
                            parts["policy_loss"] += pl.item()
                            parts["value_loss"] += vl.item()
                            parts["entropy"] += ent.item()
                            parts["approx_kl"] += ((((r - 1) - lr_) * m).sum() / cnt).item()
                            parts["clipfrac"] += ((((r - 1).abs() > cfg.clip_coef).to(self.dtype) * m).sum() / cnt).item()
                    loss.backward()
                if self.world > 1:
                    parts = self._sum_gradients(parts)
                for params, opt in zip(self.team_params, self.optimizers, strict=True):
                    nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                    opt.step()
                for k, v in parts.items():
                    stats[k] += v / len(self.team_index)
                count += 1
        return {k: v / count for k, v in stats.items()}

    # -- what the learners share -----------------------------------------------------------------
    def _all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sums ``tensor`` over the learners in place, through this learner's communicator."""
        t0 = time.perf_counter()
        self.communicator.all_reduce(tensor)
        self.allreduce_seconds += time.perf_counter() - t0
        return tensor

    def _whole_batch(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        """``[T, B_shard, ...]`` tensors as ``[T, num_envs, ...]`` of the whole batch, exactly.

        Each learner writes its rows into zeros and the learners sum: adding zeros is exact, so
        every learner holds bit for bit what one process would (an all-gather over the ring).
        """
        if self.world == 1:
            return list(tensors)
        T = tensors[0].shape[0]
        full = torch.zeros(len(tensors), T, self.cfg.num_envs, *tensors[0].shape[2:], device=self.device, dtype=self.dtype)
        for k, t in enumerate(tensors):
            full[k, :, self.lo:self.hi] = t
        self._all_reduce(full)
        return [full[k].to(t.dtype) if t.dtype == torch.bool else full[k] for k, t in enumerate(tensors)]

    def _sum_gradients(self, parts: dict[str, float]) -> dict[str, float]:
        """Sums the minibatch's gradients (and its loss statistics) over the learners."""
        grad = flat_grad(self.learnable)
        flat = torch.cat([grad, torch.tensor(list(parts.values()), device=self.device, dtype=grad.dtype)])
        self._all_reduce(flat)
        set_flat_grad(self.learnable, flat[: grad.numel()])
        return dict(zip(parts, flat[grad.numel():].tolist(), strict=True))

    # -- one iteration -------------------------------------------------------------------------
    def train_iteration(self) -> dict[str, Any]:
        """Anneals the learning rate, collects, updates; returns the iteration's metrics.

        ``train_return`` is the mean per-agent return of the episodes that ended (one team);
        with several teams, ``train_return_TEAM`` per team instead (opponents never averaged).
        """
        if self.cfg.anneal_lr:
            for opt in self.optimizers:
                opt.param_groups[0]["lr"] = self.cfg.lr * (1.0 - self.update_index / self.num_updates)
        buf = self.collect()
        stats = self.update(buf)
        self.update_index += 1
        returns = buf["episode_returns"]  # [episodes, N]
        out: dict[str, Any] = {
            "update": self.update_index,
            "env_steps": self.update_index * self.batch_steps,
            "episodes": int(returns.shape[0]),
        }
        team_returns = self.team_returns(returns)
        if self.world > 1:
            # Every learner's finished episodes: per team the sum of per-agent returns, and the count.
            sums = [returns[:, idx.cpu()].sum() / len(idx) for idx in self.team_index]
            totals = self._all_reduce(torch.tensor([*sums, returns.shape[0]], dtype=torch.float64)).tolist()
            out["episodes"] = int(totals[-1])
            team_returns = {key: (total / totals[-1] if totals[-1] else None)
                            for key, total in zip(team_returns, totals, strict=False)}
        for key, value in team_returns.items():
            out[f"train_{key}"] = value
        return {**out, **stats}

    def team_returns(self, returns: torch.Tensor) -> dict[str, float | None]:
        """``return`` (one team) or ``return_TEAM`` (several): mean per-agent return over episodes."""
        names = list(self.teams)
        out: dict[str, float | None] = {}
        for name, idx in zip(names, self.team_index, strict=True):
            key = "return" if len(names) == 1 else f"return_{name}"
            out[key] = returns[:, idx.cpu()].mean().item() if returns.shape[0] else None
        return out

    def save_policy(self, directory: Any) -> Any:
        """Saves the actor and what rebuilds it (:func:`marl.policy.save_policy`)."""
        cfg = self.cfg
        return save_policy(directory, self.actor, {
            "env": cfg.env, "env_kwargs": cfg.env_kwargs, "backend": cfg.backend, "agents": list(self.env.possible_agents), "obs_dim": self.obs_dim,
            "hidden": cfg.hidden, "share_params": cfg.share_params, "agent_id": cfg.agent_id, "encoder": cfg.encoder,
            "central_critic": cfg.central_critic, "update": self.update_index, "env_steps": self.update_index * self.batch_steps,
        })

    # -- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the run exactly."""
        return {
            "actor": self.actor.state_dict(),
            "critics": [c.state_dict() for c in self.critics],
            "value_norms": [v.state_dict() for v in self.value_norms],
            "optimizers": [o.state_dict() for o in self.optimizers],
            "generator": self.generator.get_state(),
            "env": self.env.get_state(),
            "obs": self.obs.cpu(),
            "state": self.state.cpu(),
            "active": self.active.cpu(),
            "episode_return": self.episode_return.cpu(),
            "update_index": self.update_index,
        }

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Restores :meth:`state_dict`."""
        self.actor.load_state_dict(saved["actor"])
        for module, sd in zip(self.critics, saved["critics"], strict=True):
            module.load_state_dict(sd)
        for module, sd in zip(self.value_norms, saved["value_norms"], strict=True):
            module.load_state_dict(sd)
        for opt, sd in zip(self.optimizers, saved["optimizers"], strict=True):
            opt.load_state_dict(sd)
        self.generator.set_state(saved["generator"])
        self.env.load_state(saved["env"])
        self.obs = saved["obs"].to(self.device)
        self.state = saved["state"].to(self.device)
        self.active = saved["active"].to(self.device)
        self.episode_return = saved["episode_return"].to(self.device)
        self.update_index = saved["update_index"]
