"""Benchmark scenarios: which data, which model config, what to measure, how often.

A scenario is a YAML file in ``benchmarks/scenarios/`` (or any path). Two kinds:

``kind: training`` (the default) measures training throughput at each worker count, twice:
strong scaling (``throughput.total_steps`` steps per epoch shared by the workers) and weak
scaling (``throughput.steps_per_worker`` steps per worker), plus sampler and evaluation
throughput and time-to-accuracy (sampled distributed vs full-graph single process)::

    name: tiktok
    data: {path: ../../../shared/data/tiktok}      # relative to this file
    config: ../../configs/sea.yaml                 # relative to this file
    overrides: [train.mode=sampled, train.lr=1e-3]  # --set syntax
    workers: [1, 2]
    throughput: {warmup_epochs: 1, repeats: 3, total_steps: 24, steps_per_worker: 8}
    sampler: {warmup: 2, repeats: 5, steps: 5}
    eval: {warmup: 1, repeats: 3}
    time_to_accuracy: {target_recall: auto, max_epochs: 10}
    quick: {throughput: {repeats: 2}}              # merged in by --quick

``kind: stages`` runs a data set through generation, import, graph and kNN build,
partitioning, one training epoch and a sampled evaluation, each stage in its own process
(see :mod:`sea_dist.bench.stages`).

Unknown keys and wrong types are errors naming the file and the key path, as in
:mod:`sea_dist.config`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sea_dist.config import _merge, parse_yaml
from sea_dist.errors import ConfigError

SCENARIO_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "scenarios"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class GenerateSpec(_Section):
    """A generated catalogue (:func:`sea_dist.data.synthetic.generate_store`)."""

    users: int = Field(ge=1)
    items: int = Field(ge=2)
    interactions: int = Field(ge=1)
    modalities: dict[str, Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: {"image": 128, "text": 64}
    )
    seed: int = 0
    feature_dtype: Literal["float32", "float16"] = "float32"


class DataSpec(_Section):
    """Exactly one of ``path`` (MMRec directory or store) and ``generate``."""

    path: str | None = Field(default=None, description="relative to the scenario file")
    generate: GenerateSpec | None = None
    standin_features: dict[str, Annotated[int, Field(ge=1)]] | None = Field(
        default=None,
        description="MMRec data without features: generate these (name -> width), see data.py",
    )

    @model_validator(mode="after")
    def _one_source(self) -> DataSpec:
        if (self.path is None) == (self.generate is None):
            raise ValueError("give exactly one of data.path and data.generate")
        if self.standin_features is not None and self.path is None:
            raise ValueError("standin_features needs data.path (an MMRec directory)")
        return self


class ThroughputSpec(_Section):
    """Training epochs per worker count: ``warmup_epochs`` dropped, then ``repeats`` measured."""

    warmup_epochs: int = Field(default=1, ge=0)
    repeats: int = Field(default=3, ge=1)
    total_steps: int = Field(default=24, ge=1, description="strong scaling: steps/epoch, all workers")
    steps_per_worker: int = Field(default=8, ge=1, description="weak scaling: steps/epoch per worker")


class SamplerSpec(_Section):
    """Standalone sampler: ``repeats`` timed windows of ``steps`` minibatches after warm-up."""

    warmup: int = Field(default=2, ge=0, description="untimed minibatches")
    repeats: int = Field(default=5, ge=1)
    steps: int = Field(default=5, ge=1)
    threads: int = Field(default=1, ge=1, description="DGL sampling threads")


class EvalSpec(_Section):
    """Full-ranking evaluation of the trained embeddings on ``split``."""

    warmup: int = Field(default=1, ge=0)
    repeats: int = Field(default=3, ge=1)
    split: Literal["valid", "test"] = "valid"
    users_sample: int | None = Field(default=None, ge=1)


class TimeToAccuracySpec(_Section):
    """Wall time until valid Recall@20 reaches the target: sampled on N workers vs full on 1.

    ``target_recall: auto`` is 90 % of the lower of the two runs' best valid Recall@20, so
    that both reach it and the comparison is about speed.
    """

    target_recall: float | Literal["auto"] = "auto"
    max_epochs: int = Field(default=10, ge=1)
    max_steps_per_epoch: int | None = Field(default=None, ge=1, description="both runs")
    workers: int | None = Field(default=None, ge=1, description="sampled run (default: max --workers)")
    full_baseline: bool = Field(
        default=True, description="also run full-graph on 1 worker (false where it cannot fit)"
    )
    full_overrides: list[str] = Field(default_factory=list, description="extra --set for the full run")


class StagesSpec(_Section):
    """The stage runner (kind: stages)."""

    workers: int = Field(default=2, ge=1, description="training workers and partition parts")
    partition: Literal["random", "metis"] = "random"
    eval_users_sample: int = Field(default=10_000, ge=1)
    keep_data: bool = Field(default=False, description="keep the generated / imported stores")


class _ScenarioBase(_Section):
    name: str
    description: str = ""
    data: DataSpec
    config: str = Field(description="run config YAML, relative to the scenario file")
    overrides: list[str] = Field(default_factory=list)


class TrainingScenario(_ScenarioBase):
    kind: Literal["training"] = "training"
    workers: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [1, 2])
    throughput: ThroughputSpec = Field(default_factory=ThroughputSpec)
    sampler: SamplerSpec | None = Field(default_factory=SamplerSpec)
    eval: EvalSpec | None = Field(default_factory=EvalSpec)
    time_to_accuracy: TimeToAccuracySpec | None = Field(default_factory=TimeToAccuracySpec)


class StageScenario(_ScenarioBase):
    kind: Literal["stages"]
    stages: StagesSpec = Field(default_factory=StagesSpec)


Scenario = Annotated[Union[TrainingScenario, StageScenario], Field(discriminator="kind")]


class _Holder(BaseModel):
    scenario: Scenario


def resolve_scenario_path(name_or_path: str) -> Path:
    """A path to a YAML file, or the name of one in ``benchmarks/scenarios``."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"{path}: scenario file not found")
        return path
    candidate = SCENARIO_DIR / f"{name_or_path}.yaml"
    if not candidate.is_file():
        known = sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown scenario {name_or_path!r}; known: {', '.join(known)}")
    return candidate


