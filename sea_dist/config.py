"""Run configuration: YAML files in ``configs/`` loaded into validated pydantic models.

A config file may name a parent with ``extends: base.yaml`` (resolved relative to the file);
the child's mappings are merged into the parent's key by key. ``--set section.key=value``
overrides are parsed as YAML scalars and validated exactly like the file, so a typo or a
wrong type fails with the same one-line message naming the file (or the override) and the
key path.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from sea_dist.errors import ConfigError

Fanout = Union[Annotated[int, Field(ge=1)], Literal["all"]]


class _Section(BaseModel):
    # strict: YAML already yields typed values, so "64" for an int is a mistake, not a hint.
    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)


class DataCfg(_Section):
    """Where the interactions and item features come from."""

    path: str = Field(description="a store directory, or an MMRec directory imported on the fly")
    modalities: list[str] | None = Field(
        default=None,
        description="modalities to use (default: all in the store, in its order); roles are by "
        "name (graph.modality_weights, model.solo_anchor), so the order only lays out columns",
    )
    cache_dir: str = Field(
        default="runs/cache", description="imported stores and kNN graphs are cached here"
    )


class GraphCfg(_Section):
    """Item-item semantic graphs (spec section 1).

    ``modality_weights`` weighs each modality's kNN graph in ``S = sum_m w_m S_m`` by modality
    name, e.g. ``{image: 0.1, audio: 0.9}``; modalities it does not name share what is left
    equally. The default (``null``) is the reference's: image 0.1 and the other modality 0.9
    (text on the Amazon sets, audio on TikTok); a run without an image modality weighs its
    modalities equally. Naming a modality the run does not use is refused before training.
    """

    knn_k: int = Field(default=10, ge=1)
    knn_method: Literal["auto", "exact", "ann"] = "auto"
    # "auto" switches to approximate search above this many items.
    knn_exact_max_items: int = Field(default=200_000, ge=1)
    modality_weights: dict[str, Annotated[float, Field(ge=0.0, le=1.0)]] | None = Field(
        default=None, description="item-graph weight per modality name (default: image 0.1)"
    )
    item_hops: int = Field(default=1, ge=0)

    @field_validator("modality_weights")
    @classmethod
    def _weights_leave_a_share(cls, weights: dict[str, float] | None) -> dict[str, float] | None:
        if weights is not None and sum(weights.values()) > 1.0 + 1e-6:
            raise ValueError(f"weights sum to {sum(weights.values()):g}; they must not exceed 1")
        return weights


class _ModelBase(_Section):
    embedding_dim: int = Field(default=64, ge=1)
    num_layers: int = Field(default=2, ge=0)


class SGFDCfg(_Section):
    """SGFD plug-in (spec section 4): a distilled student replaces the model's feature projection.

    The latent width is the output width of the projection the student replaces (SEA: the
    full-width map, ``map_dim`` or the raw width; MENTOR and VBPR: ``embedding_dim``). Item
    labels come from the store (``label_source: store``, e.g. ml-100k genres), from k-means
    over the row-normalised, concatenated item features (``kmeans``; ``num_clusters`` classes,
    seeded by ``kmeans_seed`` so every worker derives the same labels), or from the store when
    it has them and k-means otherwise (``auto``). Defaults are the reference's (BM3 ``main.py``:
    ce 0.2, kd 0.2, temperature 10).
    """

    ce_weight: float = Field(default=0.2, ge=0.0, description="weight of the classification terms")
    kd_weight: float = Field(default=0.2, ge=0.0, description="weight of the distillation terms")
    temperature: float = Field(default=10.0, gt=0.0, description="softmax temperature of the KD")
    label_source: Literal["auto", "store", "kmeans"] = "auto"
    num_clusters: int = Field(default=20, ge=2, description="k-means labels: number of clusters")
    kmeans_iters: int = Field(default=20, ge=1)
    kmeans_seed: int = 0


class LightGCNCfg(_ModelBase):
    name: Literal["lightgcn"] = "lightgcn"
    reg_weight: float = Field(default=1e-4, ge=0.0)


class SEACfg(_ModelBase):
    """SEA (distancing="club") and SAND (distancing="neg_l2"); spec section 2.

    ``solo_anchor`` names the modality SoloSim anchors on (InfoNCE from it to every other
    modality's candidates), which is also the side the cross-modal CLUB fit
    (``estimator_cross_modal``) conditions on. The default (``null``) is the reference's: its
    t_feat modality, i.e. the one modality other than image (text on the Amazon sets, audio
    on TikTok); other runs must name it.

    ``estimator_lr`` is the CLUB estimator's own Adam learning rate; by default (``null``) it
    follows ``train.lr``, as the reference's estimator optimizer does.
    """

    name: Literal["sea", "sand"] = "sea"
    feature_hidden: int = Field(default=256, ge=1)
    map_dim: int | None = Field(
        default=None, ge=2, description="map raw features to this width first (large catalogues)"
    )
    distancing: Literal["club", "neg_l2", "none"] = "club"
    use_solo: bool = True
    solo_anchor: str | None = Field(
        default=None, description="SoloSim's anchor modality (default: the one that is not image)"
    )
    alpha: float = Field(default=0.012, ge=0.0)
    tau: float = Field(default=0.2, gt=0.0)
    solo_group: int | None = Field(
        default=None, ge=2,
        description="SoloSim contrasts each item with at most this many (its group's); "
        "null: with every item of the loss, as the reference (cost grows as items squared)",
    )
    tower_dtype: Literal["float32", "bfloat16"] = Field(
        default="float32",
        description="the item feature encoder's matrix products in this dtype (bfloat16: "
        "autocast, float32 weights; about 2x on CPUs with AVX512-BF16 and on GPUs)",
    )
    ureg: float = Field(default=0.006, ge=0.0)
    l2_weight: float = Field(default=0.006, ge=0.0, description="weight of SAND's bounded -L2")
    mi_dim: int = Field(default=32, ge=1)
    club_hidden: int = Field(default=8, ge=1)
    proj_hidden: int = Field(default=64, ge=1)
    proj_dim: int = Field(default=32, ge=1, description="output width of the SoloSim heads")
    estimator_steps: int = Field(default=50, ge=0)
    estimator_lr: float | None = Field(
        default=None, gt=0.0, description="CLUB estimator learning rate (default: train.lr)"
    )
    estimator_cross_modal: bool = Field(
        default=False, description="reproduce the reference code's cross-modal CLUB fit"
    )
    sgfd: SGFDCfg | None = None

    @model_validator(mode="after")
    def _sand_default(self) -> SEACfg:
        if self.name == "sand" and "distancing" not in self.model_fields_set:
            self.distancing = "neg_l2"
        return self


class MENTORCfg(_ModelBase):
    """MENTOR (spec section 3); defaults are the reference hyperparameters."""

    name: Literal["mentor"] = "mentor"
    feature_hidden: int = Field(default=256, ge=1)
    reg_weight: float = Field(default=1e-3, ge=0.0)
    align_weight: float = Field(default=0.1, ge=0.0)
    mask_f_weight: float = Field(default=1.5, ge=0.0, description="feature-masking weight")
    mask_g_weight: float = Field(default=1e-3, ge=0.0, description="graph-perturbation weight")
    tau: float = Field(default=0.2, gt=0.0)
    dropout: float = Field(default=0.5, ge=0.0, lt=1.0, description="feature-masking dropout")
    noise_eps: float = Field(default=0.1, ge=0.0, description="graph-perturbation noise size")
    sgfd: SGFDCfg | None = None


class VBPRCfg(_ModelBase):
    """VBPR (He & McAuley, AAAI 2016) as in MMRec: matrix factorisation, no propagation."""

    name: Literal["vbpr"] = "vbpr"
    num_layers: int = Field(default=0, ge=0, le=0, description="VBPR propagates nothing")
    reg_weight: float = Field(default=1e-4, ge=0.0)
    sgfd: SGFDCfg | None = None


ModelCfg = Annotated[Union[LightGCNCfg, SEACfg, MENTORCfg, VBPRCfg], Field(discriminator="name")]
MODEL_NAMES: tuple[str, ...] = ("lightgcn", "sea", "sand", "mentor", "vbpr")


class TrainCfg(_Section):
    epochs: int = Field(default=1000, ge=1)
    batch_size: int = Field(default=2048, ge=1)
    lr: float = Field(default=1e-4, gt=0.0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    seed: int = 999
    patience: int = Field(default=20, ge=1)
    mode: Literal["full", "sampled"] = "full"
    fanouts: list[Fanout] = Field(default_factory=lambda: [10, 10])
    sampler: Literal["neighbor", "labor"] = Field(
        default="neighbor",
        description="sampled mode: DGL's neighbour sampler, or LABOR-0 (the same expected "
        "fanout with fewer distinct nodes per layer; unbiased either way)",
    )
    item_fanout: Fanout = Field(
        default="all",
        description="sampled mode: item-hop entries per batch item, 'all' (exact) or an "
        "importance sample of that many (bounds the output nodes at catalogue scale)",
    )
    num_negatives: int = Field(default=1, ge=1)
    # MMRec draws negatives from the items of the training split (TikTok: 6,245 of 6,710);
    # all_items also draws items that appear only in valid/test, or nowhere.
    negatives: Literal["train_items", "all_items"] = Field(
        default="train_items",
        description="pool of BPR negatives; a user's own training items are always excluded",
    )
    workers: int = Field(default=1, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_steps_per_epoch: int | None = Field(default=None, ge=1)
    sampling_threads: int | None = Field(
        default=None, ge=1,
        description="DGL sampling threads per worker (default: the worker's CPU share); "
        "1 makes sampled blocks, and so resumed runs, exactly reproducible",
    )
    prefetch: int = Field(
        default=2, ge=0,
        description="batches sampled ahead while a step trains; each holds its blocks and "
        "feature rows, so at catalogue scale every one costs as much as a step's inputs",
    )
    partition: Literal["random", "metis"] = Field(
        default="random", description="how seed edges are assigned to workers"
    )
    max_failures: int = Field(default=3, ge=0, description="worker failures survived per run")
    checkpoint_every: int = Field(default=1, ge=1, description="checkpoint every N epochs")
    placement: Literal["PACK", "SPREAD"] = Field(
        default="PACK", description="Ray placement of workers: SPREAD puts one per node"
    )
    tables: Literal["replicated", "row_sharded"] = Field(
        default="replicated",
        description="ID tables on every worker, or their rows split across workers "
        "(each stores 1/P of every table and its optimizer state; sampled mode)",
    )


class EvalCfg(_Section):
    k: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [10, 20])
    metric: str = "recall@20"
    batch_users: int = Field(default=4096, ge=1)
    chunk_nodes: int = Field(
        default=65536, ge=1, description="nodes per chunk of layer-wise inference (memory bound)"
    )
    every: int = Field(default=1, ge=1, description="validate every N epochs")
    users_sample: int | None = Field(
        default=None, ge=1, description="evaluate a seeded sample of this many users (huge data)"
    )

    @model_validator(mode="after")
    def _metric_in_k(self) -> EvalCfg:
        match = re.fullmatch(r"(recall|ndcg|precision|hit|map)@(\d+)", self.metric)
        if match is None:
            raise ValueError(f"metric must look like recall@20, got {self.metric!r}")
        if int(match.group(2)) not in self.k:
            raise ValueError(f"metric {self.metric!r} needs {match.group(2)} in eval.k={self.k}")
        return self


class RunCfg(_Section):
    data: DataCfg
    graph: GraphCfg = Field(default_factory=GraphCfg)
    model: ModelCfg = Field(default_factory=SEACfg)
    train: TrainCfg = Field(default_factory=TrainCfg)
    eval: EvalCfg = Field(default_factory=EvalCfg)

    @model_validator(mode="after")
    def _sampled_mode_rules(self) -> RunCfg:
        # Checked here, at load, so that the driver refuses them before Ray starts a worker.
        if self.train.mode != "sampled":
            if self.train.tables == "row_sharded":
                # Full-graph steps read every row: a sharded table would be gathered whole.
                raise ValueError("train.tables=row_sharded needs train.mode=sampled")
            return self
        if len(self.train.fanouts) != self.model.num_layers:
            raise ValueError(
                f"train.fanouts has {len(self.train.fanouts)} entries but model.num_layers is "
                f"{self.model.num_layers}"
            )
        if self.train.weight_decay > 0:
            # Every model has ID tables, and sampled mode trains them with SparseAdam.
            raise ValueError(
                "train.weight_decay must be 0 in sampled mode (its row-sparse ID tables train "
                "with SparseAdam, which has no weight decay)"
            )
        return self


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4`` as a float (YAML 1.1 wants ``1.0e-4``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: 'extends' forms a cycle")
    try:
        raw = parse_yaml(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}:" if mark is not None else ""
        raise ConfigError(f"{path}:{where} invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: extends: must be a file name")
    return _merge(_read_yaml(path.parent / parent, (*seen, path)), raw)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> tuple[tuple[str, ...], Any]:
    """``"train.lr=1e-3"`` -> ``(("train", "lr"), 0.001)``."""
    key, sep, value = text.partition("=")
    parts = tuple(key.strip().split("."))
    if not sep or not all(parts):
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    try:
        return parts, parse_yaml(value)
    except yaml.YAMLError:
        raise ConfigError(f"--set {text!r}: value is not valid YAML") from None


def _apply_override(raw: dict[str, Any], parts: tuple[str, ...], value: Any) -> None:
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {'.'.join(parts)}: {part} is not a section")
        node = child
    node[parts[-1]] = value


# Keys that were removed, with what replaces them: said by name rather than "unknown key".
_REMOVED_KEYS = {
    "graph.first_modality_weight": "removed: it weighed modalities by position; weigh them by "
    "name with graph.modality_weights (default: image 0.1, the other modality 0.9)",
}


def _error_path(loc: tuple[int | str, ...], raw: dict[str, Any]) -> str:
    # The discriminated model union puts the tag into the location: model.sea.alpha -> model.alpha.
    parts = [str(p) for p in loc]
    model = raw.get("model")
    if len(parts) > 1 and parts[0] == "model" and isinstance(model, dict):
        if parts[1] == str(model.get("name", "sea")):
            del parts[1]
    return ".".join(parts) if parts else "(top level)"


def validate_config(raw: dict[str, Any], source: str, overrides: dict[str, str] | None = None) -> RunCfg:
    """Validate a raw mapping; errors name ``source`` (or the ``--set`` that caused them)."""
    overrides = overrides or {}
    try:
        return RunCfg.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = _error_path(tuple(err["loc"]), raw)
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = _REMOVED_KEYS.get(key, "unknown key")
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif err["type"] == "union_tag_invalid":
            key = f"{key}.name"
            msg = f"unknown model {err['ctx']['tag']!r} (known: {', '.join(MODEL_NAMES)})"
        elif err["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
        elif "input" in err:
            msg = f"{msg} (got {err['input']!r})"
        origin = source
        for path, text in overrides.items():
            mentioned = not err["loc"] and path in msg  # a cross-section rule names its keys
            if mentioned or key == path or key.startswith(path + ".") or path.startswith(key + "."):
                origin = f"--set {text}"
        where = f"{key}: " if err["loc"] else ""
        raise ConfigError(f"{origin}: {where}{msg}") from None


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunCfg:
    """Load ``path`` (following ``extends``), apply ``--set`` overrides, validate."""
    raw = _read_yaml(Path(path))
    applied: dict[str, str] = {}
    for text in overrides:
        parts, value = parse_override(text)
        _apply_override(raw, parts, value)
        applied[".".join(parts)] = text
    return validate_config(raw, str(path), applied)


def dump_config(cfg: RunCfg) -> str:
    """The resolved config as YAML; loading it back gives the same config."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
