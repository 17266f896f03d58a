"""A Mesa SolaraViz app: the swarm in Mesa's continuous space and a live polarization plot.

Run it with ``solara run swarm/app.py``. Sliders set the rule's parameters; the model is
:class:`swarm.model.SwarmModel`, stepped by the same vectorized code as everything else.
"""

from __future__ import annotations

import math

from matplotlib.markers import MarkerStyle
from mesa.visualization import Slider, SolaraViz, SpaceRenderer, make_plot_component
from mesa.visualization.components import AgentPortrayalStyle

from swarm.model import SwarmAgent, SwarmModel
from swarm.rule import RULES


class FlockApp(SwarmModel):
    """A SwarmModel whose parameters are the app's sliders, mapped onto the chosen rule.

    Args:
        rule: "reynolds", "vicsek" or "couzin". Default "reynolds".
        n_agents: Number of agents. Default 100.
        box: Side of the box. Default 100.
        speed: Reynolds/Vicsek: distance per step; Couzin: distance per unit time. Default 1.
        radius: Reynolds vision, Vicsek radius, Couzin orientation-zone width. Default 10.
        separation: Reynolds separation, Couzin repulsion radius. Default 2.
        noise: Vicsek eta, Couzin noise s.d. (Reynolds has none). Default 0.5.
        seed: Seed of the model. Default 42.
    """

    def __init__(self, rule: str = "reynolds", n_agents: int = 100, box: float = 100.0,
                 speed: float = 1.0, radius: float = 10.0, separation: float = 2.0,
                 noise: float = 0.5, seed: int | str = 42) -> None:
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
    "rule": {"type": "Select", "value": "reynolds", "values": list(RULES), "label": "Rule"},
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