def _validate(raw: dict[str, Any], source: str) -> TrainingScenario | StageScenario:
    raw = {"kind": "training", **raw}
    try:
        return _Holder.model_validate({"scenario": raw}).scenario
    except ValidationError as exc:
        err = exc.errors()[0]
        parts = [str(p) for p in err["loc"][1:]]
        if len(parts) > 1 and parts[0] in ("training", "stages"):
            del parts[0]  # the discriminator's tag
        key = ".".join(parts) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif "input" in err and err["type"] != "value_error":
            msg = f"{msg} (got {err['input']!r})"
        raise ConfigError(f"{source}: {key}: {msg}") from None


def load_scenario(name_or_path: str, quick: bool = False) -> tuple[TrainingScenario | StageScenario, Path]:
    """Load and validate a scenario; ``quick`` merges its ``quick:`` section in first.

    Returns:
        The scenario and its file (relative paths inside it are relative to that file).
    """
    path = resolve_scenario_path(name_or_path)
    try:
        raw = parse_yaml(path.read_text())
    except Exception as exc:  # yaml.YAMLError and friends: one line naming the file
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    quick_raw = raw.pop("quick", None) or {}
    if not isinstance(quick_raw, dict):
        raise ConfigError(f"{path}: quick: must be a mapping")
    scenario = _validate(raw, str(path))  # errors in the main part name its keys plainly
    # The quick variant is checked every time, so a typo in it fails before anything runs.
    quick_scenario = _validate(_merge(raw, quick_raw), f"{path} (quick)")
    return (quick_scenario if quick else scenario), path


def resolve_relative(scenario_file: Path, value: str) -> Path:
    """``value`` relative to the scenario file's directory (absolute paths pass through)."""
    path = Path(value)
    return path if path.is_absolute() else (scenario_file.parent / path).resolve()
