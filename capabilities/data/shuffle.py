"""MapReduce with a real shuffle: map tasks, stable hash partitioning, reduce tasks in processes.

The three phases (Dean & Ghemawat, 2004)::

    map      each map task runs ``mapper(record)`` over its split of the records, groups the
             emitted ``(key, value)`` pairs by key and, with a ``combiner``, folds each group
             locally so fewer pairs leave the task
    shuffle  every pair goes to the reduce partition that owns its key,
             ``crc32(canonical_key_bytes(key)) % num_partitions``; what crosses is pickled
             bytes, and those bytes are counted
    reduce   each reduce task merges the groups it received and calls ``reducer(key, values)``

The partition function is stable across processes, runs and machines. Python's built-in
``hash`` of a ``str`` is salted per process (PYTHONHASHSEED), so two map processes would route
the same word to different reducers; crc32 of a canonical encoding never does. Keys that Python
treats as equal (``1``, ``1.0``, ``True``) encode identically, so they land in one partition,
as a dict would merge them.

Workers are processes from the ``forkserver`` context (``spawn`` where forkserver does not
exist): nothing is inherited from the parent, so ``mapper``, ``reducer`` and ``combiner`` must
be picklable, module-level functions. ``workers=0`` runs every task in this process.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import re
import struct
import zlib
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

Mapper = Callable[[Any], Iterable[tuple[Hashable, Any]]]
Reducer = Callable[[Hashable, list[Any]], Any]

# --------------------------------------------------------------------------------------------
# Stable partitioning


def canonical_key_bytes(key: Hashable) -> bytes:
    """A byte encoding of ``key`` that is equal for keys Python considers equal.

    Supported: ``str``, ``bytes``, ``int``, ``bool``, ``float``, ``None`` and tuples of these.
    ``True``/``1``/``1.0`` all encode as the integer 1 because a dict treats them as one key.

    Args:
        key: The key to encode.

    Returns:
        The encoding, a tag byte followed by the value's bytes.

    Raises:
        TypeError: For any other key type (the allowed types are named).
    """
    if isinstance(key, str):
        return b"s" + key.encode("utf-8", "surrogatepass")
    if isinstance(key, bytes):
        return b"b" + key
    if isinstance(key, bool | int):
        return b"i" + str(int(key)).encode()
    if isinstance(key, float):
        if key.is_integer():
            return b"i" + str(int(key)).encode()
        return b"f" + key.hex().encode()
    if key is None:
        return b"n"
    if isinstance(key, tuple):
        parts = [canonical_key_bytes(k) for k in key]
        # Length-prefixing keeps ("ab", "c") and ("a", "bc") apart.
        return b"t" + b"".join(struct.pack(">I", len(p)) + p for p in parts)
    raise TypeError(
        f"key {key!r} has type {type(key).__name__}; keys must be str, bytes, int, bool, "
        "float, None or tuples of these"
    )


def stable_partition(key: Hashable, num_partitions: int) -> int:
    """The reduce partition that owns ``key``: crc32 of its canonical bytes modulo R.

    Args:
        key: A key emitted by a mapper.
        num_partitions: R, the number of reduce partitions (at least 1).

    Returns:
        An integer in ``[0, num_partitions)``, the same in every process and on every run.
    """
    return zlib.crc32(canonical_key_bytes(key)) % num_partitions


# --------------------------------------------------------------------------------------------
# The tasks (module level so that worker processes can unpickle them)


def _map_task(
    args: tuple[Mapper, Reducer | None, Sequence[Any], int],
) -> tuple[list[bytes], int, list[int]]:
    """Runs one map task; returns one pickled blob per partition, pairs emitted, pairs sent."""
    mapper, combiner, records, num_partitions = args
    buckets: list[dict[Hashable, list[Any]]] = [{} for _ in range(num_partitions)]
    emitted = 0
    for record in records:
        for key, value in mapper(record):
            buckets[stable_partition(key, num_partitions)].setdefault(key, []).append(value)
            emitted += 1
    if combiner is not None:
        buckets = [{k: [combiner(k, vs)] for k, vs in b.items()} for b in buckets]
    sent = [sum(len(vs) for vs in b.values()) for b in buckets]
    blobs = [pickle.dumps(list(b.items()), protocol=pickle.HIGHEST_PROTOCOL) for b in buckets]
    return blobs, emitted, sent


def _reduce_task(args: tuple[Reducer, list[bytes]]) -> dict[Hashable, Any]:
    """Merges the groups one partition received from every map task and reduces each key."""
    reducer, blobs = args
    groups: dict[Hashable, list[Any]] = {}
    for blob in blobs:
        for key, values in pickle.loads(blob):
            groups.setdefault(key, []).extend(values)
    return {key: reducer(key, values) for key, values in groups.items()}


# --------------------------------------------------------------------------------------------
# The driver


@dataclass
class ShuffleStats:
    """What crossed the shuffle.

    Attributes:
        num_partitions: R.
        map_tasks: M, the number of record splits.
        pairs_emitted: Pairs the mapper produced.
        pairs_shuffled: Pairs that crossed the shuffle (fewer than emitted with a combiner).
        bytes_shuffled: Pickled bytes that crossed the shuffle.
        keys_per_partition: Distinct keys each reduce partition owns.
        pairs_per_partition: Pairs each reduce partition received.
        bytes_per_partition: Bytes each reduce partition received.
    """

    num_partitions: int
    map_tasks: int
    pairs_emitted: int = 0
    pairs_shuffled: int = 0
    bytes_shuffled: int = 0
    keys_per_partition: list[int] = field(default_factory=list)
    pairs_per_partition: list[int] = field(default_factory=list)
    bytes_per_partition: list[int] = field(default_factory=list)


def _check_picklable(name: str, fn: Any) -> None:
    try:
        pickle.dumps(fn)
    except (pickle.PicklingError, AttributeError, TypeError) as exc:
        raise TypeError(
            f"{name} must be picklable to run in worker processes (a module-level function, "
            f"not a lambda or closure); got {fn!r} ({exc}). Use workers=0 to run in this process."
        ) from None


def _splits(records: Sequence[Any], m: int) -> list[Sequence[Any]]:
    """``m`` contiguous splits whose sizes differ by at most one."""
    n = len(records)
    bounds = [n * i // m for i in range(m + 1)]
    return [records[bounds[i] : bounds[i + 1]] for i in range(m)]


def _context() -> multiprocessing.context.BaseContext:
    # forkserver/spawn start clean interpreters: no inherited locks or threads (fork is unsafe
    # once torch or Ray threads exist in the parent).
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def map_reduce_partitions(
    records: Iterable[Any],
    mapper: Mapper,
    reducer: Reducer,
    *,
    num_partitions: int,
    combiner: Reducer | None = None,
    workers: int | None = None,
    map_tasks: int | None = None,
) -> tuple[list[dict[Hashable, Any]], ShuffleStats]:
    """MapReduce returning each reduce partition's output separately, and shuffle statistics.

    Args:
        records: The input records (materialized into a list).
        mapper: ``mapper(record)`` yields ``(key, value)`` pairs.
        reducer: ``reducer(key, values)`` returns the key's result.
        num_partitions: R, the number of reduce partitions (at least 1).
        combiner: Optional ``combiner(key, values)`` applied per map task; its result must be
            a value of the mapper's value type (for a sum, the reducer itself). Default None.
        workers: Worker processes; None uses ``min(os.cpu_count(), max(M, R))``, 0 runs every
            task in this process. Default None.
        map_tasks: M, the number of record splits; None uses ``min(R, len(records))``, so the
            statistics do not depend on the machine. Default None.

    Returns:
        ``(partitions, stats)``: ``partitions[r]`` maps each key owned by partition r to its
        reduced value.

    Raises:
        ValueError: If ``records`` is empty or a count is out of range.
        TypeError: If a function cannot be sent to worker processes, or a key is unsupported.
    """
    if not isinstance(num_partitions, int) or isinstance(num_partitions, bool) or num_partitions < 1:
        raise ValueError(f"num_partitions must be an integer >= 1, got {num_partitions!r}")
    if workers is not None and (not isinstance(workers, int) or isinstance(workers, bool) or workers < 0):
        raise ValueError(f"workers must be None or an integer >= 0 (0 = in this process), got {workers!r}")
    records = list(records)
    if not records:
        raise ValueError("records is empty: map_reduce needs at least one record")
    if map_tasks is None:
        map_tasks = min(num_partitions, len(records))
    if not isinstance(map_tasks, int) or map_tasks < 1 or map_tasks > len(records):
        raise ValueError(f"map_tasks must be an integer in [1, len(records)={len(records)}], got {map_tasks!r}")
    if workers is None:
        workers = min(os.cpu_count() or 1, max(map_tasks, num_partitions))

    map_args = [(mapper, combiner, split, num_partitions) for split in _splits(records, map_tasks)]
    stats = ShuffleStats(num_partitions=num_partitions, map_tasks=map_tasks)

    def shuffle(map_out: list[tuple[list[bytes], int, list[int]]]) -> list[tuple[Reducer, list[bytes]]]:
        # Route blob r of every map task to reduce task r: this hand-over is the shuffle.
        stats.pairs_emitted = sum(m[1] for m in map_out)
        stats.pairs_per_partition = [sum(m[2][r] for m in map_out) for r in range(num_partitions)]
        stats.bytes_per_partition = [sum(len(m[0][r]) for m in map_out) for r in range(num_partitions)]
        stats.pairs_shuffled = sum(stats.pairs_per_partition)
        stats.bytes_shuffled = sum(stats.bytes_per_partition)
        return [(reducer, [m[0][r] for m in map_out]) for r in range(num_partitions)]

    if workers == 0:
        partitions = [_reduce_task(a) for a in shuffle([_map_task(a) for a in map_args])]
    else:
        for name, fn in (("mapper", mapper), ("reducer", reducer), ("combiner", combiner)):
            _check_picklable(name, fn)
        with _context().Pool(processes=workers) as pool:
            partitions = pool.map(_reduce_task, shuffle(pool.map(_map_task, map_args, chunksize=1)), chunksize=1)
    stats.keys_per_partition = [len(p) for p in partitions]
    return partitions, stats


def map_reduce(
    records: Iterable[Any],
    mapper: Mapper,
    reducer: Reducer,
    *,
    num_partitions: int,
    combiner: Reducer | None = None,
    workers: int | None = None,
) -> dict[Hashable, Any]:
    """Runs MapReduce and returns a dict of key to reduced value.

    Args:
        records: The input records.
        mapper: ``mapper(record)`` yields ``(key, value)`` pairs.
        reducer: ``reducer(key, values)`` returns one value.
        num_partitions: R, the number of reduce partitions (at least 1).
        combiner: Optional map-side ``combiner(key, values)``. Default None.
        workers: Worker processes (None: up to the CPU count; 0: in this process). Default None.

    Returns:
        Every key's reduced value, partitions in order.
    """
    partitions, _ = map_reduce_partitions(
        records, mapper, reducer, num_partitions=num_partitions, combiner=combiner, workers=workers
    )
    out: dict[Hashable, Any] = {}
    for part in partitions:
        out.update(part)
    return out


@dataclass
class MapReduce:
    """The shuffle as an agent's :class:`envs.api.MapReducer`.

    Args:
        num_partitions: R, reduce partitions. Default 4.
        workers: Worker processes (None: up to the CPU count; 0: in this process). Default None.
        map_tasks: M, record splits (None: ``min(R, len(records))``). Default None.
    """

    num_partitions: int = 4
    workers: int | None = None
    map_tasks: int | None = None

    def map_reduce(self, records: Iterable[Any], mapper: Mapper, reducer: Reducer,
                   combiner: Reducer | None = None) -> tuple[list[dict[Hashable, Any]], ShuffleStats]:
        """:func:`map_reduce_partitions` with this job's partitions, workers and splits."""
        return map_reduce_partitions(records, mapper, reducer, num_partitions=self.num_partitions, combiner=combiner,
                                     workers=self.workers, map_tasks=self.map_tasks)


