"""Experiment kinds of the data axis: the MapReduce shuffle and the retrieve-then-rank funnel."""

from __future__ import annotations

import collections
import time
from typing import Any, Literal

import numpy as np
from pydantic import Field, ValidationInfo, field_validator

from experiments import ExperimentConfig, RunContext, register_kind


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# --------------------------------------------------------------------------------------------
# MapReduce shuffle


class ShuffleConfig(ExperimentConfig):
    """Word count or an inverted index over Python's help topics, with and without a combiner."""

    task: Literal["word_count", "inverted_index"] = Field("word_count", description="The MapReduce job.")
    num_partitions: int = Field(8, ge=1, le=256, description="R, reduce partitions.")
    corpus_repeats: int = Field(1, ge=1, le=50, description="Copies of the corpus (more input, same vocabulary).")
    map_tasks: int = Field(8, ge=1, le=256, description="M, record splits (at most the number of documents).")
    workers: int = Field(2, ge=0, le=64, description="Worker processes (0: run in this process).")

    @field_validator("map_tasks")
    @classmethod
    def _splits_fit(cls, v: int, info: ValidationInfo) -> int:
        from pydoc_data.topics import topics

        docs = len(topics) * info.data.get("corpus_repeats", 1)
        if v > docs:
            raise ValueError(f"map_tasks={v} is larger than the corpus ({docs} documents)")
        return v


@register_kind("shuffle", ShuffleConfig, axis="data",
               description="MapReduce word count / inverted index: stable crc32 partitioning, combiner, partition skew")
def run_shuffle(cfg: ShuffleConfig, ctx: RunContext) -> dict[str, Any]:
    from capabilities.data import shuffle as S
    from envs.api import Agent, MapReducer

    corpus = [(f"{doc}#{r}", text) for r in range(cfg.corpus_repeats) for doc, text in S.pydoc_corpus()]
    if cfg.task == "word_count":
        mapper, reducer = S.word_count_mapper, S.sum_reducer
        reference: dict[Any, Any] = dict(collections.Counter(w for _, t in corpus for w in S.words(t)))
    else:
        mapper, reducer = S.index_mapper, S.postings_reducer
        groups: dict[str, set[str]] = collections.defaultdict(set)
        for doc, text in corpus:
            for w in S.words(text):
                groups[w].add(doc)
        reference = {w: tuple(sorted(d)) for w, d in groups.items()}

    # The job runs through an agent's MapReducer.
    agent = Agent("mapreduce", capabilities=[S.MapReduce(cfg.num_partitions, cfg.workers, cfg.map_tasks)])
    stats = {}
    for combine in (False, True):
        t0 = time.perf_counter()
        parts, st = agent.get(MapReducer).map_reduce(corpus, mapper, reducer, combiner=reducer if combine else None)
        ctx.log_timing(combiner=combine, seconds=time.perf_counter() - t0, workers=cfg.workers)
        merged = {k: v for p in parts for k, v in p.items()}
        owners = collections.Counter(k for p in parts for k in p)
        ok = merged == reference and set(owners.values()) == {1}
        if not ok:
            raise RuntimeError(f"MapReduce output differs from the single-process reference (combiner={combine})")
        stats[combine] = st
        ctx.log(combiner=combine, pairs_emitted=st.pairs_emitted, pairs_shuffled=st.pairs_shuffled,
                bytes_shuffled=st.bytes_shuffled, keys=len(merged), equals_reference=ok)
    plain, comb = stats[False], stats[True]
    for r in range(cfg.num_partitions):
        ctx.log(partition=r, keys=plain.keys_per_partition[r], pairs_plain=plain.pairs_per_partition[r],
                pairs_combiner=comb.pairs_per_partition[r], bytes_plain=plain.bytes_per_partition[r],
                bytes_combiner=comb.bytes_per_partition[r])

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    x = np.arange(cfg.num_partitions)
    axes[0].bar(x - 0.2, plain.pairs_per_partition, 0.4, label=f"no combiner ({plain.pairs_shuffled:,} pairs)")
    axes[0].bar(x + 0.2, comb.pairs_per_partition, 0.4, label=f"combiner ({comb.pairs_shuffled:,} pairs)")
    axes[0].set(xlabel="reduce partition (crc32(key) mod R)", ylabel="pairs received", yscale="log",
                title=f"{cfg.task}: pairs per partition")
    axes[0].legend(fontsize=8)
    axes[1].bar(x, plain.keys_per_partition, color="tab:green")
    mean_keys = np.mean(plain.keys_per_partition)
    axes[1].axhline(mean_keys, color="k", lw=0.8, ls="--", label=f"mean {mean_keys:.0f}")
    axes[1].set(xlabel="reduce partition", ylabel="distinct keys owned", title="keys per partition")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"MapReduce shuffle over pydoc topics: {plain.bytes_shuffled:,} bytes without combiner, "
                 f"{comb.bytes_shuffled:,} with", fontsize=10)
    ctx.save_figure(fig, "partition_sizes")
    return {
        "keys": sum(plain.keys_per_partition),
        "bytes_shuffled_no_combiner": plain.bytes_shuffled,
        "bytes_shuffled_combiner": comb.bytes_shuffled,
        "combiner_bytes_reduction": plain.bytes_shuffled / comb.bytes_shuffled,
        "pairs_shuffled_no_combiner": plain.pairs_shuffled,
        "pairs_shuffled_combiner": comb.pairs_shuffled,
        "pair_skew_max_over_mean": max(plain.pairs_per_partition) / float(np.mean(plain.pairs_per_partition)),
        "key_skew_max_over_mean": max(plain.keys_per_partition) / float(mean_keys),
    }


