from pathlib import Path

import pytest

from sea_dist.config import SEACfg, dump_config, load_config, parse_yaml
from sea_dist.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", ["sea.yaml", "sand.yaml", "lightgcn.yaml"])
def test_shipped_configs_load(name: str) -> None:
    cfg = load_config(CONFIGS / name)
    assert cfg.model.name == name.removesuffix(".yaml")
    assert cfg.train.batch_size == 2048
    assert cfg.eval.metric == "recall@20"


def test_reference_hyperparameters() -> None:
    cfg = load_config(CONFIGS / "sea.yaml")
    assert isinstance(cfg.model, SEACfg)
    assert (cfg.model.alpha, cfg.model.tau, cfg.model.ureg) == (0.012, 0.2, 0.006)
    assert cfg.train.lr == pytest.approx(1e-4)  # "1e-4" must parse as a float, not a string
    assert cfg.train.seed == 999 and cfg.train.patience == 20
    assert cfg.graph.knn_k == 10 and cfg.graph.first_modality_weight == 0.1


def test_sand_defaults_to_negative_l2() -> None:
    assert load_config(CONFIGS / "sand.yaml").model.distancing == "neg_l2"


def test_override_changes_value_and_type_checks() -> None:
    cfg = load_config(CONFIGS / "sea.yaml", ["train.lr=0.01", "train.fanouts=[5, all]"])
    assert cfg.train.lr == 0.01
    assert cfg.train.fanouts == [5, "all"]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_unknown_key_names_file_and_path(tmp_path: Path) -> None:
    path = _write(tmp_path, "data: {path: x}\ntrain: {epochz: 3}\n")
    with pytest.raises(ConfigError, match=rf"^{path}: train\.epochz: unknown key$"):
        load_config(path)


def test_unknown_model_key_drops_union_tag(tmp_path: Path) -> None:
    path = _write(tmp_path, "data: {path: x}\nmodel: {name: sea, alphaa: 1.0}\n")
    with pytest.raises(ConfigError, match=r": model\.alphaa: unknown key$"):
        load_config(path)


def test_wrong_type_is_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path, "data: {path: x}\ntrain: {batch_size: '64'}\n")
    with pytest.raises(ConfigError, match=r"train\.batch_size: Input should be a valid integer"):
        load_config(path)


def test_out_of_range_is_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path, "data: {path: x}\ntrain: {lr: -1.0}\n")
    with pytest.raises(ConfigError, match=r"train\.lr: Input should be greater than 0"):
        load_config(path)


def test_missing_required_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data: required key is missing"):
        load_config(_write(tmp_path, "train: {epochs: 3}\n"))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lrr=1", r"^--set train\.lrr=1: train\.lrr: unknown key$"),
        ("train.lr=abc", r"^--set train\.lr=abc: train\.lr: Input should be a valid number"),
        ("train.mode=fast", r"^--set train\.mode=fast: train\.mode: Input should be 'full' or"),
        ("train.lr", r"expected section\.key=value"),
        ("eval.metric=recall@50", r"^--set eval\.metric=recall@50: eval: .*needs 50 in eval\.k"),
    ],
)
def test_bad_override(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(CONFIGS / "sea.yaml", [override])


def test_fanouts_must_match_layers() -> None:
    with pytest.raises(ConfigError, match="fanouts has 3 entries but model.num_layers is 2"):
        load_config(CONFIGS / "sea.yaml", ["train.mode=sampled", "train.fanouts=[5, 5, 5]"])


def test_invalid_yaml_names_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"run\.yaml: line \d+: invalid YAML"):
        load_config(_write(tmp_path, "data:\n  path: [unclosed\n"))


def test_extends_cycle(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    cfg = load_config(CONFIGS / "sea.yaml", ["model.alpha=0.5"])
    path = _write(tmp_path, dump_config(cfg))
    assert load_config(path) == cfg


def test_scientific_notation_is_float() -> None:
    assert parse_yaml("a: 1e-4\nb: 5E3\nc: '1e-4'") == {"a": 1e-4, "b": 5000.0, "c": "1e-4"}
