"""Retrieve-then-rank: BM25 + MiniLM reranking of the top K against exhaustive MiniLM scoring.

The reference is the precise model applied to every document of the pool for one query,
measured in the same run; the funnel applies it to K candidates only. Both encode documents at
query time (the cost model of a cross-encoder; a bi-encoder could cache document vectors). Each case prints the latency per query
(ours: BM25 + rerank K; reference: exhaustive) with the funnel's recall@k of that exhaustive
top k as an extra field.
"""

from __future__ import annotations

import time

import numpy as np

from benchmarks.common import emit, parse_args
from capabilities.data import funnel as F


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    pool_size, n_queries, k = (150, 3, 10) if args.quick else (1000, 20, 10)
    Ks = (10, 30) if args.quick else (10, 50, 100)
    passages = F.pydoc_passages()
    rng = np.random.default_rng(0)
    pool = [passages[i] for i in np.sort(rng.choice(len(passages), pool_size, replace=False))]
    queries = list(F.QUERIES[:n_queries])
    rr = F.DenseReranker(pool, F.load_minilm())
    rr.encode(["warm up"])
    truth = rr.exhaustive(queries, k)
    # The reference per query under the same cost model as stage two (documents encoded at
    # query time, as a cross-encoder must): score one query against the whole pool.
    t0 = time.perf_counter()
    rr.score(queries[0], np.arange(pool_size))
    exhaustive_ms = 1e3 * (time.perf_counter() - t0)
    bm25 = F.BM25Retriever(pool)
    for K in Ks:
        res = F.funnel(queries, bm25, rr, k=k, K=K)
        ms = 1e3 * float(np.mean(res.stage1_seconds + res.stage2_seconds))
        emit("funnel", f"BM25 top {K} + MiniLM rerank, pool {pool_size}, {n_queries} queries", "ms/query",
             ms, exhaustive_ms, reference_name="exhaustive MiniLM over the pool", higher_is_better=False,
             recall_at_k=F.recall(res.final, truth), bm25_alone_recall_at_k=F.recall([c[:k] for c in res.candidates], truth),
             stage1_ms=1e3 * float(res.stage1_seconds.mean()), stage2_ms=1e3 * float(res.stage2_seconds.mean()))


if __name__ == "__main__":
    main()
