"""The pictures of the cards (:mod:`experiments.cards`), one function per picture.

Each ``draw_X(run, fig)`` draws into ``fig`` from the run's own files and returns the card's
line with the run's headline number.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from experiments.cards import _plt

if TYPE_CHECKING:
    from experiments.cards import Run


def _fmt(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


# ---------------------------------------------------------------------------------------------
# The pictures


def draw_scaling(run: Run, fig: Any) -> str:
    rows = {(m["how"], m["n"]): m for m in run.metrics() if "how" in m}
    h = run.headline
    counts = sorted({n for _, n in rows})
    ax1, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.3]})
    # Left: the two shapes at the largest N: N machines with one worker each vs one machine.
    n = counts[-1]
    for i in range(n):
        ax1.add_patch(_box(0.05 + i * 0.9 / n, 0.55, 0.8 / n, 0.3, "tab:blue"))
    ax1.add_patch(_box(0.05, 0.1, 0.9, 0.3, "tab:orange"))
    for i in range(n):
        ax1.add_patch(_box(0.1 + i * 0.8 / n, 0.15, 0.7 / n, 0.2, "white"))
    ax1.text(0.5, 0.92, f"scale-out: {n} processes", ha="center", fontsize=8)
    ax1.text(0.5, 0.45, f"scale-up: 1 process, {n} threads", ha="center", fontsize=8)
    ax1.set(xlim=(0, 1), ylim=(0, 1), xticks=[], yticks=[])
    for how, color in (("processes", "tab:blue"), ("threads", "tab:orange")):
        vals = [h.get(f"{how}_{c}_samples_per_s") for c in counts]
        ax2.plot(counts, [v if v is not None else np.nan for v in vals], "o-", color=color, label=how)
    ax2.set(xlabel="N", ylabel="samples/s", xticks=counts)
    ax2.legend(fontsize=7)
    ax2.tick_params(labelsize=7)
    ax2.set_title(f"same losses in all {len(rows)} runs: {h.get('same_losses')}", fontsize=8)
    out, up = h.get(f"processes_{n}_samples_per_s"), h.get(f"threads_{n}_samples_per_s")
    return f"N={n}: scale-out {_fmt(out or 0)} vs scale-up {_fmt(up or 0)} samples/s; identical losses: {h.get('same_losses')}"


def _patches() -> Any:
    from matplotlib import patches

    return patches


def _box(x: float, y: float, w: float, h: float, color: str) -> Any:
    from matplotlib.patches import FancyBboxPatch

    return FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.005,rounding_size=0.02", fc=color, ec="k", lw=0.8, alpha=0.85)


def draw_ring(run: Run, fig: Any) -> str:
    rows = [m for m in run.metrics(algorithm="ring") if "max_bytes_over_tensor" in m]
    big = max(m["numel"] for m in rows)
    by_n = sorted((m["world_size"], m["max_bytes_over_tensor"]) for m in rows if m["numel"] == big)
    n = by_n[-1][0]
    ax1, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.1, 1]})
    angles = np.pi / 2 - 2 * np.pi * np.arange(n) / n
    xy = np.c_[np.cos(angles), np.sin(angles)]
    for r in range(n):
        a, b = xy[r], xy[(r + 1) % n]
        ax1.annotate("", b * 0.78, a * 0.78, arrowprops={"arrowstyle": "->", "color": "tab:blue", "lw": 1.5})
        mid = (a + b) / 2 * 1.05
        # Reduce-scatter step 1: rank r sends chunk r (then chunk r-1, ...).
        ax1.text(*mid, f"c{r}", fontsize=7, ha="center", va="center", color="tab:blue")
        ax1.add_patch(_patches().Circle(a * 0.78, 0.17, fc="w", ec="k"))
        ax1.text(*(a * 0.78), f"{r}", ha="center", va="center", fontsize=8)
    ax1.set(xlim=(-1.2, 1.2), ylim=(-1.2, 1.2), aspect="equal", xticks=[], yticks=[])
    ax1.set_title(f"{n} ranks, chunk i passes i -> i+1", fontsize=8)
    ns = [k for k, _ in by_n]
    ax2.plot(ns, [v for _, v in by_n], "o", color="tab:blue", label="measured")
    grid = np.linspace(min(ns), max(ns), 50)
    ax2.plot(grid, 2 * (grid - 1) / grid, "k--", lw=1, label="2(N-1)/N")
    ax2.set(xlabel="N", ylabel="bytes sent / tensor", xticks=ns)
    ax2.legend(fontsize=7)
    ax2.tick_params(labelsize=7)
    got = by_n[-1][1]
    return f"each rank sends {got:.3f}x the tensor at N={n} (2(N-1)/N = {2 * (n - 1) / n:.3f}); equal to gloo: {run.headline.get('all_equal_to_gloo')}"


def draw_zero(run: Run, fig: Any) -> str:
    rows = {m["method"]: m for m in run.metrics() if "method" in m}
    names = [m for m in ("dp", "zero1", "zero2", "zero3") if m in rows]
    ax = fig.subplots()
    bottom = np.zeros(len(names))
    for part, color in (("params", "#4c72b0"), ("grads", "#dd8452"), ("optimizer", "#55a868")):
        vals = np.array([rows[m][f"measured_{part}"] / 1024 for m in names])
        ax.bar(names, vals, bottom=bottom, color=color, label=part)
        bottom += vals
    ax.scatter(names, [rows[m]["formula_total"] / 1024 for m in names], marker="_", s=700, color="k", zorder=3,
               label="formula")
    n = rows[names[0]]["world_size"]
    ax.set(ylabel="KiB per rank", title=f"model state per rank, N={n}")
    ax.legend(fontsize=7)
    ax.tick_params(labelsize=8)
    dp, z3 = rows["dp"]["measured_total"], rows[names[-1]]["measured_total"]
    return f"{names[-1]}: {z3 / 1024:.1f} KiB per rank vs DP {dp / 1024:.1f} KiB ({dp / z3:.1f}x less), same parameters as DP"


def draw_shuffle(run: Run, fig: Any) -> str:
    cfg = run.config()
    parts = sorted((m for m in run.metrics() if "partition" in m), key=lambda m: m["partition"])
    totals = {m["combiner"]: m for m in run.metrics() if "pairs_emitted" in m}
    M, R = int(cfg.get("map_tasks", 8)), len(parts)
    ax = fig.subplots()
    ym = np.linspace(0.9, 0.1, M)
    yr = np.linspace(0.9, 0.1, R)
    for a in ym:
        for b in yr:
            ax.plot([0.22, 0.62], [a, b], color="grey", lw=0.4, alpha=0.6)
    for a in ym:
        ax.add_patch(_box(0.05, a - 0.03, 0.17, 0.06, "tab:blue"))
    pairs = np.array([m["pairs_plain"] for m in parts], float)
    comb = np.array([m["pairs_combiner"] for m in parts], float)
    scale = 0.33 / pairs.max()
    for b, p, c in zip(yr, pairs, comb, strict=True):
        ax.add_patch(_box(0.62, b - 0.03, p * scale, 0.06, "tab:green"))
        ax.add_patch(_box(0.62, b - 0.03, c * scale, 0.06, "tab:olive"))
        ax.text(0.63 + p * scale, b, f"{int(p):,}", fontsize=6, va="center")
    ax.text(0.13, 0.98, f"map ({M})", ha="center", fontsize=8)
    ax.text(0.42, 0.98, "route crc32(key) mod R", ha="center", fontsize=8)
    ax.text(0.78, 0.98, f"reduce ({R})", ha="center", fontsize=8)
    ax.text(0.5, 0.0, "bar: pairs per partition (dark: with combiner)", ha="center", fontsize=7)
    ax.set(xlim=(0, 1.05), ylim=(-0.04, 1.03), xticks=[], yticks=[])
    plain, with_c = totals[False], totals[True]
    return (f"{plain['pairs_emitted']:,} pairs mapped, {plain['pairs_shuffled']:,} shuffled; "
            f"{with_c['pairs_shuffled']:,} with a combiner; equal to the single-process count: {plain['equals_reference']}")


def draw_ps(run: Run, fig: Any) -> str:
    cfg = run.config()
    h = run.headline
    modes = [m for m in ("bsp", "ssp", "async") if f"{m}_max_pull_gap" in h]
    ax1, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.2, 1]})
    S, W = int(cfg.get("num_servers", 2)), int(cfg.get("num_workers", 3))
    for i in range(S):
        ax1.add_patch(_box(0.1 + i * 0.8 / S, 0.72, 0.7 / S, 0.18, "tab:purple"))
        ax1.text(0.1 + (i + 0.45) * 0.8 / S, 0.81, f"shard {i}", ha="center", fontsize=7, color="w")
    for j in range(W):
        x = 0.05 + (j + 0.5) * 0.9 / W
        ax1.add_patch(_box(x - 0.1, 0.08, 0.2, 0.16, "tab:red" if j == 0 else "tab:gray"))
        ax1.text(x, 0.16, "slow" if j == 0 else f"w{j}", ha="center", fontsize=7, color="w")
        ax1.annotate("", (x - 0.03, 0.7), (x - 0.03, 0.26), arrowprops={"arrowstyle": "->", "color": "tab:blue"})
        ax1.annotate("", (x + 0.03, 0.26), (x + 0.03, 0.7), arrowprops={"arrowstyle": "->", "color": "tab:green"})
    ax1.text(0.5, 0.48, "push grads / pull params", ha="center", fontsize=7,
             bbox={"fc": "w", "ec": "none", "alpha": 0.8})
    ax1.set(xlim=(0, 1), ylim=(0, 1), xticks=[], yticks=[])
    gaps = [h[f"{m}_max_pull_gap"] for m in modes]
    ax2.bar(modes, gaps, color=["tab:blue", "tab:orange", "tab:red"][: len(modes)])
    if "ssp" in modes:
        ax2.axhline(cfg.get("staleness", 2), color="k", ls="--", lw=1, label=f"SSP bound s={cfg.get('staleness', 2)}")
        ax2.legend(fontsize=7)
    ax2.set(ylabel="max staleness seen (clocks)")
    ax2.tick_params(labelsize=7)
    parts = [f"{m} {g}" for m, g in zip(modes, gaps, strict=True)]
    held = f"; SSP bound held: {h['ssp_bound_held']}" if "ssp_bound_held" in h else ""
    return f"staleness seen: {', '.join(parts)}{held}; BSP equals sync SGD: {h.get('bsp_equals_sync_sgd')}"


def draw_gang(run: Run, fig: Any) -> str:
    from capabilities.cluster import gang as G

    # The run logs only the outcome of its two-gang example; its timeline is replayed here.
    jobs, cluster = G.deadlock_example()
    logged = {m["policy"]: m for m in run.metrics(case="two_gangs_on_6_slots")}
    axes = fig.subplots(2, 1, sharex=True)
    horizon = 12.0
    for ax, policy in zip(axes, ("greedy", "gang"), strict=True):
        r = G.simulate(jobs, cluster, policy)
        t = [e[0] for e in r.timeline] + [horizon]
        busy = [e[1] for e in r.timeline] + [r.timeline[-1][1]]
        idle = [e[2] for e in r.timeline] + [r.timeline[-1][2]]
        ax.fill_between(t, 0, busy, step="post", color="tab:blue", alpha=0.8, label="running")
        ax.fill_between(t, busy, np.add(busy, idle), step="post", color="tab:red", alpha=0.5, hatch="//",
                        label="held, idle")
        dead = logged.get(policy, {}).get("deadlocked", r.deadlocked)
        ax.set(ylim=(0, cluster.total_slots), xlim=(0, horizon), ylabel="slots")
        ax.set_title(f"{policy}: {'DEADLOCK, nothing ever runs' if dead else f'both jobs done at t={r.end_time:.0f}'}",
                     fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=6, loc="lower right")
    axes[1].set_xlabel("time (two 4-worker gangs on 6 slots)", fontsize=7)
    h = run.headline
    return (f"greedy placement deadlocked {h.get('greedy_deadlocked_trials')} of {h.get('trials')} workloads; "
            f"gang scheduling {h.get('gang_deadlocked_trials')}")


def draw_fedavg(run: Run, fig: Any) -> str:
    from federated.task import label_counts, partition_indices

    cfg = run.config()
    h = run.headline
    plist = cfg.get("partitionings") or [{"partitioner": "iid"}]
    p = next((q for q in plist if q.get("partitioner") != "iid"), plist[0])
    n = int(cfg["num_clients"])
    counts = label_counts(cfg["dataset"], partition_indices(cfg["dataset"], n, p.get("partitioner", "iid"),
                                                            p.get("alpha", 0.5), p.get("classes_per_client", 2),
                                                            int(cfg.get("seed", 0))))
    label = {"dirichlet": f"dirichlet-{p.get('alpha', 0.5):g}",
             "pathological": f"pathological-{p.get('classes_per_client', 2)}"}.get(p.get("partitioner"), "iid")
    ax1, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.1, 1]})
    cmap = _plt().get_cmap("tab10")
    angles = np.pi / 2 - 2 * np.pi * np.arange(n) / n
    for i, a in enumerate(angles):
        x, y = 0.75 * np.cos(a), 0.75 * np.sin(a)
        ax1.plot([0, x], [0, y], color="grey", lw=0.8, zorder=1)
        ax1.pie(counts[i], radius=0.22, center=(x, y), colors=[cmap(c % 10) for c in range(counts.shape[1])],
                wedgeprops={"lw": 0.2, "ec": "w"}, frame=True)
    ax1.add_patch(_patches().Circle((0, 0), 0.2, fc="k", zorder=2))
    ax1.text(0, 0, "avg", color="w", ha="center", va="center", fontsize=7, zorder=3)
    ax1.set(xlim=(-1.05, 1.05), ylim=(-1.05, 1.05), aspect="equal", xticks=[], yticks=[])
    ax1.set_title(f"{n} clients, {label} label mixes", fontsize=8)
    target = float(cfg.get("target_accuracy", 0.95))
    hist = [m for m in run.metrics(partitioning=label) if "round" in m]
    ax2.plot([m["round"] for m in hist], [m["test_acc"] for m in hist], "o-", ms=2.5, label="FedAvg")
    ax2.axhline(target, color="grey", ls=":", label=f"target {target:.0%}")
    ax2.set(xlabel="round", ylabel="test accuracy", ylim=(0, 1.02))
    ax2.legend(fontsize=7, loc="lower right")
    ax2.tick_params(labelsize=7)
    rounds = h.get(f"{label}_rounds_to_{round(target * 100)}")
    reach = f"reaches {target:.0%} in round {rounds}" if rounds is not None else f"does not reach {target:.0%}"
    return f"{label}: {reach} of {len(hist) - 1 if hist and hist[0]['round'] == 0 else len(hist)}; final accuracy {h.get(f'{label}_final_acc', float('nan')):.3f}"


def draw_paged_kv(run: Run, fig: Any) -> str:
    from capabilities.inference.kv_memory import sample_lengths
    from capabilities.inference.paged_kv import PagedKVCache

    cfg = run.config()
    h = run.headline
    # Twelve of the run's requests (same workload, seed and context) served four at a time
    # through the library's PagedKVCache: each decode step every live sequence takes the next
    # free block when its last one fills, and a finished one gives its blocks back, which the
    # next request then reuses, so a table's pages scatter over the pool. Drawn: the pool when
    # the last request starts.
    lengths = [int(n) for n in sample_lengths(12, workload=cfg.get("workload", "sharegpt"),
                                              max_seq_len=int(cfg.get("max_seq_len", 2048)), seed=int(cfg.get("seed", 0)))]
    block = max(1, int(math.ceil(max(lengths) / 6)))
    pool = 24
    cache = PagedKVCache(num_layers=1, num_heads=1, head_dim=1, block_size=block, num_blocks=pool)
    waiting, live, done, snapshot, best = list(range(len(lengths))), [], 0, None, (-1, 0)
    while waiting or live:
        while waiting and len(live) < 4 and cache.allocator.num_free >= -(-lengths[waiting[0]] // block):
            cache.add_sequence(waiting[0])
            live.append(waiting.pop(0))
        cache.reserve(live, [1] * len(live))
        # The fullest pool once freed blocks have been handed out again.
        if done >= 2 and (cache.allocator.num_used, len(live)) > best:
            best = (cache.allocator.num_used, len(live))
            snapshot = ({s: list(t) for s, t in cache.block_tables.items()}, done)
        for s in [s for s in live if cache.lengths[s] >= lengths[s]]:
            cache.free(s)
            live.remove(s)
            done += 1
    tables, done = snapshot or ({}, done)
    cols = 8
    owner = {b: s for s, table in tables.items() for b in table}
    cmap = _plt().get_cmap("tab10")
    ax = fig.subplots()
    Rectangle = _patches().Rectangle
    for b in range(pool):
        x, y = b % cols, -(b // cols)
        s = owner.get(b)
        ax.add_patch(Rectangle((x, y), 0.92, 0.92, fc=cmap(s % 10) if s is not None else "#f2f2f2", ec="k", lw=0.3))
        if s is not None:
            ax.text(x + 0.46, y + 0.46, f"{s}:{tables[s].index(b)}", ha="center", va="center", fontsize=5, color="w")
    ax.set(xlim=(0, cols), ylim=(-(pool // cols) + 0.92, 1.0), xticks=[], yticks=[], aspect="equal")
    ax.set_title(f"pool of {pool} blocks ({block} tokens each) after {done} requests finished\n"
                 "label seq:page; a sequence's pages lie anywhere", fontsize=8)
    return (f"paged cache wastes {100 * h.get('paged_waste', float('nan')):.1f}% of its slots vs "
            f"{100 * h.get('contiguous_waste', float('nan')):.0f}% contiguous; "
            f"{h.get('sequences_fit_paged')} vs {h.get('sequences_fit_contiguous')} sequences fit")


def draw_moe(run: Run, fig: Any) -> str:
    lines = [m for m in run.metrics() if "load" in m and "alpha" in m]
    alphas = sorted({m["alpha"] for m in lines})
    show = [alphas[0], alphas[-1]] if len(alphas) > 1 else alphas
    axes = fig.subplots(len(show), 1, sharex=True, squeeze=False)[:, 0]
    uniform = 1 / len(lines[0]["load"])
    h = run.headline
    for ax, a in zip(axes, show, strict=True):
        last = max((m for m in lines if m["alpha"] == a), key=lambda m: m["step"])
        load = np.array(last["load"])
        ax.bar(np.arange(len(load)), load, color=["tab:red" if v > 2 * uniform else "tab:blue" for v in load])
        ax.axhline(uniform, color="k", ls="--", lw=0.8)
        ax.set_ylabel("tokens", fontsize=7)
        ax.set_title(f"load-balancing loss alpha={a}: max {load.max():.2f}, "
                     f"{int((load < 0.01).sum())} idle experts", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[-1].set_xlabel("expert (fraction of the batch routed to it; dashed: uniform)", fontsize=7)
    a0, a1 = show[0], show[-1]
    return (f"max expert load {h.get(f'alpha_{a0}_max_load', float('nan')):.2f} without the balancing loss, "
            f"{h.get(f'alpha_{a1}_max_load', float('nan')):.2f} with it (uniform {uniform:.3f})")


def draw_funnel(run: Run, fig: Any) -> str:
    cfg = run.config()
    rows = [m for m in run.metrics() if "stage1" in m and "K" in m]
    first = rows[0]["stage1"]
    mine = sorted((m for m in rows if m["stage1"] == first), key=lambda m: m["K"])
    top = mine[-1]
    k = int(cfg.get("k", 10))
    widths = [int(cfg.get("pool_size", 400)), top["K"], k]
    ax = fig.subplots()
    for y, w in enumerate(widths):
        half = 0.1 + 0.8 * math.log10(w) / math.log10(widths[0]) / 2
        ax.add_patch(_patches().Polygon(
            [(0.5 - half, 0.95 - y * 0.3), (0.5 + half, 0.95 - y * 0.3), (0.5 + half * 0.9, 0.75 - y * 0.3),
             (0.5 - half * 0.9, 0.75 - y * 0.3)], fc=f"C{y}", ec="k", alpha=0.85))
    labels = [f"pool: {widths[0]} passages", f"{first}: top K={top['K']} (recall@K {top['stage1_recall_at_K']:.2f})",
              f"MiniLM rerank: top {k} (recall@{k} {top['final_recall_at_k']:.2f})"]
    for y, text in enumerate(labels):
        ax.text(0.5, 0.85 - y * 0.3, text, ha="center", va="center", fontsize=8, color="w", weight="bold")
    ax.set(xlim=(0, 1), ylim=(0.05, 1), xticks=[], yticks=[])
    ax.set_title(f"{cfg.get('num_queries', '?')} queries; recall vs exhaustive MiniLM", fontsize=8)
    return (f"{first} alone recall@{k} {top['stage1_recall_at_k']:.2f}; rerank {top['K']} candidates: "
            f"{top['final_recall_at_k']:.2f}")


def draw_swarm(run: Run, fig: Any) -> str:
    cfg = run.config()
    results = run.checkpoint()
    widths = cfg["orientation_width"]
    seeds = int(cfg.get("seeds", 1))
    first = [results[i * seeds] for i in range(len(widths))]
    # The most milling run (highest rotation) among the snapshots the run kept.
    i = int(np.argmax([r["rotation"] for r in first]))
    r = first[i]
    pos, head, box = np.asarray(r["positions"]), np.asarray(r["headings"]), float(r["box"])
    centre = np.angle(np.exp(1j * 2 * np.pi * pos / box).mean(axis=0)) * box / (2 * np.pi)
    rel = (pos - centre + box / 2) % box - box / 2
    rel -= rel.mean(axis=0)
    # Colour: each fish's turn around the group's centre (+1 anticlockwise, -1 clockwise); a
    # milling torus is one colour all round, a swarm is mixed.
    norm = np.maximum(np.hypot(rel[:, 0], rel[:, 1]), 1e-9)
    turn = (rel[:, 0] * np.sin(head) - rel[:, 1] * np.cos(head)) / norm
    ax = fig.subplots()
    ax.quiver(rel[:, 0], rel[:, 1], np.cos(head), np.sin(head), turn, cmap="coolwarm", clim=(-1, 1), angles="xy",
              width=0.007, headwidth=3.5, pivot="mid")
    span = np.abs(rel).max() * 1.15 + 1
    ax.set(xlim=(-span, span), ylim=(-span, span), aspect="equal", xticks=[], yticks=[])
    ax.text(0.02, 0.02, "colour: turning around the centre\n(red anticlockwise, blue clockwise)",
            transform=ax.transAxes, fontsize=6, color="#555")
    from experiments.swarm import regime

    name = regime(r["polarization"], r["rotation"])
    ax.set_title(f"Couzin zones, N={len(pos)}, orientation width {widths[i]}: {name}", fontsize=8)
    return (f"{name}: rotation {r['rotation']:.2f}, polarization {r['polarization']:.2f} (averages over "
            f"the run's last steps); regimes seen: {', '.join(run.headline.get('regimes_seen', []))}")


def draw_ctde(run: Run, fig: Any) -> str:
    from matplotlib.patches import Circle

    evals = [m for m in run.metrics() if m.get("eval")]
    base = {m["baseline"]: m for m in run.metrics() if "baseline" in m}
    ax1, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [0.9, 1.2]})
    for j in range(3):
        x = 0.18 + 0.32 * j
        ax1.add_patch(Circle((x, 0.2), 0.12, fc="tab:green", alpha=0.3))
        ax1.add_patch(_box(x - 0.1, 0.14, 0.2, 0.12, "tab:green"))
        ax1.text(x, 0.2, f"actor {j}", ha="center", va="center", fontsize=6, color="w")
        ax1.annotate("", (x, 0.68), (x, 0.3), arrowprops={"arrowstyle": "->", "color": "grey", "ls": ":"})
    ax1.add_patch(_box(0.1, 0.7, 0.8, 0.18, "tab:purple"))
    ax1.text(0.5, 0.79, "critic(env.state())", ha="center", va="center", fontsize=7, color="w")
    ax1.text(0.5, 0.02, "acting: local views only", ha="center", fontsize=7)
    ax1.text(0.5, 0.94, "training: one central critic", ha="center", fontsize=7)
    ax1.set(xlim=(0, 1), ylim=(0, 1), xticks=[], yticks=[])
    by_run: dict[str, list[dict[str, Any]]] = {}
    for m in evals:
        by_run.setdefault(m["run"], []).append(m)
    algos: dict[str, list[list[dict[str, Any]]]] = {}
    for key, pts in by_run.items():
        algos.setdefault(key.split("/")[0], []).append(sorted(pts, key=lambda p: p["update"]))
    final = {}
    for algo, runs in algos.items():
        length = min(len(p) for p in runs)
        steps = np.array([p["env_steps"] for p in runs[0][:length]])
        ret = np.array([[p["return"] for p in r[:length]] for r in runs])
        line = ax2.plot(steps, ret.mean(0), label=algo)[0]
        if len(runs) > 1:
            ax2.fill_between(steps, ret.min(0), ret.max(0), color=line.get_color(), alpha=0.2)
        final[algo] = float(ret.mean(0)[-1])
    for name, style in (("random", ":"), ("scripted", "--")):
        if name in base and "return" in base[name]:
            ax2.axhline(base[name]["return"], color="grey", ls=style, lw=1, label=name)
    ax2.set(xlabel="env steps", ylabel="greedy return")
    ax2.legend(fontsize=6, loc="lower right")
    ax2.tick_params(labelsize=6)
    ax2.xaxis.get_offset_text().set_fontsize(6)
    lead = "MAPPO" if "MAPPO" in final else next(iter(final))
    parts = [f"{lead} {final[lead]:.1f}"] + [f"{a} {v:.1f}" for a, v in final.items() if a != lead]
    parts += [f"{b} {base[b]['return']:.1f}" for b in ("random", "scripted") if b in base and "return" in base[b]]
    return "greedy per-agent return: " + ", ".join(parts)


def draw_secagg(run: Run, fig: Any) -> str:
    from secure_agg.quantize import Quantization
    from secure_agg.rounds import MASKED_INPUT
    from secure_agg.simulate import simulate
    from secure_agg.wire import peek_signed

    cfg = run.config()
    rows = run.metrics()
    n = int(cfg["num_clients"][0])
    dim = min(int(cfg.get("dim", 64)), 64)
    # The run's first session size and quantization, replayed on a short vector to show what
    # the server sees; the exactness numbers below are the run's own.
    vectors = [np.sin(np.linspace(0, 6, dim) + u) * 0.9 for u in range(n)]
    seen: dict[Any, np.ndarray] = {}

    def capture(round_name: str, sender: Any, recipient: Any, data: bytes) -> bytes:
        if round_name == MASKED_INPUT and recipient == "server":
            seen[sender] = peek_signed(data)["masked"]
        return data

    t = min(n, int(math.floor(float(cfg.get("threshold", 0.5)) * n)) + 1)
    res = simulate(vectors, t, seed=int(cfg.get("seed", 0)),
                   quantization=Quantization(float(cfg.get("clip", 1.0)), int(cfg.get("bits", 32))), tamper=capture)
    axes = fig.subplots(3, 1, sharex=True)
    axes[0].plot(vectors[0], color="tab:green")
    axes[0].set_title("client 0's update", fontsize=7)
    axes[1].plot(np.asarray(seen[0], dtype=float), ".", ms=2, color="tab:red")
    axes[1].set_title("its masked vector: what the server sees", fontsize=7)
    axes[2].plot(np.sum(vectors, axis=0), lw=3, alpha=0.4, color="k", label="plain sum")
    axes[2].plot(res.aggregate, "--", color="tab:blue", lw=1, label="secure sum")
    axes[2].set_title(f"sum of {n}: the masks cancel", fontsize=7)
    axes[2].legend(fontsize=5, loc="upper right")
    for ax in axes:
        ax.set_yticks([])
        ax.tick_params(labelsize=6)
    drops = [r for r in rows if r.get("dropped")]
    worst = max((r["max_abs_error"] for r in rows if "max_abs_error" in r), default=float("nan"))
    return (f"{len([r for r in rows if 'within_bound' in r])} sessions, {len(drops)} with dropouts: every sum exact within "
            f"the quantization bound ({run.headline.get('all_within_bound')}), max error {worst:.1e}")