# --------------------------------------------------------------------------------------------
# Retrieve-then-rank funnel


class FunnelConfig(ExperimentConfig):
    """BM25 / ANN first stage, MiniLM reranker, recall against exhaustive MiniLM scoring."""

    pool_size: int = Field(400, ge=1, description="Passages in the pool (a seeded sample of the pydoc topics).")
    num_queries: int = Field(10, ge=1, le=40, description="Queries (the first of funnel.QUERIES).")
    k: int = Field(10, ge=1, description="Final results per query.")
    candidates: list[int] = Field([10, 20, 50, 100], min_length=1, description="K values: stage-one candidates.")
    stage1: list[Literal["bm25", "hnsw", "ivf"]] = Field(["bm25", "hnsw"], min_length=1, description="First stages.")
    lsa_dim: int = Field(64, ge=2, description="Dimensions of the ANN stage's TF-IDF+SVD vectors.")
    ef_search: int = Field(32, ge=1, description="HNSW search beam.")
    nlist: int = Field(16, ge=1, description="IVF clusters.")
    nprobe: int = Field(2, ge=1, description="IVF clusters searched.")

    @field_validator("pool_size")
    @classmethod
    def _pool_fits(cls, v: int) -> int:
        from capabilities.data.funnel import pydoc_passages

        n = len(pydoc_passages())
        if v > n:
            raise ValueError(f"pool_size={v} is larger than the corpus ({n} passages)")
        return v

    @field_validator("candidates")
    @classmethod
    def _candidates_fit(cls, v: list[int], info: ValidationInfo) -> list[int]:
        k, pool = info.data.get("k", 1), info.data.get("pool_size", 10**9)
        bad = [K for K in v if not k <= K <= pool]
        if bad:
            raise ValueError(f"K = {bad}: every K must be in [k={k}, pool_size={pool}]")
        return v

    @field_validator("nprobe")
    @classmethod
    def _nprobe_fits(cls, v: int, info: ValidationInfo) -> int:
        nlist, pool = info.data.get("nlist", v), info.data.get("pool_size", 10**9)
        if not v <= nlist <= pool:
            raise ValueError(f"need nprobe <= nlist <= pool_size, got nprobe={v}, nlist={nlist}, pool_size={pool}")
        return v


@register_kind("funnel", FunnelConfig, axis="data",
               description="Retrieve-then-rank: recall@k per stage against exhaustive MiniLM scoring as K varies")