# --------------------------------------------------------------------------------------------
# Examples over a real corpus: word count and an inverted index

_WORD = re.compile(r"[a-z][a-z0-9_]*")


def pydoc_corpus() -> list[tuple[str, str]]:
    """The help topics shipped with Python (``pydoc_data.topics``) as ``(topic, text)`` pairs.

    About 80 documents and half a megabyte of English text about Python, present in every
    CPython install, so nothing is downloaded.
    """
    from pydoc_data.topics import topics

    return sorted(topics.items())


def words(text: str) -> list[str]:
    """Lower-cased word tokens (letters, digits, underscores; starting with a letter)."""
    return _WORD.findall(text.lower())


def word_count_mapper(record: tuple[str, str]) -> Iterator[tuple[str, int]]:
    """Emits ``(word, 1)`` for every word of a ``(doc_id, text)`` record."""
    for w in words(record[1]):
        yield w, 1


def sum_reducer(key: Hashable, values: list[int]) -> int:
    """Sums the values (also a valid combiner: a partial sum is a count)."""
    return sum(values)


def index_mapper(record: tuple[str, str]) -> Iterator[tuple[str, tuple[str, ...]]]:
    """Emits ``(word, (doc_id,))`` once per distinct word of a ``(doc_id, text)`` record."""
    doc_id, text = record
    for w in dict.fromkeys(words(text)):
        yield w, (doc_id,)


