"""MapReduce shuffle: equal to single-process references, stable partitioning, bad input."""

import collections
import itertools
import subprocess
import sys
import zlib

import pytest

from capabilities.data import shuffle as S


@pytest.fixture(scope="module")
def corpus():
    return S.pydoc_corpus()


def reference_counts(corpus):
    return collections.Counter(w for _, text in corpus for w in S.words(text))


def reference_index(corpus):
    pairs = sorted({(w, doc) for doc, text in corpus for w in S.words(text)})
    return {w: tuple(d for _, d in group) for w, group in itertools.groupby(pairs, key=lambda p: p[0])}


def test_corpus_is_the_real_pydoc_topics(corpus):
    from pydoc_data.topics import topics

    assert len(corpus) == len(topics) > 50
    assert dict(corpus)["assert"] == topics["assert"]


@pytest.mark.parametrize("combiner", [False, True])
def test_word_count_in_processes_equals_counter(corpus, combiner):
    out = S.word_count(corpus, num_partitions=3, combiner=combiner, workers=2)
    assert out == dict(reference_counts(corpus))


@pytest.mark.parametrize("num_partitions", [1, 2, 7])
def test_inverted_index_equals_groupby(corpus, num_partitions):
    out = S.inverted_index(corpus, num_partitions=num_partitions, combiner=num_partitions != 2, workers=0)
    assert out == reference_index(corpus)


def test_every_key_in_exactly_one_partition_the_one_crc32_names(corpus):
    parts, stats = S.map_reduce_partitions(corpus, S.word_count_mapper, S.sum_reducer, num_partitions=5, workers=0)
    seen = collections.Counter(k for p in parts for k in p)
    assert set(seen.values()) == {1}
    assert set(seen) == set(reference_counts(corpus))
    for r, part in enumerate(parts):
        for key in part:
            assert zlib.crc32(b"s" + key.encode()) % 5 == r
    assert stats.keys_per_partition == [len(p) for p in parts]


def test_combiner_shrinks_the_shuffle_and_counts_are_exact(corpus):
    _, plain = S.map_reduce_partitions(corpus, S.word_count_mapper, S.sum_reducer, num_partitions=4, workers=0)
    _, comb = S.map_reduce_partitions(corpus, S.word_count_mapper, S.sum_reducer, num_partitions=4,
                                      combiner=S.sum_reducer, workers=0)
    total_words = sum(reference_counts(corpus).values())
    assert plain.pairs_emitted == comb.pairs_emitted == plain.pairs_shuffled == total_words
    # With a combiner each map task sends one pair per distinct word it saw.
    per_task = sum(len({w for _, t in split for w in S.words(t)}) for split in S._splits(corpus, 4))
    assert comb.pairs_shuffled == per_task
    assert comb.bytes_shuffled < plain.bytes_shuffled
    assert sum(plain.bytes_per_partition) == plain.bytes_shuffled


def test_partition_is_the_same_in_another_interpreter_with_another_hash_seed():
    keys = ["the", "shuffle", ("a", 1), 42, b"xy", None, 2.5]
    here = [S.stable_partition(k, 13) for k in keys]
    code = (
        "from capabilities.data.shuffle import stable_partition as p;"
        f"print([p(k, 13) for k in {keys!r}])"
    )
    for seed in ("1", "2"):
        env = {"PYTHONHASHSEED": seed, "PATH": ""}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == str(here)


def test_equal_keys_share_a_partition_and_tuples_are_unambiguous():
    assert S.canonical_key_bytes(1) == S.canonical_key_bytes(1.0) == S.canonical_key_bytes(True)
    assert S.canonical_key_bytes(0.0) == S.canonical_key_bytes(-0.0)
    assert S.canonical_key_bytes(("ab", "c")) != S.canonical_key_bytes(("a", "bc"))
    assert S.canonical_key_bytes("1") != S.canonical_key_bytes(1)


def mixed_mapper(record):
    yield record, 1


def test_keys_python_merges_are_merged_by_the_shuffle():
    out = S.map_reduce([1, 1.0, True, 2, "2"], mixed_mapper, S.sum_reducer, num_partitions=4, workers=0)
    assert out == {1: 3, 2: 1, "2": 1}


def test_bad_input_names_the_parameter(corpus):
    with pytest.raises(ValueError, match="records is empty"):
        S.map_reduce([], S.word_count_mapper, S.sum_reducer, num_partitions=2)
    with pytest.raises(ValueError, match="corpus is empty"):
        S.word_count([])
    with pytest.raises(ValueError, match="num_partitions must be an integer >= 1"):
        S.map_reduce(corpus, S.word_count_mapper, S.sum_reducer, num_partitions=0)
    with pytest.raises(ValueError, match="workers must be None or an integer >= 0"):
        S.map_reduce(corpus, S.word_count_mapper, S.sum_reducer, num_partitions=2, workers=-1)
    with pytest.raises(TypeError, match="mapper must be picklable"):
        S.map_reduce(corpus, lambda r: [(r[0], 1)], S.sum_reducer, num_partitions=2, workers=1)
    with pytest.raises(TypeError, match="keys must be str, bytes"):
        S.map_reduce([[1]], mixed_mapper, S.sum_reducer, num_partitions=2, workers=0)


def test_an_agents_mapreducer_equals_counter_and_the_direct_call(corpus):
    from envs.api import Agent, MapReducer

    agent = Agent("mapper-0", capabilities=[S.MapReduce(num_partitions=3, workers=0, map_tasks=5)])
    parts, stats = agent.get(MapReducer).map_reduce(corpus, S.word_count_mapper, S.sum_reducer, combiner=S.sum_reducer)
    assert {k: v for p in parts for k, v in p.items()} == dict(reference_counts(corpus))
    ref_parts, ref_stats = S.map_reduce_partitions(corpus, S.word_count_mapper, S.sum_reducer, num_partitions=3,
                                                   combiner=S.sum_reducer, workers=0, map_tasks=5)
    assert parts == ref_parts and stats == ref_stats and stats.map_tasks == 5
