"""The actors, the critics and value normalization of MAPPO / IPPO.

The split between what each network may see is structural, not a convention:

* :class:`Actor` maps ``[..., N, obs_dim]`` to one action distribution per agent with weights
  applied row by row, so agent i's action depends on its own observation only (plus its id
  when parameters are shared);
* :class:`CentralCritic` takes ``state [..., state_dim]`` (``env.state()``) and nothing else,
  and returns one value per agent (agents may get different rewards);
* :class:`LocalCritic` (IPPO) is shaped like the actor: agent i's value from its own
  observation.

:class:`AgentLinear` holds one weight matrix per agent, or a single one shared by all.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from envs.image import is_image_shape


class AgentLinear(nn.Module):
    """A linear layer applied to each agent's row: ``[..., N, in] -> [..., N, out]``.

    Args:
        groups: 1 to share the weights between agents, else N (one weight matrix each).
        in_features: Input width.
        out_features: Output width.
        gain: Orthogonal initialization gain.
        generator: Generator of the initial weights (the caller's, for seeding).
    """

    def __init__(self, groups: int, in_features: int, out_features: int, gain: float = math.sqrt(2),
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.groups = groups
        self.in_features = in_features
        self.weight = nn.Parameter(torch.empty(groups, in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(groups, out_features))
        for g in range(groups):
            w = torch.empty(out_features, in_features)
            nn.init.orthogonal_(w, gain=gain, generator=generator)
            self.weight.data[g] = w.T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.groups == 1:
            return x @ self.weight[0] + self.bias[0]
        # x[..., n, :] @ weight[n]: an einsum keeps agents apart without a Python loop.
        return torch.einsum("...ni,nio->...no", x, self.weight) + self.bias


def agent_mlp(groups: int, in_features: int, hidden: int, out_features: int, out_gain: float,
              generator: torch.Generator | None = None) -> nn.Sequential:
    """Two tanh hidden layers of ``hidden`` units, per-agent weights when ``groups`` > 1."""
    return nn.Sequential(
        AgentLinear(groups, in_features, hidden, generator=generator),
        nn.Tanh(),
        AgentLinear(groups, hidden, hidden, generator=generator),
        nn.Tanh(),
        AgentLinear(groups, hidden, out_features, gain=out_gain, generator=generator),
    )


class _AgentInputs(nn.Module):
    """Appends a one-hot agent id to each agent's row when parameters are shared."""

    def __init__(self, num_agents: int, share_params: bool) -> None:
        super().__init__()
        self.num_agents = num_agents
        self.share_params = share_params
        self.register_buffer("ids", torch.eye(num_agents), persistent=False)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        if not self.share_params:
            return obs
        return torch.cat((obs, self.ids.to(obs.dtype).expand(*obs.shape[:-1], self.num_agents)), dim=-1)


class ImageEncoder(nn.Module):
    """A small CNN for image observations ``[..., H*W*C]`` (flattened HWC) -> ``[..., hidden]``.

    Nature-DQN-like strides sized to the image: two strided convolutions (kernel 3, stride 2
    for images of at least 32 pixels a side, else stride 1), then a linear layer. Pixel values
    are divided by ``scale`` (255 for uint8 images) first. Images wider or taller than 84
    pixels are first averaged over ``k x k`` blocks, ``k = ceil(max(H, W) / 84)``.

    Args:
        shape: The image shape (H, W, C) as the environment gives it.
        hidden: Output width.
        scale: Divisor of the raw values.
        generator: Generator of the initial weights.
    """

    def __init__(self, shape: tuple[int, int, int], hidden: int, scale: float = 1.0,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        h, w, c = shape
        self.shape = (h, w, c)
        self.scale = scale
        stride = 2 if min(h, w) >= 32 else 1
        # Large images (cooperative_pong: 280x480) are pooled first: the policy needs positions,
        # not every pixel, and the network then costs about the same at any resolution. Whole
        # k x k blocks (each pixel read once) cost a fraction of an adaptive pool's overlapping
        # windows, the most expensive step of the network on such images.
        k = math.ceil(max(h, w) / 84)
        self.pool = nn.AvgPool2d(k) if k > 1 else nn.Identity()
        self.conv = nn.Sequential(nn.Conv2d(c, 16, 3, stride=stride), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=stride), nn.ReLU())
        with torch.no_grad():
            flat = self.conv(self.pool(torch.zeros(1, c, h, w))).numel()
        self.out = nn.Linear(flat, hidden)
        for m in [*self.conv, self.out]:
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.orthogonal_(m.weight.data.view(m.weight.shape[0], -1), gain=math.sqrt(2), generator=generator)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        h, w, c = self.shape
        # Pooled before scaling: the division then touches k*k times fewer values.
        img = self.pool(x.reshape(-1, h, w, c).permute(0, 3, 1, 2)) / self.scale
        return torch.relu(self.out(self.conv(img).flatten(1))).reshape(*lead, -1)


class Actor(nn.Module):
    """Decentralized policies of one group of agents with equal spaces.

    Agent i's action distribution comes from its own observation only. Continuous actions
    are a Gaussian over an unbounded ``u`` squashed by ``tanh`` into the Box's bounds, so every
    action lies inside ``[low, high]``; :meth:`log_prob_entropy` includes the change of
    variables, so the log-probability is that of the action actually sent.

    Args:
        num_agents: Agents in the group.
        obs_dim: Width of one agent's (flattened) observation.
        act_dim: Discrete actions (logits) or continuous dimensions.
        continuous: Gaussian policy instead of a categorical one.
        share_params: One network for every agent of the group, told apart by a one-hot id.
        agent_id: With ``share_params``, append the one-hot agent id to each input. Default True.
            False: the network reads the observation alone, so it runs at any number of agents.
        hidden: Hidden width. Default 64.
        log_std_init: Initial log standard deviation of a continuous action's Gaussian. Default -0.5.
        low: Lower bounds of a continuous action (one per dimension); None: unbounded.
        high: Upper bounds of a continuous action; None: unbounded.
        image_shape: (H, W, C) of an image observation: a CNN encoder reads it first.
        image_scale: Divisor of the image's values (255 for uint8). Default 1.
        generator: Generator of the initial weights.
    """

    def __init__(self, num_agents: int, obs_dim: int, act_dim: int, *, continuous: bool, share_params: bool,
                 agent_id: bool = True, hidden: int = 64, log_std_init: float = -0.5,
                 low: list[float] | None = None, high: list[float] | None = None,
                 image_shape: tuple[int, int, int] | None = None, image_scale: float = 1.0,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.continuous = continuous
        self.num_agents = num_agents
        self.obs_dim = obs_dim
        share_ids = share_params and agent_id and num_agents > 1
        self.inputs = _AgentInputs(num_agents, share_ids)
        self.encoder = ImageEncoder(image_shape, hidden, image_scale, generator=generator) if image_shape else None
        feat = hidden if image_shape else obs_dim
        self.in_features = feat + (num_agents if share_ids else 0)
        self.net = agent_mlp(1 if share_params else num_agents, self.in_features, hidden, act_dim, out_gain=0.01, generator=generator)
        self.bounded = continuous and low is not None and high is not None
        if self.bounded:
            lo = torch.tensor(low, dtype=torch.float32)
            hi = torch.tensor(high, dtype=torch.float32)
            self.register_buffer("center", (hi + lo) / 2)
            self.register_buffer("half_range", (hi - lo) / 2)
        if continuous:
            self.log_std = nn.Parameter(torch.full((num_agents, act_dim), float(log_std_init)))

    def distribution(self, obs: torch.Tensor) -> torch.distributions.Distribution:
        """The distribution of every agent (over ``u`` before squashing); ``obs`` is [..., n, obs_dim]."""
        x = self.encoder(obs) if self.encoder is not None else obs
        out = self.net(self.inputs(x))
        if self.continuous:
            return torch.distributions.Normal(out, self.log_std.exp().expand_as(out))
        return torch.distributions.Categorical(logits=out)

    def log_prob_entropy(self, dist: torch.distributions.Distribution, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probability of ``actions`` (``u`` for continuous ones) and entropy, per agent.

        For a squashed Gaussian, ``a = center + half_range * tanh(u)`` has density
        ``N(u) / prod(half_range * (1 - tanh(u)^2))``; the entropy is the Gaussian's (the
        squashed one has no closed form; this is the usual bonus).
        """
        if self.continuous:
            logp = dist.log_prob(actions)
            if self.bounded:
                # log(1 - tanh(u)^2) = 2 * (log 2 - u - softplus(-2u)), stable for large |u|.
                log_det = 2.0 * (math.log(2.0) - actions - nn.functional.softplus(-2.0 * actions))
                logp = logp - log_det - self.half_range.log()
            return logp.sum(-1), dist.entropy().sum(-1)
        return dist.log_prob(actions.long()), dist.entropy()

    def to_env(self, actions: torch.Tensor) -> torch.Tensor:
        """What the environment receives: ``u`` squashed into the bounds (continuous) or the index."""
        if self.bounded:
            return self.center + self.half_range * torch.tanh(actions)
        return actions

    def greedy(self, obs: torch.Tensor) -> torch.Tensor:
        """The most likely action of every agent (the mean ``u`` for continuous actions)."""
        dist = self.distribution(obs)
        return dist.mean if self.continuous else dist.logits.argmax(-1)


def state_image(space: object, encoder: str = "auto") -> dict[str, object]:
    """The :class:`CentralCritic` image arguments for a state space, ``{}`` for a flat state.

    ``auto`` reads an (H, W, C) state with C <= 4 and H, W >= 8 as an image (as the actors'
    observations), ``cnn`` any (H, W, C) state, ``mlp`` none. uint8 values are divided by 255.
    """
    shape = tuple(int(d) for d in getattr(space, "shape", None) or ())
    if encoder == "mlp" or len(shape) != 3 or (encoder == "auto" and not is_image_shape(shape)):
        return {}
    return {"image_shape": shape, "image_scale": 255.0 if str(getattr(space, "dtype", "")) == "uint8" else 1.0}


class CentralCritic(nn.Module):
    """V(state) for every agent: its only input is the global state ``[..., state_dim]``.

    Args:
        num_agents: Agents valued (one output each).
        state_dim: Width of the (flattened) state.
        hidden: Hidden width. Default 64.
        image_shape: (H, W, C) of an image state (cooperative_pong's screen): an
            :class:`ImageEncoder` reads it first, instead of a first layer with a weight per
            pixel (6.5 million at 140x240x3). Default None: an MLP on the flat state.
        image_scale: Divisor of the image's values (255 for uint8). Default 1.
        generator: Generator of the initial weights.
    """

    def __init__(self, num_agents: int, state_dim: int, hidden: int = 64, generator: torch.Generator | None = None,
                 image_shape: tuple[int, int, int] | None = None, image_scale: float = 1.0) -> None:
        super().__init__()
        self.in_features = state_dim
        self.encoder = ImageEncoder(image_shape, hidden, image_scale, generator=generator) if image_shape else None
        self.net = agent_mlp(1, hidden if image_shape else state_dim, hidden, num_agents, out_gain=1.0, generator=generator)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        """Values [..., N] from state [..., state_dim]."""
        return self.net(self.encoder(state) if self.encoder is not None else state)


class LocalCritic(nn.Module):
    """IPPO's critic: agent i's value from its own observation ``[..., N, obs_dim]`` only."""

    def __init__(self, num_agents: int, obs_dim: int, *, share_params: bool, hidden: int = 64,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.inputs = _AgentInputs(num_agents, share_params)
        self.in_features = obs_dim + (num_agents if share_params else 0)
        self.net = agent_mlp(1 if share_params else num_agents, self.in_features, hidden, 1, out_gain=1.0, generator=generator)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Values [..., N] from observations [..., N, obs_dim]."""
        return self.net(self.inputs(obs)).squeeze(-1)


class ValueNorm(nn.Module):
    """Running mean and variance of the value targets (MAPPO's value normalization).

    The critic predicts normalized values; :meth:`denormalize` turns them into returns for GAE,
    :meth:`normalize` turns the targets into what the critic is trained on. Statistics are
    debiased exponential moving averages (``beta`` = 0.99999 as in the MAPPO code).
    """

    def __init__(self, beta: float = 0.99999, eps: float = 1e-5) -> None:
        super().__init__()
        self.beta = beta
        self.eps = eps
        self.register_buffer("mean", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean_sq", torch.zeros((), dtype=torch.float64))
        self.register_buffer("debias", torch.zeros((), dtype=torch.float64))

    def _stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        debias = self.debias.clamp(min=self.eps)
        mean = self.mean / debias
        var = (self.mean_sq / debias - mean**2).clamp(min=1e-2)
        return mean, var

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Folds a batch of targets into the running statistics."""
        x = x.detach().to(torch.float64)
        self.mean.mul_(self.beta).add_(x.mean() * (1 - self.beta))
        self.mean_sq.mul_(self.beta).add_((x**2).mean() * (1 - self.beta))
        self.debias.mul_(self.beta).add_(1 - self.beta)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean, var = self._stats()
        return ((x - mean) / var.sqrt()).to(x.dtype)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        mean, var = self._stats()
        return (x * var.sqrt() + mean).to(x.dtype)
