"""Continuous batching: same tokens as generating each request alone; paged runs bigger batches."""

from __future__ import annotations

import pytest
import torch

from capabilities.inference.serving import Request, serve
from capabilities.inference.tiny_decoder import TinyDecoder, TinyDecoderConfig, generate_reference

CFG = TinyDecoderConfig(vocab_size=40, d_model=16, num_heads=2, num_layers=2, d_ff=32, max_seq_len=32)
REQUESTS = [Request((1, 2, 3), 4), Request(tuple(range(5, 15)), 2), Request((7,), 9), Request((3, 3), 1),
            Request((9, 8, 7, 6), 5), Request((2,), 3), Request((4, 5), 6)]


@pytest.fixture(scope="module")
def model() -> TinyDecoder:
    return TinyDecoder(CFG, seed=1, dtype=torch.float64)


def test_paged_and_contiguous_serving_match_single_requests(model: TinyDecoder) -> None:
    # Equal memory: 2 rows of 32 slots = 16 blocks of 4 slots.
    paged = serve(model, model.new_cache("paged", block_size=4, num_blocks=16), REQUESTS)
    contig = serve(model, model.new_cache("contiguous", max_seqs=2), REQUESTS)
    reference = [generate_reference(model, [r.prompt], r.max_new_tokens)[0] for r in REQUESTS]
    assert paged.outputs == contig.outputs == reference
    assert max(contig.batch_sizes) == 2  # one row per request
    # Paged admits by actual length: at full length the seven requests need 2+3+3+1+3+1+2 = 15 of
    # the 16 blocks, so all of them start in the first step.
    assert paged.batch_sizes[0] == 7
    assert paged.steps < contig.steps


def test_serving_frees_everything_and_rejects_bad_requests(model: TinyDecoder) -> None:
    cache = model.new_cache("paged", block_size=4, num_blocks=4)
    with pytest.raises(ValueError, match=r"requests\[0\] needs 5 cache units"):
        serve(model, cache, [Request(tuple(range(10)), 10)])
    with pytest.raises(ValueError, match=r"requests\[1\] needs a non-empty prompt"):
        serve(model, cache, [Request((1,), 1), Request((), 3)])
    serve(model, cache, REQUESTS[:3])
    cache.check()
    assert cache.allocator.num_free == 4
