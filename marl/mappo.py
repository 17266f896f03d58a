"""MAPPO: decentralized actors, one centralized critic on ``env.state()``; IPPO by one flag.

Reads top to bottom like CleanRL's ``ppo.py``: the config, the environment, the networks, then
one training iteration in three phases -- collect a rollout from B environments at once,
compute advantages (GAE that bootstraps on truncation, not on termination), and update with
the clipped PPO objective over minibatches.

* ``central_critic=True`` (MAPPO): the critic sees the global state, one value per agent.
* ``central_critic=False`` (IPPO): the same code with a critic on each agent's own observation.
* ``share_params=True``: one actor (and one local critic) for all agents with a one-hot id.

Training runs on a batched environment (``envs.make_vec``) or on B copies of any registered
ParallelEnv (:class:`marl.parallel_batch.ParallelBatch`); both have the same interface.
:meth:`MAPPO.state_dict` holds everything needed to continue bit for bit: networks,
optimizer, value normalization, the sampling generator, the environments and the running
episode returns.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from experiments import Section
from marl.gae import compute_gae
from marl.networks import Actor, CentralCritic, LocalCritic, ValueNorm
from marl.parallel_batch import ParallelBatch


class MAPPOConfig(Section):
    """Hyperparameters of MAPPO / IPPO (defaults tuned for mpe simple_spread, N=3)."""

    env: str = Field("mpe/simple_spread-v3", description="A registered environment id.")
    env_kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the environment.")
    backend: Literal["vec", "parallel"] = Field("vec", description="vec: envs.make_vec (batched torch); parallel: B copies of envs.make.")
    num_envs: int = Field(128, ge=1, le=65_536, description="Environments stepped together (B).")
    total_steps: int = Field(2_000_000, ge=1, le=10**10, description="Environment steps to train for (each step of one environment counts 1).")
    rollout_steps: int = Field(25, ge=1, le=100_000, description="Steps per environment between updates (T).")
    central_critic: bool = Field(True, description="MAPPO's critic on env.state(); False gives IPPO's critic on local observations.")
    share_params: bool = Field(True, description="One actor for all agents with a one-hot agent id, else one per agent.")
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

    @model_validator(mode="after")
    def _minibatches_fit(self) -> MAPPOConfig:
        if self.num_minibatches > self.num_envs:
            raise ValueError(f"num_minibatches ({self.num_minibatches}) must be at most num_envs ({self.num_envs}): minibatches split the environments")
        # One rollout is held in memory at once; 2**24 environment steps of it fit in a few GiB.
        if self.num_envs * self.rollout_steps > 2**24:
            raise ValueError(f"num_envs * rollout_steps = {self.num_envs * self.rollout_steps} steps per rollout exceeds "
                             f"{2**24} (memory); lower one of them")
        return self


# --------------------------------------------------------------------------------------------
# The environment: batched torch or B copies of a ParallelEnv, one interface


def make_batched_env(cfg: MAPPOConfig, num_envs: int, seed: int) -> Any:
    """The training (or evaluation) environments of ``cfg``, reset with ``seed``."""
    from envs.registry import make_vec, registered_vec

    if cfg.backend == "vec":
        if cfg.env not in registered_vec():
            raise ValueError(f"env {cfg.env!r} has no batched implementation (batched: {', '.join(registered_vec())}); use backend 'parallel'")
        env = make_vec(cfg.env, num_envs=num_envs, device=cfg.device, **cfg.env_kwargs)
    else:
        env = ParallelBatch(cfg.env, num_envs, seed=seed, device=cfg.device, **cfg.env_kwargs)
    env.reset(seed=seed)
    return env


def action_sizes(env: Any) -> list[int]:
    """Valid actions (or action dimensions) of each agent of a batched environment."""
    return list(getattr(env, "action_sizes", [env.act_dim] * env.num_agents))


class MAPPO:
    """One training run: environments, networks, optimizer and the loop state.

    Args:
        cfg: The hyperparameters.
        seed: Seed of the network initialization, action sampling, minibatches and environments.
    """

    def __init__(self, cfg: MAPPOConfig, seed: int) -> None:
        if cfg.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {cfg.device!r} asked for but CUDA is not available (allowed here: cpu)")
        self.cfg = cfg
        self.device = torch.device(cfg.device)
        self.env = make_batched_env(cfg, cfg.num_envs, seed)
        env = self.env
        self.num_agents, self.obs_dim, self.state_dim = env.num_agents, env.obs_dim, env.state_dim
        self.batch_steps = cfg.num_envs * cfg.rollout_steps
        self.num_updates = max(1, math.ceil(cfg.total_steps / self.batch_steps))

        # Networks: the actor sees local observations; the critic the state (MAPPO) or them (IPPO).
        init = torch.Generator().manual_seed(seed)
        self.actor = Actor(self.num_agents, self.obs_dim, env.act_dim, continuous=env.continuous_actions,
                           share_params=cfg.share_params, hidden=cfg.hidden, action_sizes=action_sizes(env), generator=init)
        if cfg.central_critic:
            self.critic: nn.Module = CentralCritic(self.num_agents, self.state_dim, cfg.hidden, generator=init)
        else:
            self.critic = LocalCritic(self.num_agents, self.obs_dim, share_params=cfg.share_params, hidden=cfg.hidden, generator=init)
        self.actor.to(self.device)
        self.critic.to(self.device)
        self.value_norm = ValueNorm().to(self.device)
        self.params = [*self.actor.parameters(), *self.critic.parameters()]
        self.optimizer = torch.optim.Adam(self.params, lr=cfg.lr, eps=1e-5)
        self.generator = torch.Generator(device=self.device).manual_seed(seed + 1)

        # Loop state.
        self.update_index = 0
        self.obs = env.reset(seed=seed)[0].float()
        self.state = env.state().float()
        self.episode_return = torch.zeros(cfg.num_envs, device=self.device)

    # -- what the critic reads ---------------------------------------------------------------
    def value(self, obs: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """Critic output [..., N] (normalized when value_norm is on)."""
        return self.critic(state) if self.cfg.central_critic else self.critic(obs)

    def _denorm(self, v: torch.Tensor) -> torch.Tensor:
        return self.value_norm.denormalize(v) if self.cfg.value_norm else v

    def sample(self, dist: torch.distributions.Distribution) -> torch.Tensor:
        """Samples actions with the run's own generator (never the global one)."""
        if self.actor.continuous:
            noise = torch.randn(dist.mean.shape, generator=self.generator, device=self.device)
            return dist.mean + dist.stddev * noise
        probs = dist.probs.reshape(-1, dist.probs.shape[-1])
        return torch.multinomial(probs, 1, generator=self.generator).view(dist.probs.shape[:-1])

    # -- phase 1: collect ----------------------------------------------------------------------
    @torch.no_grad()
    def collect(self) -> dict[str, Any]:
        """Steps every environment ``rollout_steps`` times with sampled actions."""
        T, B, N = self.cfg.rollout_steps, self.cfg.num_envs, self.num_agents
        dev = self.device
        buf: dict[str, Any] = {
            "obs": torch.zeros(T, B, N, self.obs_dim, device=dev),
            "state": torch.zeros(T, B, self.state_dim, device=dev),
            "logprob": torch.zeros(T, B, N, device=dev),
            "value": torch.zeros(T, B, N, device=dev),
            "next_value": torch.zeros(T, B, N, device=dev),
            "reward": torch.zeros(T, B, N, device=dev),
            "terminated": torch.zeros(T, B, N, dtype=torch.bool, device=dev),
            "truncated": torch.zeros(T, B, N, dtype=torch.bool, device=dev),
            "done": torch.zeros(T, B, dtype=torch.bool, device=dev),
            "final_value": torch.zeros(T, B, N, device=dev),
        }
        actions = []
        finished: list[float] = []
        for t in range(T):
            buf["obs"][t], buf["state"][t] = self.obs, self.state
            dist = self.actor.distribution(self.obs)
            action = self.sample(dist)
            buf["logprob"][t] = self.actor.log_prob_entropy(dist, action)[0]
            buf["value"][t] = self._denorm(self.value(self.obs, self.state))
            actions.append(action)
            obs, reward, terminated, truncated, infos = self.env.step(action)
            buf["reward"][t], buf["terminated"][t], buf["truncated"][t] = reward.float(), terminated, truncated
            done = infos["done"]
            buf["done"][t] = done
            self.episode_return += reward.float().mean(dim=1)
            if bool(done.any()):
                # The value of the state an episode ended in, for bootstrapping a truncation.
                final = self._denorm(self.value(infos["final_observation"].float(), infos["final_state"].float()))
                buf["final_value"][t] = final
                finished.extend(self.episode_return[done].tolist())
                self.episode_return = torch.where(done, torch.zeros_like(self.episode_return), self.episode_return)
            self.obs, self.state = obs.float(), self.env.state().float()
        last_value = self._denorm(self.value(self.obs, self.state))
        following = torch.cat((buf["value"][1:], last_value.unsqueeze(0)))
        buf["next_value"] = torch.where(buf["done"].unsqueeze(-1), buf["final_value"], following)
        buf["action"] = torch.stack(actions)
        buf["episode_returns"] = finished
        return buf

    # -- phase 2: advantages -------------------------------------------------------------------
    def advantages(self, buf: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """GAE per agent: bootstraps on truncation, not on termination."""
        return compute_gae(buf["reward"], buf["value"], buf["next_value"], buf["terminated"], buf["truncated"],
                           self.cfg.gamma, self.cfg.gae_lambda)

    # -- phase 3: update -----------------------------------------------------------------------
    def update(self, buf: dict[str, Any]) -> dict[str, float]:
        """PPO epochs over minibatches of environments (each keeps its whole rollout)."""
        cfg = self.cfg
        adv, returns = self.advantages(buf)
        if cfg.value_norm:
            self.value_norm.update(returns)
        targets = self.value_norm.normalize(returns) if cfg.value_norm else returns
        stats = {"policy_loss": 0.0, "value_loss": 0.0, "entropy": 0.0, "approx_kl": 0.0, "clipfrac": 0.0}
        count = 0
        per_mb = math.ceil(cfg.num_envs / cfg.num_minibatches)
        for _ in range(cfg.update_epochs):
            order = torch.randperm(cfg.num_envs, generator=self.generator, device=self.device)
            for start in range(0, cfg.num_envs, per_mb):
                idx = order[start:start + per_mb]
                obs, state = buf["obs"][:, idx], buf["state"][:, idx]
                dist = self.actor.distribution(obs)
                logprob, entropy = self.actor.log_prob_entropy(dist, buf["action"][:, idx])
                log_ratio = logprob - buf["logprob"][:, idx]
                ratio = log_ratio.exp()
                a = adv[:, idx]
                a = (a - a.mean()) / (a.std() + 1e-8)
                policy_loss = torch.max(-a * ratio, -a * ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef)).mean()
                value_loss = 0.5 * (self.value(obs, state) - targets[:, idx]).pow(2).mean()
                loss = policy_loss - cfg.ent_coef * entropy.mean() + cfg.vf_coef * value_loss
                self.optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
                self.optimizer.step()
                with torch.no_grad():
                    stats["policy_loss"] += policy_loss.item()
                    stats["value_loss"] += value_loss.item()
                    stats["entropy"] += entropy.mean().item()
                    stats["approx_kl"] += ((ratio - 1) - log_ratio).mean().item()
                    stats["clipfrac"] += ((ratio - 1).abs() > cfg.clip_coef).float().mean().item()
                count += 1
        return {k: v / count for k, v in stats.items()}

    # -- one iteration -------------------------------------------------------------------------
    def train_iteration(self) -> dict[str, Any]:
        """Anneals the learning rate, collects, updates; returns the iteration's metrics."""
        if self.cfg.anneal_lr:
            self.optimizer.param_groups[0]["lr"] = self.cfg.lr * (1.0 - self.update_index / self.num_updates)
        buf = self.collect()
        stats = self.update(buf)
        self.update_index += 1
        returns = buf["episode_returns"]
        return {
            "update": self.update_index,
            "env_steps": self.update_index * self.batch_steps,
            "episodes": len(returns),
            "train_return": sum(returns) / len(returns) if returns else None,
            **stats,
        }

    @torch.no_grad()
    def greedy_policy(self, obs: torch.Tensor) -> torch.Tensor:
        """Each agent's most likely action from its own observation: the policy at execution."""
        return self.actor.greedy(obs.to(self.device).float())

    # -- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the run exactly."""
        return {
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "value_norm": self.value_norm.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "env": self.env.get_state(),
            "obs": self.obs.cpu(),
            "state": self.state.cpu(),
            "episode_return": self.episode_return.cpu(),
            "update_index": self.update_index,
        }

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Restores :meth:`state_dict`."""
        self.actor.load_state_dict(saved["actor"])
        self.critic.load_state_dict(saved["critic"])
        self.value_norm.load_state_dict(saved["value_norm"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.generator.set_state(saved["generator"])
        self.env.load_state(saved["env"])
        self.obs = saved["obs"].to(self.device)
        self.state = saved["state"].to(self.device)
        self.episode_return = saved["episode_return"].to(self.device)
        self.update_index = saved["update_index"]
