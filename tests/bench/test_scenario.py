"""Scenario files: every shipped one validates; mistakes name the file and the key."""

from pathlib import Path

import pytest

from sea_dist.bench.scenario import SCENARIO_DIR, load_scenario, resolve_relative
from sea_dist.config import load_config
from sea_dist.errors import ConfigError

SHIPPED = sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml"))


def test_required_scenarios_are_shipped():
    assert {"tiktok", "gowalla", "synth_100k", "synth_1m", "million"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.parametrize("quick", [False, True])
def test_shipped_scenarios_validate(name, quick):
    scenario, path = load_scenario(name, quick=quick)
    config = resolve_relative(path, scenario.config)
    cfg = load_config(config, scenario.overrides)  # the overrides fit the run config too
    assert cfg.model.name == "sea"
    if scenario.data.path is not None:
        data = resolve_relative(path, scenario.data.path)
        if not data.exists():  # a clone without ../shared beside it: the config still checked
            pytest.skip(f"{data} is not here (../shared/data, see README)")
        assert data.is_dir()


def test_million_sizes():
    scenario, _ = load_scenario("million")
    g = scenario.data.generate
    assert (g.items, g.users, g.interactions) == (1_000_000, 3_000_000, 30_000_000)
    assert scenario.stages.eval_users_sample == 10_000


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return path


BASE = "name: t\ndata: {path: .}\nconfig: x.yaml\n"


def test_unknown_key_names_file_and_key(tmp_path):
    path = _write(tmp_path, BASE + "throughput: {repeats: 2, repetas: 3}\n")
    with pytest.raises(ConfigError, match=r"s\.yaml: throughput\.repetas: unknown key"):
        load_scenario(str(path))


def test_unknown_top_level_key(tmp_path):
    path = _write(tmp_path, BASE + "warmup: 3\n")
    with pytest.raises(ConfigError, match=r"s\.yaml: warmup: unknown key"):
        load_scenario(str(path))


def test_unknown_key_in_quick_section(tmp_path):
    path = _write(tmp_path, BASE + "quick: {sampler: {stepz: 1}}\n")
    with pytest.raises(ConfigError, match=r"s\.yaml \(quick\): sampler\.stepz: unknown key"):
        load_scenario(str(path))


def test_wrong_type_and_bounds(tmp_path):
    path = _write(tmp_path, BASE + "workers: [1, '2']\n")
    with pytest.raises(ConfigError, match=r"workers\.1"):
        load_scenario(str(path))
    path = _write(tmp_path, BASE + "throughput: {repeats: 0}\n")
    with pytest.raises(ConfigError, match=r"throughput\.repeats"):
        load_scenario(str(path))


def test_data_needs_exactly_one_source(tmp_path):
    path = _write(tmp_path, "name: t\ndata: {}\nconfig: x.yaml\n")
    with pytest.raises(ConfigError, match="exactly one of data.path and data.generate"):
        load_scenario(str(path))


def test_stage_scenario_key_names_skip_the_tag(tmp_path):
    path = _write(tmp_path, "name: t\nkind: stages\ndata: {generate: {users: 1, items: 2, interactions: 1}}\n"
                            "config: x.yaml\nstages: {wrkers: 2}\n")
    with pytest.raises(ConfigError, match=r"s\.yaml: stages\.wrkers: unknown key"):
        load_scenario(str(path))


def test_unknown_name_lists_known(tmp_path):
    with pytest.raises(ConfigError, match="known: .*tiktok"):
        load_scenario("no_such_scenario")


def test_million_epoch_trains_on_the_million_data():
    # The same generated store, so the kNN graph a million run cached is found again.
    epoch, _ = load_scenario("million_epoch")
    stages, _ = load_scenario("million")
    assert epoch.data.generate == stages.data.generate
