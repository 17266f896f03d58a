"""Figures of the swarm experiments: phase diagrams, snapshots with headings, the flock GIF."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def draw_swarm(ax: Any, positions: np.ndarray, headings: np.ndarray, box: float, *,
               title: str = "", color: Any = "tab:blue") -> Any:
    """Agents as arrows along their headings in a [0, box]^2 axes; returns the quiver."""
    # Arrows shrink as a crowd grows, so 10,000 agents stay readable in one panel.
    n = len(positions)
    q = ax.quiver(positions[:, 0], positions[:, 1], np.cos(headings), np.sin(headings),
                  color=color, angles="xy", pivot="middle", scale=40 * max(1.0, np.sqrt(n / 200)),
                  width=0.004 / max(1.0, np.sqrt(n / 1000)))
    ax.set(xlim=(0, box), ylim=(0, box), aspect="equal", title=title)
    ax.set_xticks([])
    ax.set_yticks([])
    return q


def phase_curves(x: np.ndarray, curves: dict[str, np.ndarray], *, xlabel: str, ylabel: str,
                 title: str, reference: tuple[np.ndarray, np.ndarray, str] | None = None) -> Any:
    """Mean +- standard deviation over seeds: ``curves[label]`` is (len(x), seeds)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, values in curves.items():
        ax.errorbar(x, values.mean(1), yerr=values.std(1), marker="o", ms=4, capsize=3, label=label)
    if reference is not None:
        rx, ry, rlabel = reference
        ax.plot(rx, ry, "k--", lw=1, label=rlabel)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title, ylim=(0, 1.05))
    ax.legend(fontsize=8)
    return fig


def couzin_figure(widths: np.ndarray, polar: np.ndarray, rot: np.ndarray,
                  snapshots: Sequence[tuple[str, float, dict[str, Any]]]) -> Any:
    """Polarization and rotation vs the orientation-zone width, above one snapshot per regime."""
    plt = _plt()
    fig = plt.figure(figsize=(10, 7))
    grid = fig.add_gridspec(2, max(len(snapshots), 1), height_ratios=[1.1, 1])
    ax = fig.add_subplot(grid[0, :])
    for values, label in ((polar, "polarization P"), (rot, "rotation M")):
        ax.errorbar(widths, values.mean(1), yerr=values.std(1), marker="o", ms=4, capsize=3, label=label)
    ax.set(xlabel="orientation zone width $\\Delta r_o$", ylabel="order", ylim=(0, 1.05),
           title="Couzin zones: swarm, torus, parallel")
    ax.legend()
    for k, (regime, width, snap) in enumerate(snapshots):
        sub = fig.add_subplot(grid[1, k])
        pos, head, box = snap["positions"], snap["headings"], snap["box"]
        # Zoom on the group: positions relative to its periodic centre.
        from swarm.metrics import periodic_centre
        from swarm.neighbours import minimum_image

        rel = minimum_image(pos - periodic_centre(pos, box), box)
        half = max(np.abs(rel).max() * 1.15, 3.0)
        sub.quiver(rel[:, 0], rel[:, 1], np.cos(head), np.sin(head), angles="xy", pivot="middle",
                   scale=25, width=0.006, color="tab:red")
        sub.set(xlim=(-half, half), ylim=(-half, half), aspect="equal",
                title=f"{regime} ($\\Delta r_o$={width:g})")
        sub.set_xticks([])
        sub.set_yticks([])
    fig.tight_layout()
    return fig


def flock_snapshot(positions: np.ndarray, headings: np.ndarray, box: float,
                   polarization: np.ndarray, title: str) -> Any:
    """The final state with headings, beside polarization over time."""
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4.6), gridspec_kw={"width_ratios": [1, 1.2]})
    draw_swarm(a, positions, headings, box, title=title)
    b.plot(np.arange(len(polarization)), polarization)
    b.set(xlabel="step", ylabel="polarization", ylim=(0, 1.02), title="Order emerges")
    fig.tight_layout()
    return fig


def flock_gif(frames: Sequence[tuple[np.ndarray, np.ndarray]], box: float, path: Path, *,
              fps: int = 10, title: str = "") -> None:
    """Writes an animated GIF of ``frames`` (positions, headings) with matplotlib's PillowWriter."""
    panels_gif([[f] for f in frames], box, path, titles=[title], fps=fps)


def panels_gif(frames: Sequence[Sequence[tuple[np.ndarray, np.ndarray]]], box: float, path: Path, *,
               titles: Sequence[str], fps: int = 10) -> None:
    """An animated GIF of swarms side by side: ``frames[t][p]`` is panel p's (positions, headings) at frame t."""
    plt = _plt()
    from matplotlib.animation import FuncAnimation, PillowWriter

    fig, axes = plt.subplots(1, len(titles), figsize=(4.5 * len(titles), 4.5), squeeze=False)
    quivers = [draw_swarm(ax, pos, head, box, title=title)
               for ax, (pos, head), title in zip(axes[0], frames[0], titles, strict=True)]

    def update(k: int) -> Any:
        for q, (pos, head) in zip(quivers, frames[k], strict=True):
            q.set_offsets(pos)
            q.set_UVC(np.cos(head), np.sin(head))
        return tuple(quivers)

    anim = FuncAnimation(fig, update, frames=len(frames), blit=False)
    anim.save(str(path), writer=PillowWriter(fps=fps), dpi=72)
    plt.close(fig)


def order_over_time(series: dict[int, dict[str, dict[str, np.ndarray]]]) -> Any:
    """Polarization (top) and cluster count (bottom) over time, one column per swarm size.

    ``series[n][policy]`` holds arrays ``step``, ``polarization`` and ``clusters``.
    """
    plt = _plt()
    sizes = list(series)
    fig, axes = plt.subplots(2, len(sizes), figsize=(4.2 * len(sizes), 6.4), squeeze=False, sharex="col")
    for col, n in enumerate(sizes):
        for name, s in series[n].items():
            axes[0, col].plot(s["step"], s["polarization"], label=name)
            axes[1, col].plot(s["step"], s["clusters"], label=name)
        axes[0, col].set(title=f"N={n:,}", ylim=(0, 1.02), ylabel="polarization" if col == 0 else None)
        axes[1, col].set(xlabel="step", yscale="log", ylabel="clusters" if col == 0 else None)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def snapshot_grid(states: dict[int, dict[str, tuple[np.ndarray, np.ndarray, float]]], title: str) -> Any:
    """The final swarms: one row per size, one column per policy; ``states[n][policy]`` = (positions, headings, box)."""
    plt = _plt()
    sizes = list(states)
    names = list(states[sizes[0]])
    fig, axes = plt.subplots(len(sizes), len(names), figsize=(3.6 * len(names), 3.6 * len(sizes)), squeeze=False)
    for row, n in enumerate(sizes):
        for col, name in enumerate(names):
            pos, head, box = states[n][name]
            draw_swarm(axes[row, col], pos, head, box, title=f"{name}, N={n:,}")
    fig.suptitle(title)
    fig.tight_layout()
    return fig
