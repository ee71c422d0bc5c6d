"""Model registry: the only place where a model config becomes a model.

Each builder turns its config section into explicit constructor arguments, so models never
look at configs. Tests parametrize over :func:`registered_models`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Literal, TypeVar

import numpy as np
import torch

from sea_dist.config import LightGCNCfg, MENTORCfg, ModelCfg, SEACfg, SGFDCfg, VBPRCfg
from sea_dist.errors import ConfigError
from sea_dist.models.base import Recommender
from sea_dist.models.lightgcn import LightGCN
from sea_dist.models.mentor import MENTOR, MENTORParams
from sea_dist.models.sea import SEA, SEAParams, solo_anchor
from sea_dist.models.sgfd import SGFD, SGFDParams, kmeans_labels
from sea_dist.models.vbpr import VBPR

Builder = Callable[..., Recommender]
_P = TypeVar("_P")
_B = TypeVar("_B", bound=Builder)
_BUILDERS: dict[str, Builder] = {}


def register_model(*names: str) -> Callable[[_B], _B]:
    """Register ``builder(cfg, num_users, num_items, feature_dims)`` under ``names``."""

    def wrap(builder: _B) -> _B:
        for name in names:
            if name in _BUILDERS:
                raise ValueError(f"model {name!r} is already registered")
            _BUILDERS[name] = builder
        return builder

    return wrap


def registered_models() -> tuple[str, ...]:
    return tuple(_BUILDERS)


def build_model(
    cfg: ModelCfg,
    num_users: int,
    num_items: int,
    feature_dims: dict[str, int],
    item_labels: torch.Tensor | None = None,
) -> Recommender:
    """Build the model named by ``cfg.name``; ``feature_dims`` maps modality -> width (roles
    such as SEA's SoloSim anchor go by name, not by position). With an ``sgfd`` section the
    model is wrapped in the SGFD plug-in, which needs ``item_labels`` (see
    :func:`resolve_item_labels`)."""
    builder = _BUILDERS.get(cfg.name)
    if builder is None:
        raise ConfigError(f"model.name: unknown model {cfg.name!r} (known: {', '.join(_BUILDERS)})")
    model = builder(cfg, num_users, num_items, feature_dims)
    sgfd: SGFDCfg | None = getattr(cfg, "sgfd", None)
    if sgfd is None:
        return model
    if item_labels is None:
        raise ConfigError("model.sgfd needs item labels (see resolve_item_labels)")
    params = SGFDParams(
        ce_weight=sgfd.ce_weight, kd_weight=sgfd.kd_weight, temperature=sgfd.temperature
    )
    return SGFD(model, feature_dims, item_labels, params)


def item_label_source(
    cfg: ModelCfg, store_labels: np.ndarray | None, features: dict[str, np.ndarray]
) -> Literal["store", "kmeans"] | None:
    """Where SGFD's item labels come from, or ``None`` when the model has no ``sgfd`` section.

    ``label_source``: ``store`` takes the store's categories (``-1`` = unknown) and fails
    without them; ``kmeans`` clusters the item features; ``auto`` uses the store's when it has
    some labelled item, k-means otherwise.

    Raises:
        ConfigError: the configured source has nothing to give.
    """
    sgfd: SGFDCfg | None = getattr(cfg, "sgfd", None)
    if sgfd is None:
        return None
    has_store = store_labels is not None and bool((store_labels >= 0).any())
    if sgfd.label_source == "store" and not has_store:
        raise ConfigError("model.sgfd.label_source=store, but the store has no item labels")
    if has_store and sgfd.label_source != "kmeans":
        return "store"
    if not features:
        raise ConfigError("model.sgfd: no item labels and no features to derive them from")
    return "kmeans"


def resolve_item_labels(
    cfg: ModelCfg, store_labels: np.ndarray | None, features: dict[str, np.ndarray]
) -> torch.Tensor | None:
    """The item labels SGFD trains on (see :func:`item_label_source`), or ``None``."""
    source = item_label_source(cfg, store_labels, features)
    if source is None:
        return None
    if source == "store":
        assert store_labels is not None
        return torch.from_numpy(np.asarray(store_labels, dtype=np.int64))
    sgfd: SGFDCfg = cfg.sgfd  # type: ignore[union-attr]
    mats = [torch.from_numpy(np.array(f, dtype=np.float32)) for f in features.values()]
    return kmeans_labels(mats, sgfd.num_clusters, sgfd.kmeans_iters, sgfd.kmeans_seed)


def _params(cls: type[_P], cfg: ModelCfg) -> _P:
    """A model's hyperparameter dataclass, each field taken from the config field of its name."""
    return cls(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls)})


@register_model("lightgcn")
def _lightgcn(
    cfg: LightGCNCfg, num_users: int, num_items: int, feature_dims: dict[str, int]
) -> Recommender:
    return LightGCN(num_users, num_items, cfg.embedding_dim, cfg.num_layers, cfg.reg_weight)


@register_model("sea", "sand")
def _sea(cfg: SEACfg, num_users: int, num_items: int, feature_dims: dict[str, int]) -> Recommender:
    if len(feature_dims) < 2:
        raise ConfigError(
            f"model.name={cfg.name} needs at least two modalities, the data has "
            f"{list(feature_dims) or 'none'} (see data.modalities)"
        )
    params = _params(SEAParams, cfg)
    if params.needs_anchor:
        # Resolved here, where a bad or missing name can be refused as the key it came from.
        try:
            anchor = solo_anchor(list(feature_dims), cfg.solo_anchor)
        except ValueError as exc:
            raise ConfigError(f"model.solo_anchor: {exc}") from None
        params = dataclasses.replace(params, solo_anchor=anchor)
    return SEA(num_users, num_items, feature_dims, params)


@register_model("vbpr")
def _vbpr(
    cfg: VBPRCfg, num_users: int, num_items: int, feature_dims: dict[str, int]
) -> Recommender:
    if not feature_dims:
        raise ConfigError("model.name=vbpr needs at least one modality; the data has none")
    return VBPR(num_users, num_items, feature_dims, cfg.embedding_dim, cfg.reg_weight)


@register_model("mentor")
def _mentor(
    cfg: MENTORCfg, num_users: int, num_items: int, feature_dims: dict[str, int]
) -> Recommender:
    if not feature_dims:
        raise ConfigError("model.name=mentor needs at least one modality; the data has none")
    params = _params(MENTORParams, cfg)
    return MENTOR(num_users, num_items, feature_dims, params)
