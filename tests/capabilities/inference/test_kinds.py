"""Smoke runs of the inference experiment kinds: tiny budgets, repeatable metrics, bad configs exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments import runner
from experiments.cli import main as cli_main

PAGED = ["num_requests=40", "max_seq_len=512", "block_sizes=[4,16]", "budget_sequences=4",
         "gen_sequences=3", "gen_max_prompt=6", "gen_max_new=6", "prefix_samples=3",
         "serve_requests=6", "serve_rows=2"]
MOE = ["steps=6", "batch=64", "log_every=2", "num_experts=4"]


@pytest.mark.parametrize("config,overrides", [("paged_kv_sharegpt", PAGED), ("moe_balance", MOE)])
def test_kind_runs_and_repeats_exactly(tmp_path: Path, config: str, overrides: list[str]) -> None:
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        runner.run(config, out=out, overrides=overrides, seed=0, quiet=True)
    summary = json.loads((outs[0] / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["figures"]
    assert (outs[0] / "metrics.jsonl").read_text() == (outs[1] / "metrics.jsonl").read_text()
    if config == "paged_kv_sharegpt":
        head = summary["headline"]
        assert head["generation_identical"] is True
        assert head["paged_waste"] < head["contiguous_waste"]


@pytest.mark.parametrize("config,override", [
    ("paged_kv_sharegpt", "block_size=0"),
    ("paged_kv_sharegpt", "block_sizes=[16,0]"),
    ("moe_balance", "k=9"),
    ("moe_balance", "num_experts=600"),  # more experts than 256 tokens * 2.0 allow for
])
def test_bad_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], config: str, override: str) -> None:
    code = cli_main(["run", config, "--out", str(tmp_path / "run"), override])
    assert code == 2
    err = capsys.readouterr().err
    assert override.split("=")[0] in err or "num_experts" in err
