"""The tiny decoder generates the same tokens through a paged cache, a contiguous cache and no cache."""

from __future__ import annotations

import pytest
import torch

from capabilities.inference.paged_kv import OutOfBlocks
from capabilities.inference.tiny_decoder import (
    CachedGenerator,
    TinyDecoder,
    TinyDecoderConfig,
    generate,
    generate_reference,
)
from envs.api import Agent, Generator

CFG = TinyDecoderConfig(vocab_size=48, d_model=32, num_heads=4, num_layers=2, d_ff=64, max_seq_len=48)
PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11, 12], [13], [7] * 17, [20, 21]]
NEW = [6, 10, 3, 12, 1]


@pytest.fixture(scope="module")
def model() -> TinyDecoder:
    return TinyDecoder(CFG, seed=0, dtype=torch.float64)


def test_paged_generation_equals_contiguous_and_uncached(model: TinyDecoder) -> None:
    paged = model.new_cache("paged", block_size=4, num_blocks=40)
    contig = model.new_cache("contiguous", max_seqs=len(PROMPTS))
    out_paged = generate(model, paged, PROMPTS, NEW)
    out_contig = generate(model, contig, PROMPTS, NEW)
    reference = generate_reference(model, PROMPTS, NEW)
    assert [len(o) for o in out_paged] == NEW
    assert out_paged == out_contig == reference
    assert len({t for seq in reference for t in seq}) > 5  # not a degenerate constant output
    # Finished sequences gave their blocks back.
    paged.check()
    assert paged.allocator.num_free == 40 and not paged.block_tables


def test_cached_logits_equal_full_forward_float32() -> None:
    model = TinyDecoder(CFG, seed=3)
    tokens = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5]])
    cache = model.new_cache("paged", block_size=3, num_blocks=8)
    cache.add_sequence(0)
    prefill = model(tokens[:, :7], cache.reserve([0], [7]), cache)
    steps = [model(tokens[:, t:t + 1], cache.reserve([0], [1]), cache) for t in range(7, 11)]
    ours = torch.cat([prefill, *steps], dim=1)
    assert torch.allclose(ours, model.forward_full(tokens), atol=1e-5)


def test_forked_samples_share_the_prompt_and_match_independent_runs(model: TinyDecoder) -> None:
    """Continuing one prefilled prompt in two forks gives what two separate sequences give."""
    prompt = list(range(1, 11))  # 10 tokens: blocks of 4 leave the last one half full
    cache = model.new_cache("paged", block_size=4, num_blocks=20)
    cache.add_sequence(0)
    first = int(model(torch.tensor([prompt]), cache.reserve([0], [10]), cache)[0, -1].argmax())
    cache.fork(0, 1)
    assert cache.allocator.num_used == 3
    # Feed different next tokens to the two forks (as two samples would).
    tails = {0: [first], 1: [(first + 1) % CFG.vocab_size]}
    for _ in range(5):
        plan = cache.reserve([0, 1], [1, 1])
        logits = model(torch.tensor([[tails[0][-1]], [tails[1][-1]]]), plan, cache)
        for row, seq in enumerate((0, 1)):
            tails[seq].append(int(logits[row, 0].argmax()))
    assert cache.cow_copies == 1
    cache.check()
    for seq in (0, 1):
        alone = generate_reference(model, [prompt + tails[seq][:1]], 5)[0]
        assert tails[seq][1:] == alone


def test_out_of_blocks_frees_the_batch(model: TinyDecoder) -> None:
    cache = model.new_cache("paged", block_size=4, num_blocks=5)
    with pytest.raises(OutOfBlocks):
        generate(model, cache, PROMPTS, NEW)
    cache.check()
    assert cache.allocator.num_free == 5 and not cache.block_tables


def test_an_agents_generator_equals_generation_without_a_cache(model: TinyDecoder) -> None:
    steps: list[int] = []
    paged = Agent(id="paged", capabilities=[CachedGenerator(model, block_size=4, num_blocks=40)])
    contiguous = Agent(id="contiguous", capabilities=[CachedGenerator(
        model, model.new_cache("contiguous", max_seqs=2), on_step=lambda step, cache: steps.append(step))])
    reference = generate_reference(model, PROMPTS[:2], NEW[:2])
    assert paged.get(Generator).generate(PROMPTS[:2], NEW[:2]) == reference
    assert contiguous.get(Generator).generate(PROMPTS[:2], NEW[:2]) == reference
    assert steps == list(range(max(NEW[:2])))  # the prefill (step 0) and one call per decode step
    # A second batch on the same agent: fresh sequence ids, the cache freed after the first.
    assert paged.get(Generator).generate(PROMPTS[:1], NEW[:1]) == reference[:1]
    assert not paged.get(Generator).cache.block_tables


@pytest.mark.parametrize("prompts,new,match", [
    ([], 3, "at least one prompt"),
    ([[1], []], 3, r"prompts\[1\] is empty"),
    ([[1]], 0, "max_new_tokens"),
    ([[1] * 40], 20, "max_seq_len"),
])
def test_generate_rejects_bad_input(model: TinyDecoder, prompts: list, new: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        generate(model, model.new_cache("paged"), prompts, new)


def test_config_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="num_heads"):
        TinyDecoderConfig(d_model=30, num_heads=4)
    with pytest.raises(ValueError, match="num_layers must be an integer >= 1"):
        TinyDecoderConfig(num_layers=0)
