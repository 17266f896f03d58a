"""A Mesa SolaraViz app: the swarm in Mesa's continuous space and a live polarization plot.

Run it with ``solara run swarm/app.py``. Sliders set the rule's parameters; the model is
:class:`swarm.model.SwarmModel`, stepped by the same vectorized code as everything else. The
rule "learned" is a policy trained by the ``learned_flock`` (or ``mappo``) kind on
``swarm/flock-v0``, read from the run directory typed in the app (default: the environment
variable ``AGORA_SWARM_POLICY``); it acts through its own k-nearest view and turns.
"""

from __future__ import annotations

import math
import os

from matplotlib.markers import MarkerStyle
from mesa.visualization import Slider, SolaraViz, SpaceRenderer, make_plot_component
from mesa.visualization.components import AgentPortrayalStyle

from swarm.model import SwarmAgent, SwarmModel
from swarm.rule import RULES

CHOICES = (*RULES, "learned")


class FlockApp(SwarmModel):
    """A SwarmModel whose parameters are the app's sliders, mapped onto the chosen rule.

    Args:
        rule: "reynolds", "vicsek", "couzin" or "learned". Default "reynolds".
        n_agents: Number of agents. Default 100.
        box: Side of the box. Default 100.
        speed: Reynolds/Vicsek: distance per step; Couzin: distance per unit time. Default 1.
        radius: Reynolds vision, Vicsek radius, Couzin orientation-zone width. Default 10.
        separation: Reynolds separation, Couzin repulsion radius. Default 2.
        noise: Vicsek eta, Couzin noise s.d. (Reynolds has none). Default 0.5.
        seed: Seed of the model. Default 42.
        policy_dir: Run (or policy) directory of the learned policy; only read for "learned".
            Default: ``$AGORA_SWARM_POLICY``. Its speed and view are the training env's.
    """

    def __init__(self, rule: str = "reynolds", n_agents: int = 100, box: float = 100.0,
                 speed: float = 1.0, radius: float = 10.0, separation: float = 2.0,
                 noise: float = 0.5, seed: int | str = 42,
                 policy_dir: str | None = None) -> None:
        if rule == "learned":
            from swarm.learned import load_learned

            policy_dir = os.environ.get("AGORA_SWARM_POLICY", "") if policy_dir is None else policy_dir
            if not str(policy_dir).strip():
                raise ValueError("policy_dir: the learned rule needs a run directory of learned_flock or mappo "
                                 "on swarm/flock-v0 (or set AGORA_SWARM_POLICY)")
            super().__init__(load_learned(str(policy_dir).strip()), int(n_agents), box=box, seed=int(seed))
            return
        params = {
            "reynolds": dict(speed=speed, vision=radius, separation=min(separation, radius)),
            "vicsek": dict(speed=speed, radius=radius, noise=noise),
            "couzin": dict(speed=speed, orientation_width=radius, repulsion=separation, noise=noise),
        }[rule]
        init_radius = 10.0 if rule == "couzin" else None  # Couzin's groups start compact
        super().__init__(rule, int(n_agents), box=box, seed=int(seed), init_radius=init_radius, **params)


# Arrow markers pointing along the heading, one per 10 degrees, built once.
_MARKERS = {}
for _deg in range(0, 360, 10):
    _marker = MarkerStyle(">")
    _marker._transform = _marker.get_transform().rotate_deg(_deg)
    _MARKERS[_deg] = _marker


def agent_portrayal(agent: SwarmAgent) -> AgentPortrayalStyle:
    """An arrow along the agent's heading."""
    deg = int(round(agent.angle / 10.0)) * 10 % 360
    return AgentPortrayalStyle(color="tab:blue", size=25, marker=_MARKERS[deg])


model_params = {
    "seed": {"type": "InputText", "value": 42, "label": "Random seed"},
    "rule": {"type": "Select", "value": "reynolds", "values": list(CHOICES), "label": "Rule"},
    "policy_dir": {"type": "InputText", "value": os.environ.get("AGORA_SWARM_POLICY", ""),
                   "label": "Learned policy (run directory)"},
    "n_agents": Slider("Number of agents", 100, 10, 1000, 10),
    "box": Slider("Box side", 100.0, 10.0, 400.0, 10.0),
    "speed": Slider("Speed", 1.0, 0.0, 5.0, 0.05),
    "radius": Slider("Radius (vision / r / orientation width)", 10.0, 0.5, 30.0, 0.5),
    "separation": Slider("Separation / repulsion", 2.0, 0.5, 10.0, 0.5),
    "noise": Slider("Noise", 0.5, 0.0, round(2 * math.pi, 2), 0.05),
}

model = FlockApp()
renderer = SpaceRenderer(model, backend="matplotlib").render(agent_portrayal=agent_portrayal)
page = SolaraViz(
    model,
    renderer,
    components=[make_plot_component({"polarization": "tab:blue", "rotation": "tab:orange"})],
    model_params=model_params,
    name="Swarm emergence",
)
page  # noqa: B018 -- solara shows the module's last expression
