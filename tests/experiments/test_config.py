"""Config errors name the key's full path, suggest a fix, and state the expected type."""

import pytest

from experiments import UserError, runner
from experiments.config import apply_overrides, parse_override, resolve_config_path


def prepare(data, overrides=()):
    return runner.prepare({"kind": "test_walk", **data}, overrides=list(overrides))


def test_overrides_reach_nested_sections_and_parse_yaml():
    spec, cfg, _ = prepare({}, ["steps=5", "optim.lr=0.25", "optim.schedule=decay", "seed=9"])
    assert (cfg.steps, cfg.optim.lr, cfg.optim.schedule, cfg.seed) == (5, 0.25, "decay", 9)
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    assert apply_overrides({"a": {"b": 1}}, ["a.c=x"]) == {"a": {"b": 1, "c": "x"}}


def test_unknown_top_level_key_suggests_the_right_one():
    with pytest.raises(UserError, match=r"unknown config key 'stepz' for kind 'test_walk'; did you mean 'steps'\?.*allowed: .*checkpoint_every"):
        prepare({"stepz": 3})


def test_unknown_nested_key_gives_full_path():
    with pytest.raises(UserError, match=r"unknown config key 'optim\.lrr'.*did you mean 'optim\.lr'\?"):
        prepare({}, ["optim.lrr=0.1"])


def test_wrong_type_names_the_expected_type():
    with pytest.raises(UserError, match=r"config key 'steps' = 'many' is invalid.*expected int"):
        prepare({"steps": "many"})
    with pytest.raises(UserError, match=r"config key 'optim\.schedule' = 'cosine'.*expected one of 'const', 'decay'"):
        prepare({}, ["optim.schedule=cosine"])
    with pytest.raises(UserError, match=r"config key 'steps' = 0 is invalid.*greater than 0"):
        prepare({"steps": 0})


def test_override_into_a_value_is_rejected():
    with pytest.raises(UserError, match="'steps' is a value, not a section"):
        prepare({"steps": 3}, ["steps.sub=1"])
    with pytest.raises(UserError, match=r"config key 'steps' = \{'sub': 1\} is invalid.*expected int"):
        prepare({}, ["steps.sub=1"])
    with pytest.raises(UserError, match="key=value"):
        prepare({}, ["steps"])


def test_unknown_and_missing_kind_list_the_allowed_kinds():
    with pytest.raises(UserError, match=r"unknown experiment kind 'rollot'; did you mean 'rollout'\?.*allowed: .*test_walk"):
        runner.prepare({"kind": "rollot"})
    with pytest.raises(UserError, match=r"no experiment kind given"):
        runner.prepare({"steps": 3})


def test_missing_config_file_lists_shipped_configs():
    with pytest.raises(UserError, match=r"not found; did you mean rollout_spread\?.*shipped configs: .*tour"):
        resolve_config_path("rollout_sprad")
    assert resolve_config_path("tour").name == "tour.yaml"


def test_non_mapping_and_invalid_yaml_files(tmp_path):
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    (tmp_path / "bad.yaml").write_text("kind: [unclosed\n")
    with pytest.raises(UserError, match="must hold a mapping"):
        runner.prepare(tmp_path / "list.yaml")
    with pytest.raises(UserError, match="not valid YAML"):
        runner.prepare(tmp_path / "bad.yaml")


def test_every_shipped_config_validates():
    from experiments.config import available_configs, read_yaml
    from experiments.tour import is_tour, load

    for name, path in available_configs().items():
        if is_tour(read_yaml(path)):
            load(name)  # a tour (`agora tour NAME`): each of its runs validates
        else:
            runner.prepare(name)
