"""Retrieve-then-rank: exact first stages, recall bounds of the funnel, the real reranker, bad input."""

import numpy as np
import pytest

from capabilities.data import funnel as F


@pytest.fixture(scope="module")
def pool():
    return F.pydoc_passages()[:120]


@pytest.fixture(scope="module")
def lsa(pool):
    return F.LSAEncoder(pool, dim=32, seed=0)


def test_passages_come_from_the_shipped_help_topics():
    from pydoc_data.topics import topics

    passages = F.pydoc_passages()
    assert len(passages) > 1000 and len(set(passages)) == len(passages)
    assert any(p[:80] in " ".join(topics["assert"].split()) for p in passages)


def test_bm25_top_k_is_the_exhaustive_bm25_ranking_and_agrees_with_bm25s_retrieve(pool):
    ret = F.BM25Retriever(pool)
    for q in F.QUERIES[:5]:
        scores = ret.scores(q)
        ids = ret.search(q, 10)
        assert np.all(np.diff(scores[ids]) <= 0)
        assert scores[ids[-1]] >= np.delete(scores, ids).max()
        qids = ret.tokenizer.tokenize([q], update_vocab=False, return_as="ids", show_progress=False)
        _, lib_scores = ret.bm25.retrieve(qids, k=10, show_progress=False)
        np.testing.assert_allclose(np.sort(lib_scores[0])[::-1], scores[ids], rtol=1e-6)


def test_bm25_on_a_hand_checked_corpus():
    ret = F.BM25Retriever(["the cat sat on the mat", "dogs bark at night", "a cat and a dog"])
    assert ret.search("cat", 2).tolist() == [0, 2] or ret.search("cat", 2).tolist() == [2, 0]
    assert ret.scores("cat")[1] == 0.0 and ret.search("night barking dogs", 1).tolist() == [1]


@pytest.mark.parametrize("index,settings", [("hnsw", {"ef_search": 4096}), ("ivf", {"nlist": 8, "nprobe": 8}),
                                            ("flat", {})])
def test_exhaustive_ann_settings_give_the_exact_top_k(pool, lsa, index, settings):
    ret = F.ANNRetriever(pool, lsa, index=index, **settings)
    for q in F.QUERIES:
        got = ret.search(q, 10)
        exact = ret.exact(q, 10)
        # Same set, and the same scores in the same order (ids may swap only on exact ties).
        np.testing.assert_allclose(ret.vectors[got] @ lsa.encode([q])[0], ret.vectors[exact] @ lsa.encode([q])[0],
                                   rtol=1e-5, atol=1e-6)


def test_approximate_ivf_can_miss_what_exhaustive_ivf_finds(pool, lsa):
    cheap = F.ANNRetriever(pool, lsa, index="ivf", nlist=16, nprobe=1)
    truth = [cheap.exact(q, 10) for q in F.QUERIES]
    found = [cheap.search(q, 10) for q in F.QUERIES]
    assert F.recall(found, truth) < 1.0


def test_recall_counts_overlap_per_query():
    assert F.recall(np.array([[1, 2, 3], [4, 5, 6]]), np.array([[3, 2, 9], [7, 8, 9]])) == pytest.approx((2 / 3 + 0) / 2)


class TfidfCosine:
    """A second precise scorer (exact TF-IDF cosine) so the bounds are checked beyond MiniLM."""

    def __init__(self, corpus):
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.v = TfidfVectorizer().fit(corpus)
        self.docs = self.v.transform(corpus)

    def score(self, query, ids):
        return (self.docs[ids] @ self.v.transform([query]).T).toarray().ravel()

    def exhaustive(self, queries, k):
        return np.stack([F.top_k((self.docs @ self.v.transform([q]).T).toarray().ravel(), k) for q in queries])