def run_funnel(cfg: FunnelConfig, ctx: RunContext) -> dict[str, Any]:
    from capabilities.data import funnel as F
    from envs.api import Agent, Searcher

    passages = F.pydoc_passages()
    rng = np.random.default_rng(cfg.seed)
    pool = [passages[i] for i in np.sort(rng.choice(len(passages), cfg.pool_size, replace=False))]
    queries = list(F.QUERIES[: cfg.num_queries])

    t0 = time.perf_counter()
    model = F.load_minilm()
    reranker = F.DenseReranker(pool, model)
    ctx.log_timing(stage="load_model", seconds=time.perf_counter() - t0)
    t0 = time.perf_counter()
    truth = reranker.exhaustive(queries, cfg.k)
    exhaustive_s = time.perf_counter() - t0
    # Per query under stage two's cost model (documents encoded at query time, no reuse across
    # queries): one query costs N + 1 of the N + Q encodings just timed.
    exhaustive_per_query = exhaustive_s * (cfg.pool_size + 1) / (cfg.pool_size + len(queries))
    ctx.log_timing(stage="exhaustive", seconds=exhaustive_s, per_query=exhaustive_per_query)

    retrievers: dict[str, Any] = {}
    for name in cfg.stage1:
        t0 = time.perf_counter()
        if name == "bm25":
            retrievers[name] = F.BM25Retriever(pool)
        else:
            enc = F.LSAEncoder(pool, cfg.lsa_dim, seed=cfg.seed)
            retrievers[name] = F.ANNRetriever(pool, enc, index=name, ef_search=cfg.ef_search,
                                              nlist=cfg.nlist, nprobe=cfg.nprobe, seed=cfg.seed)
        ctx.log_timing(stage=f"index_{name}", seconds=time.perf_counter() - t0)

    rows: list[dict[str, Any]] = []
    for name, ret in retrievers.items():
        for K in ctx.progress(sorted(cfg.candidates), description=f"funnel {name}"):
            # Each (stage one, K) is a searching agent; the queries go through its Searcher.
            agent = Agent(f"{name}/K{K}", capabilities=[F.RetrieveThenRank(ret, reranker, k=cfg.k, K=K)])
            res = agent.get(Searcher).search(queries)
            row = {"stage1": name, "K": K,
                   "stage1_recall_at_K": F.recall(res.candidates, truth),
                   "stage1_recall_at_k": F.recall([c[: cfg.k] for c in res.candidates], truth),
                   "final_recall_at_k": F.recall(res.final, truth),
                   "reranker_texts_per_query": K + 1}
            ctx.log(**row)
            ms1, ms2 = 1e3 * res.stage1_seconds.mean(), 1e3 * res.stage2_seconds.mean()
            ctx.log_timing(stage1=name, K=K, stage1_ms=ms1, stage2_ms=ms2)
            rows.append({**row, "stage1_ms": ms1, "stage2_ms": ms2})

    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4), gridspec_kw={"width_ratios": [0.8, 1, 1]})
    kmax = max(cfg.candidates)
    widths = [cfg.pool_size, kmax, cfg.k]
    labels = [f"pool N={cfg.pool_size}", f"stage 1: top K (up to {kmax})", f"stage 2: top k={cfg.k}"]
    for y, (w, lab) in enumerate(zip(widths, labels, strict=True)):
        axes[0].barh(-y, np.log10(w) + 0.2, left=-(np.log10(w) + 0.2) / 2, height=0.6, color=f"C{y}")
        axes[0].text(0, -y, lab, ha="center", va="center", fontsize=9, color="white", weight="bold")
    first = next(iter(retrievers))
    top = [r for r in rows if r["stage1"] == first and r["K"] == kmax][0]
    axes[0].text(0, -1.5, f"{first}: recall@{kmax} = {top['stage1_recall_at_K']:.2f}", ha="center", fontsize=8)
    axes[0].text(0, -2.5, f"after rerank: recall@{cfg.k} = {top['final_recall_at_k']:.2f}", ha="center", fontsize=8)
    axes[0].set(xticks=[], yticks=[], ylim=(-2.8, 0.5), title="the funnel (widths log-scaled)")
    for i, name in enumerate(retrievers):
        rs = [r for r in rows if r["stage1"] == name]
        Ks = [r["K"] for r in rs]
        axes[1].plot(Ks, [r["stage1_recall_at_K"] for r in rs], "o-", color=f"C{i}", label=f"{name}: stage 1 recall@K")
        axes[1].plot(Ks, [r["final_recall_at_k"] for r in rs], "s--", color=f"C{i}", label=f"{name}: final recall@{cfg.k}")
        axes[1].axhline(rs[0]["stage1_recall_at_k"], color=f"C{i}", lw=0.8, ls=":",
                        label=f"{name} alone: recall@{cfg.k}")
        axes[2].plot(Ks, [r["stage2_ms"] + r["stage1_ms"] for r in rs], "o-", color=f"C{i}", label=f"{name} + rerank")
    axes[1].set(xlabel="K (candidates reranked)", ylabel="recall vs exhaustive MiniLM", ylim=(0, 1.05), xscale="log",
                title="recall per stage")
    axes[1].set_xticks(sorted(cfg.candidates), [str(K) for K in sorted(cfg.candidates)], minor=False)
    axes[1].set_xticks([], minor=True)
    axes[1].legend(fontsize=7)
    axes[2].axhline(1e3 * exhaustive_per_query, color="k", ls="--", label="exhaustive MiniLM (all N)")
    axes[2].set(xlabel="K", ylabel="ms per query (measured)", xscale="log", yscale="log", title="cost per query")
    axes[2].set_xticks(sorted(cfg.candidates), [str(K) for K in sorted(cfg.candidates)], minor=False)
    axes[2].set_xticks([], minor=True)
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    ctx.save_figure(fig, "funnel")
    best = max(rows, key=lambda r: (r["K"], r["final_recall_at_k"]))
    out: dict[str, Any] = {"pool_size": cfg.pool_size, "queries": len(queries)}
    for name in retrievers:
        rs = [r for r in rows if r["stage1"] == name]
        out[f"{name}_alone_recall_at_{cfg.k}"] = rs[0]["stage1_recall_at_k"]
        out[f"{name}_funnel_recall_at_{cfg.k}_K{rs[-1]['K']}"] = rs[-1]["final_recall_at_k"]
    out["max_K_reranker_fraction_of_pool"] = best["K"] / cfg.pool_size
    return out
