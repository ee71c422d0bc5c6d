from pathlib import Path

import pytest

from sea_dist.config import (
    MENTORCfg,
    SEACfg,
    SGFDCfg,
    VBPRCfg,
    dump_config,
    load_config,
    parse_yaml,
)
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
    assert cfg.graph.knn_k == 10
    # Unset: the reference's roles by name (image 0.1; SoloSim on the other modality), the
    # CLUB estimator at train.lr, negatives from the training split's items.
    assert cfg.graph.modality_weights is None and cfg.model.solo_anchor is None
    assert cfg.model.estimator_lr is None and cfg.train.negatives == "train_items"


def test_modality_weights_by_name() -> None:
    cfg = load_config(CONFIGS / "sea.yaml", ["graph.modality_weights={image: 0.1, audio: 0.9}"])
    assert cfg.graph.modality_weights == {"image": 0.1, "audio": 0.9}
    partial = load_config(CONFIGS / "sea.yaml", ["graph.modality_weights.image=0.2"])
    assert partial.graph.modality_weights == {"image": 0.2}
    with pytest.raises(ConfigError, match=r"graph\.modality_weights: weights sum to 1\.3; they"):
        load_config(CONFIGS / "sea.yaml", ["graph.modality_weights={image: 0.7, audio: 0.6}"])
    with pytest.raises(ConfigError, match=r"graph\.modality_weights\.image: .*less than or equal"):
        load_config(CONFIGS / "sea.yaml", ["graph.modality_weights={image: 1.5}"])


def test_removed_positional_weight_is_refused_by_name(tmp_path: Path) -> None:
    path = _write(tmp_path, "data: {path: x}\ngraph: {first_modality_weight: 0.1}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: graph.first_modality_weight: removed")
    assert "graph.modality_weights" in message and "\n" not in message


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
        ("train.negatives=seen", r"^--set train\.negatives=seen: train\.negatives: Input should"),
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


@pytest.mark.parametrize(
    ("name", "model", "sgfd"),
    [
        ("mentor.yaml", "mentor", False),
        ("vbpr.yaml", "vbpr", False),
        ("vbpr_sgfd.yaml", "vbpr", True),
        ("sea_sgfd.yaml", "sea", True),
    ],
)
def test_issue8_configs_load_in_both_modes(name: str, model: str, sgfd: bool) -> None:
    for mode in ("full", "sampled"):
        cfg = load_config(CONFIGS / name, [f"train.mode={mode}"])
        assert cfg.model.name == model
        assert (getattr(cfg.model, "sgfd", None) is not None) == sgfd


def test_mentor_and_sgfd_reference_hyperparameters() -> None:
    mentor = load_config(CONFIGS / "mentor.yaml")
    assert isinstance(mentor.model, MENTORCfg)
    m = mentor.model
    weights = (m.reg_weight, m.align_weight, m.mask_f_weight, m.mask_g_weight)
    assert weights == (1e-3, 0.1, 1.5, 1e-3)
    assert (m.tau, m.dropout, m.noise_eps) == (0.2, 0.5, 0.1)
    assert mentor.eval.metric == "recall@10" and mentor.train.lr == pytest.approx(1e-4)
    cfg = load_config(CONFIGS / "vbpr_sgfd.yaml")
    assert isinstance(cfg.model, VBPRCfg) and cfg.model.sgfd is not None
    s = cfg.model.sgfd
    assert (s.ce_weight, s.kd_weight, s.temperature, s.label_source) == (0.2, 0.2, 10.0, "auto")
    assert cfg.model.num_layers == 0 and cfg.train.fanouts == [] and cfg.graph.item_hops == 0


def test_sgfd_section_is_validated() -> None:
    cfg = load_config(CONFIGS / "mentor.yaml", ["model.sgfd.kd_weight=0.5"])
    assert isinstance(cfg.model, MENTORCfg) and cfg.model.sgfd == SGFDCfg(kd_weight=0.5)
    with pytest.raises(ConfigError, match=r"model\.sgfd\.temperature"):
        load_config(CONFIGS / "sea_sgfd.yaml", ["model.sgfd.temperature=0"])
    with pytest.raises(ConfigError, match=r"model\.sgfd\.label_source"):
        load_config(CONFIGS / "sea_sgfd.yaml", ["model.sgfd.label_source=genres"])
    with pytest.raises(ConfigError, match=r"model\.sgfd\.num_cluster: unknown key"):
        load_config(CONFIGS / "sea_sgfd.yaml", ["model.sgfd.num_cluster=3"])
    with pytest.raises(ConfigError, match=r"model\.sgfd"):
        load_config(CONFIGS / "lightgcn.yaml", ["model.sgfd.ce_weight=0.1"])  # nothing to wrap


def test_vbpr_takes_no_layers_and_mentor_checks_its_weights() -> None:
    with pytest.raises(ConfigError, match=r"model\.num_layers"):
        load_config(CONFIGS / "vbpr.yaml", ["model.num_layers=2"])
    with pytest.raises(ConfigError, match="fanouts has 2 entries but model.num_layers is 0"):
        load_config(CONFIGS / "vbpr.yaml", ["train.mode=sampled", "train.fanouts=[10, 10]"])
    with pytest.raises(ConfigError, match=r"model\.dropout"):
        load_config(CONFIGS / "mentor.yaml", ["model.dropout=1.0"])


def test_large_catalogue_config_keeps_the_model_and_bounds_the_step() -> None:
    cfg = load_config(CONFIGS / "sea_large.yaml")
    reference = load_config(CONFIGS / "sea.yaml")
    assert (cfg.train.mode, cfg.train.sampler, cfg.train.item_fanout) == ("sampled", "labor", 2)
    assert isinstance(cfg.model, SEACfg) and cfg.model.solo_group == 1024
    # only the step's bounds differ from the reference model
    same = {"alpha", "tau", "ureg", "embedding_dim", "num_layers", "feature_hidden", "distancing"}
    assert {k: getattr(cfg.model, k) for k in same} == {k: getattr(reference.model, k) for k in same}
