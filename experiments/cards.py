"""The fourteen cards of the gallery: each picture of the book redrawn from one run's data.

A card names the experiment kinds that can feed it, draws its picture from that run's
``metrics.jsonl``, ``summary.json``, ``config.yaml`` and checkpoint (never from made-up
numbers), and returns one line with the run's headline number. Where a run records too little
for the picture (a block table, a masked vector, a scheduler's timeline), the card replays the
run's own library call on the run's own config, at a size that takes milliseconds.

A card whose run is missing, or whose run cannot be drawn, gets a "no run" picture that
says so; the page never fails because one run is absent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from experiments.kinds import AXES
from experiments.rundir import RunDir

FIGSIZE = (4.8, 3.3)
DPI = 80  # 384 x 264 px: sharp in a card, small on disk


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@dataclass
class Run:
    """What a card reads of one run directory."""

    rundir: RunDir
    summary: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.summary.get("name") or self.rundir.path.name)

    @property
    def headline(self) -> dict[str, Any]:
        h = self.summary.get("headline") or {}
        return h if isinstance(h, dict) else {}

    def config(self) -> dict[str, Any]:
        return self.rundir.read_config()

    def metrics(self, **match: Any) -> list[dict[str, Any]]:
        """The metric lines holding every ``key=value`` of ``match``."""
        return [m for m in self.rundir.read_metrics() if all(m.get(k) == v for k, v in match.items())]

    def checkpoint(self) -> Any:
        """The state of the run's last checkpoint, read only (resume's loader also trims logs)."""
        from experiments import checkpoint

        return checkpoint.loads(self.rundir.checkpoint_path.read_bytes())["state"]


@dataclass(frozen=True)
class Card:
    """One picture of the book.

    Args:
        slug: Anchor and file name.
        title: The picture's name.
        axis: The axis of distribution it belongs to (a key of :data:`AXES`).
        kinds: Experiment kinds whose runs can feed it, best first.
        shows: One line: what the picture shows.
        configs: Shipped configs that make such a run, best first (the first is named on a
            missing card; their runs are preferred over other runs of the same kind).
        draw: ``draw(run, fig) -> headline line``; None for the six-axes card.
    """

    slug: str
    title: str
    axis: str
    kinds: tuple[str, ...]
    shows: str
    configs: tuple[str, ...]
    draw: Callable[[Run, Any], str] | None


from experiments.cards_pictures import (  # noqa: E402 -- the pictures use Run, defined above
    draw_ctde,
    draw_fedavg,
    draw_funnel,
    draw_gang,
    draw_moe,
    draw_paged_kv,
    draw_ps,
    draw_ring,
    draw_scaling,
    draw_secagg,
    draw_shuffle,
    draw_swarm,
    draw_zero,
)

# The book's order.
CARDS: list[Card] = [
    Card("axes", "The six axes of distribution", "intelligence", (), "Every run of this page, placed on its axis; "
         "each axis links to its cards", (), None),
    Card("scaling", "Scale-out vs scale-up", "training", ("scaling",),
         "N processes with a ring all-reduce vs one process with N threads: same losses, different speed", ("scaling_dp",),
         draw_scaling),
    Card("ring", "Ring all-reduce", "training", ("ring_allreduce",),
         "N ranks in a ring pass chunks; each sends 2(N-1)/N of the tensor", ("ring_allreduce",), draw_ring),
    Card("zero", "Sharded data parallelism", "training", ("zero_memory",),
         "Per-rank model-state memory of DP and ZeRO stages 1-3, measured and by formula", ("zero_memory",), draw_zero),
    Card("shuffle", "The MapReduce shuffle", "data", ("shuffle",),
         "Map tasks route every pair to a reducer by hash; pair counts per partition", ("shuffle_wordcount",), draw_shuffle),
    Card("push-pull", "Parameter-server push-pull", "training", ("ps_straggler",),
         "Workers push gradients to sharded servers and pull parameters; the staleness each mode saw", ("ps_straggler",),
         draw_ps),
    Card("gang", "Gang scheduling", "cluster", ("gang_scheduling",),
         "Two 4-worker jobs on 6 slots: greedy placement deadlocks, gang scheduling runs both", ("gang_scheduling",),
         draw_gang),
    Card("fedavg", "One federated round", "training", ("federated",),
         "FedAvg: a hub averages clients with skewed label mixes; accuracy per round",
         ("fedavg_digits", "fedavg_breast_cancer"), draw_fedavg),
    Card("paged-kv", "The paged KV cache", "inference", ("paged_kv",),
         "A block pool whose pages scatter across sequences' block tables", ("paged_kv_sharegpt",), draw_paged_kv),
    Card("moe", "Mixture-of-experts routing", "model", ("moe_balance",),
         "Tokens routed to experts, without and with the load-balancing loss", ("moe_balance",), draw_moe),
    Card("funnel", "The retrieve-then-rank funnel", "data", ("funnel",),
         "A cheap first stage narrows the pool, a cross-encoder reranks the few", ("funnel_pydoc",), draw_funnel),
    Card("emergence", "Emergence from local rules", "intelligence", ("couzin_regimes",),
         "Couzin's zones: a group milling in a torus from local rules alone", ("couzin_regimes",), draw_swarm),
    Card("ctde", "Centralized training, decentralized execution", "intelligence", ("ctde_compare", "mappo"),
         "Actors act on local views; the critic sees the state; greedy return vs baselines",
         ("ctde_spread", "mappo_spread", "ippo_spread"), draw_ctde),
    Card("secagg", "Secure aggregation", "training", ("secagg_protocol",),
         "A client's update, its masked vector, and the exact sum once the masks cancel", ("secagg_protocol",),
         draw_secagg),
]


def pick(card: Card, runs: list[Run]) -> Run | None:
    """The run a card draws: a complete run of its kinds, the card's own configs first.

    Several configs share a kind (``mappo_spread`` and ``mappo_speaker_listener`` are both
    ``mappo``): a run of a config the card names wins, then the first kind that has a run.
    """
    complete = [r for r in runs if r.summary.get("status") == "complete" and r.summary.get("kind") in card.kinds]
    if not complete:
        return None

    def rank(r: Run) -> tuple[int, int]:
        name = r.summary.get("name")
        return (card.configs.index(name) if name in card.configs else len(card.configs),
                card.kinds.index(r.summary["kind"]))

    return min(complete, key=rank)


@dataclass
class Drawn:
    """A drawn card: its picture file, the run it came from (None if missing) and its line."""

    card: Card
    image: Path
    run: Run | None
    line: str
    ok: bool


def draw_axes(fig: Any, runs: list[Run]) -> str:
    ax = fig.subplots()
    counts = {a: sum(1 for r in runs if r.summary.get("axis") == a) for a in AXES}
    names = list(AXES)
    angles = np.pi / 2 - 2 * np.pi * np.arange(len(names)) / len(names)
    top = max(1, max(counts.values()))
    for a, ang in zip(names, angles, strict=True):
        c = counts[a]
        ax.plot([0, np.cos(ang)], [0, np.sin(ang)], color="grey", lw=1)
        ax.plot([0, (0.15 + 0.85 * c / top) * np.cos(ang)], [0, (0.15 + 0.85 * c / top) * np.sin(ang)], lw=6,
                color="tab:blue", alpha=0.7, solid_capstyle="round")
        ax.text(1.18 * np.cos(ang), 1.12 * np.sin(ang), f"{AXES[a]}\n{c} run{'s' if c != 1 else ''}", ha="center",
                va="center", fontsize=7)
    ax.set(xlim=(-1.6, 1.6), ylim=(-1.3, 1.3), aspect="equal", xticks=[], yticks=[])
    for side in ax.spines.values():
        side.set_visible(False)
    return f"{len(runs)} runs on {sum(1 for c in counts.values() if c)} of the 6 axes"


def draw_all(runs: list[Run], folder: Path) -> list[Drawn]:
    """Draws every card into ``folder``; a missing or broken run gives a "no run" card."""
    plt = _plt()
    folder.mkdir(parents=True, exist_ok=True)
    out: list[Drawn] = []
    for i, card in enumerate(CARDS, start=1):
        image = folder / f"{i:02d}-{card.slug}.png"
        run = pick(card, runs) if card.kinds else None
        fig = plt.figure(figsize=FIGSIZE, layout="constrained")
        ok = True
        try:
            if card.draw is None:
                line = draw_axes(fig, runs)
            elif run is None:
                ok = False
                line = f"no complete run of kind {' or '.join(card.kinds)} here: `agora run {card.configs[0]}` makes one"
                _no_run_card(fig, "no run", line)
            else:
                line = card.draw(run, fig)
        except Exception as exc:  # noqa: BLE001 -- one run's odd data must not take the page down
            ok = False
            fig.clear()
            line = f"could not draw from {run.name if run else 'the runs'}: {type(exc).__name__}: {exc}"
            _no_run_card(fig, "not drawn", line)
        fig.savefig(image, dpi=DPI)
        plt.close(fig)
        out.append(Drawn(card, image, run, line, ok))
    return out


def _no_run_card(fig: Any, word: str, line: str) -> None:
    import textwrap

    ax = fig.subplots()
    ax.text(0.5, 0.6, word, ha="center", va="center", fontsize=20, color="#bbb")
    ax.text(0.5, 0.3, "\n".join(textwrap.wrap(line, 50)[:4]), ha="center", va="center", fontsize=7, color="#666")
    ax.set(xticks=[], yticks=[], xlim=(0, 1), ylim=(0, 1))