def postings_reducer(key: Hashable, values: list[tuple[str, ...]]) -> tuple[str, ...]:
    """The sorted union of posting lists (also a valid combiner)."""
    return tuple(sorted(set().union(*values)))


def _check_corpus(corpus: Sequence[tuple[str, str]]) -> None:
    if len(corpus) == 0:
        raise ValueError("corpus is empty: give at least one (doc_id, text) document")


def word_count(
    corpus: Sequence[tuple[str, str]], *, num_partitions: int = 4, combiner: bool = True, workers: int | None = None
) -> dict[str, int]:
    """Word frequencies of ``corpus`` by MapReduce.

    Args:
        corpus: ``(doc_id, text)`` documents (non-empty).
        num_partitions: Reduce partitions. Default 4.
        combiner: Sum counts inside each map task before the shuffle. Default True.
        workers: As in :func:`map_reduce`. Default None.
    """
    _check_corpus(corpus)
    return map_reduce(corpus, word_count_mapper, sum_reducer, num_partitions=num_partitions,
                      combiner=sum_reducer if combiner else None, workers=workers)


def inverted_index(
    corpus: Sequence[tuple[str, str]], *, num_partitions: int = 4, combiner: bool = True, workers: int | None = None
) -> dict[str, tuple[str, ...]]:
    """Each word's sorted tuple of the documents that contain it, by MapReduce.

    Args:
        corpus: ``(doc_id, text)`` documents (non-empty).
        num_partitions: Reduce partitions. Default 4.
        combiner: Merge posting lists inside each map task. Default True.
        workers: As in :func:`map_reduce`. Default None.
    """
    _check_corpus(corpus)
    return map_reduce(corpus, index_mapper, postings_reducer, num_partitions=num_partitions,
                      combiner=postings_reducer if combiner else None, workers=workers)