def test_final_recall_never_exceeds_stage_one_recall_and_reaches_one_at_K_equal_N(pool, lsa):
    scorer = TfidfCosine(pool)
    truth = scorer.exhaustive(F.QUERIES, 5)
    for ret in (F.BM25Retriever(pool), F.ANNRetriever(pool, lsa, index="hnsw", ef_search=8)):
        for K in (5, 10, 40, len(pool)):
            res = F.funnel(F.QUERIES, ret, scorer, k=5, K=K)
            for q in range(len(F.QUERIES)):
                assert set(res.final[q]) <= set(res.candidates[q])
                assert F.recall(res.final[q], truth[q]) <= F.recall(res.candidates[q], truth[q])
        if ret.__class__ is F.BM25Retriever:
            assert F.recall(res.final, truth) == 1.0


def test_an_agents_searcher_equals_exhaustive_scoring_and_the_direct_funnel(pool):
    from envs.api import Agent, Searcher

    scorer = TfidfCosine(pool)
    ret = F.BM25Retriever(pool)
    agent = Agent("librarian", capabilities=[F.RetrieveThenRank(ret, scorer, k=3, K=len(pool))])
    found = agent.get(Searcher).search(F.QUERIES[:4])
    # K = the whole pool: the funnel is exhaustive scoring.
    np.testing.assert_array_equal(np.stack(found.final), scorer.exhaustive(F.QUERIES[:4], 3))
    small = Agent("narrow", capabilities=[F.RetrieveThenRank(ret, scorer, k=3, K=5)]).get(Searcher).search(F.QUERIES[:4])
    direct = F.funnel(F.QUERIES[:4], ret, scorer, k=3, K=5)
    np.testing.assert_array_equal(np.stack(small.final), np.stack(direct.final))
    np.testing.assert_array_equal(np.stack(small.candidates), np.stack(direct.candidates))


def test_hnsw_with_a_narrow_beam_returns_only_real_documents(pool, lsa):
    ret = F.ANNRetriever(pool, lsa, index="hnsw", ef_search=8)
    ids = ret.search(F.QUERIES[0], len(pool))
    assert ids.min() >= 0 and len(set(ids.tolist())) == len(ids) <= len(pool)


def test_minilm_reranker_loads_offline_and_bounds_hold(pool, monkeypatch):
    # One test with the real model (load ~5-10 s); a small pool keeps exhaustive scoring short.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    small = pool[:30]
    model = F.load_minilm()
    rr = F.DenseReranker(small, model)
    e = rr.encode(["a cat", "a kitten", "the tax code of 1986"])
    assert e.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, rtol=1e-5)
    assert e[0] @ e[1] > e[0] @ e[2]  # semantic similarity the lexical stage cannot see
    queries = list(F.QUERIES[:3])
    before = rr.texts_encoded
    truth = rr.exhaustive(queries, 5)
    res = F.funnel(queries, F.BM25Retriever(small), rr, k=5, K=10)
    assert rr.texts_encoded - before == len(small) + 2 * len(queries) + 10 * len(queries)
    assert F.recall(res.final, truth) <= F.recall(res.candidates, truth)
    assert F.recall(res.final, truth) >= F.recall([c[:5] for c in res.candidates], truth)


def test_bad_input_names_the_parameter(pool):
    with pytest.raises(ValueError, match="corpus is empty"):
        F.BM25Retriever([])
    ret = F.BM25Retriever(pool)
    with pytest.raises(ValueError, match=r"K=500 is larger than the pool of documents \(120\)"):
        F.funnel(["q"], ret, TfidfCosine(pool), k=5, K=500)
    with pytest.raises(ValueError, match=r"k=20 is larger than K, the candidates stage two reranks \(10\)"):
        F.funnel(["q"], ret, TfidfCosine(pool), k=20, K=10)
    with pytest.raises(ValueError, match="queries is empty"):
        F.funnel([], ret, TfidfCosine(pool), k=5, K=10)
    with pytest.raises(ValueError, match="index must be one of hnsw, ivf, flat"):
        F.ANNRetriever(pool, F.LSAEncoder(pool, 8), index="lsh")
