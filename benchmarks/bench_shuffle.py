"""MapReduce shuffle: word count in worker processes vs a single-process collections.Counter.

Cases: records/s of ``map_reduce`` (2 processes, combiner) against ``collections.Counter`` over
the same corpus in the same run (the reference a shuffle must beat once the input is large
enough to pay for process start-up and pickling), and bytes shuffled with the combiner against
bytes shuffled without it.
"""

from __future__ import annotations

import collections

from benchmarks.common import best_of, emit, parse_args
from capabilities.data import shuffle as S


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    repeats = 4 if args.quick else 40
    corpus = [(f"{d}#{r}", t) for r in range(repeats) for d, t in S.pydoc_corpus()]
    words = sum(len(S.words(t)) for _, t in corpus)

    def ours() -> dict:
        return S.map_reduce(corpus, S.word_count_mapper, S.sum_reducer, num_partitions=4,
                            combiner=S.sum_reducer, workers=2)

    def reference() -> collections.Counter:
        return collections.Counter(w for _, t in corpus for w in S.words(t))

    assert ours() == dict(reference())
    t_ours = best_of(ours, repeats=2 if args.quick else 3)
    t_ref = best_of(reference, repeats=2 if args.quick else 3)
    emit("shuffle", f"word count, {len(corpus)} docs, {words} words, R=4, 2 processes", "words/s",
         words / t_ours, words / t_ref, reference_name="collections.Counter, one process")

    for r in (4, 16):
        _, plain = S.map_reduce_partitions(corpus, S.word_count_mapper, S.sum_reducer, num_partitions=r, workers=0)
        _, comb = S.map_reduce_partitions(corpus, S.word_count_mapper, S.sum_reducer, num_partitions=r,
                                          combiner=S.sum_reducer, workers=0)
        emit("shuffle", f"bytes shuffled, word count, R=M={r}", "bytes", comb.bytes_shuffled, plain.bytes_shuffled,
             reference_name="same job without combiner", higher_is_better=False,
             pairs_ours=comb.pairs_shuffled, pairs_reference=plain.pairs_shuffled)


if __name__ == "__main__":
    main()
