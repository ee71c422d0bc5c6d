"""Synthetic catalogues with real data's shape and a signal that modality features can carry.

The generative model, all in vectorised numpy:

1. **Items.** ``C = round(sqrt(I))`` topics with centres ``mu_c ~ N(0, I/K)`` (K = 32 latent
   dims, so ``|mu_c| ~ 1``). Items are spread evenly over topics and get latent factors
   ``z_i = mu_topic(i) + 0.6 * N(0, I/K)``. Popularity is a power law over a random item
   ranking, ``pop_i = rank_i ** -0.8``.
2. **Users.** Activity (interactions per user) is a Pareto law with minimum
   ``clip(E / 2U, 1, 5)`` whose mean makes the total exactly ``E``, capped at ``I / 2``. A
   user's factor ``u`` is the normalised mean of 1-3 "home" topic centres (drawn by topic
   popularity) plus noise.
3. **Interactions** by sampling-importance-resampling, because an exact softmax over a
   million items per user is out of reach. Proposal: a topic from
   ``softmax(<u, mu_c> / 0.2 + log mass_c)`` (``mass_c`` = the topic's total popularity), then
   an item of that topic with probability proportional to popularity; 4 candidates per
   interaction needed. Resampling: the user keeps ``n_u`` distinct candidates by Gumbel-top-k
   on ``<u, z_i> / 0.1``, i.e. sampled without replacement with weight ``exp(<u, z_i> / T)``.
   The kept items therefore follow approximately
   ``p(i | u) ~ p_u(topic(i)) * pop_i / mass_topic(i) * exp(<u, z_i> / T)``. A user whose
   candidates run short draws again with twice as many; after three such rounds the
   proposal becomes uniform over all items, which always terminates since ``n_u <= I / 2``.
4. **Split**: MMRec's per-user rule (:func:`sea_dist.data.splits.mmrec_split`).
5. **Features.** The K latent dims are cut into 8 shared dims and ``M`` private blocks of the
   rest, one per modality. Modality m sees ``z`` on the shared dims plus its own block,
   concatenated with an 8-d per-item nuisance vector common to all modalities (content that
   modalities share but that does not drive preference), mapped by a fixed random projection
   to its width, plus private Gaussian noise (std 0.5 against a signal of std ~1). Each
   modality thus carries a different part of the item factors, and only all of them together
   carry all of it, so multimodal models have something to gain over ID-only ones, above all
   on rarely seen items.

Everything is deterministic for a seed: each user chunk and feature block draws from its own
``numpy`` generator seeded by ``(seed, stream, index)``, and chunk boundaries depend only on
the requested sizes. Memory is bounded: the item arrays (``I x 32`` float32) plus one chunk of
about 256k interactions and 8M user-topic probabilities at a time.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from sea_dist.data.schema import ITEM_ID, SPLIT, USER_ID
from sea_dist.data.splits import mmrec_split
from sea_dist.data.store import Store, open_store, write_store
from sea_dist.errors import SeaDistError

LATENT_DIM = 32
SHARED_DIMS = 8
NUISANCE_DIM = 8
POPULARITY_EXPONENT = 0.8
WITHIN_TOPIC_SPREAD = 0.6
USER_NOISE = 0.5
MAX_HOME_TOPICS = 3
TOPIC_TEMPERATURE = 0.2
ITEM_TEMPERATURE = 0.1
CANDIDATES_PER_INTERACTION = 4
TOPIC_ROUNDS = 3
NUISANCE_SCALE = 0.7
PRIVATE_NOISE = 0.5
MAX_MIN_DEGREE = 5

_CHUNK_INTERACTIONS = 1 << 18
_CHUNK_PROBABILITIES = 1 << 23
_FEATURE_BLOCK = 1 << 15
_MAX_ROUNDS = 40
# Independent random streams, so that e.g. adding a modality leaves interactions unchanged.
_STREAM_CATALOGUE, _STREAM_DEGREES, _STREAM_USERS = 0, 1, 2
_STREAM_PROJECTION, _STREAM_NUISANCE, _STREAM_PRIVATE = 3, 4, 5


@dataclass(frozen=True)
class _Catalogue:
    """Item-side arrays; ``item_cdf`` is ``topic + within-topic cumulative popularity``."""

    factors: np.ndarray  # [I, K] float32
    centers: np.ndarray  # [C, K] float32
    log_mass: np.ndarray  # [C] float64
    topic_cdf: np.ndarray  # [C] float64, cumulative normalised topic mass
    sorted_items: np.ndarray  # [I] item ids ordered by topic
    topic_end: np.ndarray  # [C] end of each topic's run in sorted_items
    item_cdf: np.ndarray  # [I] float64, non-decreasing


def generate_store(
    out: str | Path,
    num_users: int,
    num_items: int,
    num_interactions: int,
    modalities: dict[str, int],
    seed: int,
    progress: bool = True,
    feature_dtype: str = "float32",
) -> Store:
    """Generate a synthetic catalogue (see the module docstring) and write it as a store.

    Args:
        out: store directory to create; must not exist.
        num_users: users, all with at least one interaction.
        num_items: items; some rare ones may end up without interactions.
        num_interactions: exact number of distinct (user, item) rows.
        modalities: modality name -> feature width, in store order.
        seed: the only source of randomness.
        progress: show tqdm progress bars on stderr.
        feature_dtype: ``"float32"`` or ``"float16"`` (half the disk and page cache, for
            million-item catalogues).

    Returns:
        The opened store.

    Raises:
        SeaDistError: if the sizes cannot be met (e.g. more interactions than fit).
    """
    _check_request(num_users, num_items, num_interactions, modalities, feature_dtype)
    catalogue = _make_catalogue(num_items, np.random.default_rng([seed, _STREAM_CATALOGUE]))
    degrees = _user_degrees(
        num_users, num_interactions, num_items, np.random.default_rng([seed, _STREAM_DEGREES])
    )
    latent_dims = _modality_dims(len(modalities))
    source = {
        "kind": "synthetic",
        "seed": seed,
        "num_users": num_users,
        "num_items": num_items,
        "num_interactions": num_interactions,
        "modalities": dict(modalities),
    }
    with write_store(out, source, f"generated catalogue (seed {seed})") as writer:
        bar = tqdm(
            total=num_interactions,
            desc="interactions",
            unit="rows",
            unit_scale=True,
            disable=not progress,
        )
        chunks = _user_chunks(degrees, len(catalogue.centers))
        for index, (lo, hi) in enumerate(chunks):
            rng = np.random.default_rng([seed, _STREAM_USERS, index])
            users, items = _sample_chunk(degrees[lo:hi], catalogue, rng)
            writer.append_interactions(
                {
                    USER_ID: (users + lo).astype(np.int32),
                    ITEM_ID: items.astype(np.int32),
                    SPLIT: mmrec_split(users, rng),
                }
            )
            bar.update(len(users))
        bar.close()
        for m, (name, width) in enumerate(modalities.items()):
            blocks = _feature_blocks(catalogue.factors, latent_dims[m], width, seed, m)
            writer.add_features(
                name,
                tqdm(
                    blocks,
                    total=math.ceil(num_items / _FEATURE_BLOCK),
                    desc=f"{name} features",
                    unit="blocks",
                    disable=not progress,
                ),
                (num_items, width),
                feature_dtype,
                source=f"generated {name} features",
            )
        writer.extra_meta["synthetic"] = {
            "latent_dim": LATENT_DIM,
            "num_topics": len(catalogue.centers),
            "popularity_exponent": POPULARITY_EXPONENT,
            "topic_temperature": TOPIC_TEMPERATURE,
            "item_temperature": ITEM_TEMPERATURE,
            "candidates_per_interaction": CANDIDATES_PER_INTERACTION,
            "min_user_degree": int(degrees.min()),
            "max_user_degree": int(degrees.max()),
            "modality_latent_dims": {
                name: latent_dims[m].tolist() for m, name in enumerate(modalities)
            },
        }
        writer.finish(num_users, num_items)
    return open_store(out)


def _check_request(
    num_users: int,
    num_items: int,
    num_interactions: int,
    modalities: dict[str, int],
    feature_dtype: str,
) -> None:
    if num_users < 1 or num_items < 2:
        raise SeaDistError(f"need at least 1 user and 2 items, got {num_users} and {num_items}")
    if num_interactions < num_users:
        raise SeaDistError(
            f"--interactions {num_interactions} is fewer than --users {num_users}; every user "
            "needs at least one interaction"
        )
    capacity = num_users * (num_items // 2)
    if num_interactions > capacity:
        raise SeaDistError(
            f"--interactions {num_interactions} exceeds users x items/2 = {capacity} "
            "(no user may interact with more than half the catalogue)"
        )
    if num_items >= 2**31 or num_users >= 2**31:
        raise SeaDistError("ids must fit in int32")
    for name, width in modalities.items():
        if not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
            raise SeaDistError(f"modality name {name!r}: use letters, digits, '_' or '-'")
        if width < 1:
            raise SeaDistError(f"modality {name}: width must be positive, got {width}")
    if feature_dtype not in ("float16", "float32"):
        raise SeaDistError(f"feature dtype must be float16 or float32, got {feature_dtype!r}")


def _make_catalogue(num_items: int, rng: np.random.Generator) -> _Catalogue:
    num_topics = int(min(num_items, max(2, round(math.sqrt(num_items)))))
    scale = 1.0 / math.sqrt(LATENT_DIM)
    centers = rng.standard_normal((num_topics, LATENT_DIM), dtype=np.float32) * scale
    topic = (rng.permutation(num_items) % num_topics).astype(np.int64)
    factors = rng.standard_normal((num_items, LATENT_DIM), dtype=np.float32)
    factors *= WITHIN_TOPIC_SPREAD * scale
    factors += centers[topic]
    popularity = (1.0 + rng.permutation(num_items)) ** -POPULARITY_EXPONENT

    sorted_items = np.argsort(topic, kind="stable")
    counts = np.bincount(topic, minlength=num_topics)
    topic_end = np.cumsum(counts)
    topic_start = topic_end - counts
    sorted_pop = popularity[sorted_items]
    mass = np.add.reduceat(sorted_pop, topic_start)
    running = np.cumsum(sorted_pop)
    before = np.repeat(running[topic_start] - sorted_pop[topic_start], counts)
    item_cdf = np.repeat(np.arange(num_topics), counts) + (running - before) / np.repeat(
        mass, counts
    )
    # Pin each topic's last entry to exactly topic + 1 so draws never spill into the next one.
    item_cdf[topic_end - 1] = np.arange(1, num_topics + 1)
    topic_cdf = np.cumsum(mass) / mass.sum()
    topic_cdf[-1] = 1.0
    return _Catalogue(
        factors=factors,
        centers=centers,
        log_mass=np.log(mass),
        topic_cdf=topic_cdf,
        sorted_items=sorted_items.astype(np.int64),
        topic_end=topic_end,
        item_cdf=item_cdf,
    )


def _user_degrees(
    num_users: int, num_interactions: int, num_items: int, rng: np.random.Generator
) -> np.ndarray:
    """Pareto-distributed interactions per user summing exactly to ``num_interactions``."""
    min_degree = int(np.clip(num_interactions // (2 * num_users), 1, MAX_MIN_DEGREE))
    cap = num_items // 2
    mean = num_interactions / num_users
    # A Pareto law with minimum x_m has mean x_m * a / (a - 1); solve for the shape a.
    shape = mean / (mean - min_degree) if mean > min_degree else 2.0
    weights = 1.0 + rng.pareto(shape, num_users)
    degrees = np.full(num_users, min_degree, dtype=np.int64)
    remaining = num_interactions - int(degrees.sum())
    while remaining > 0:
        # Users at the cap take no more; their share goes to the others on the next pass.
        open_weights = np.where(degrees < cap, weights, 0.0)
        extra = rng.multinomial(remaining, open_weights / open_weights.sum())
        extra = np.minimum(extra, cap - degrees)
        degrees += extra
        remaining -= int(extra.sum())
    return degrees


def _user_chunks(degrees: np.ndarray, num_topics: int) -> list[tuple[int, int]]:
    """Consecutive user ranges of about ``_CHUNK_INTERACTIONS`` rows each."""
    max_users = max(1, _CHUNK_PROBABILITIES // num_topics)
    cumulative = np.cumsum(degrees)
    bounds = [(0, 0)]
    while bounds[-1][1] < len(degrees):
        lo = bounds[-1][1]
        done = int(cumulative[lo - 1]) if lo else 0
        hi = int(np.searchsorted(cumulative, done + _CHUNK_INTERACTIONS, side="right"))
        bounds.append((lo, min(max(hi, lo + 1), lo + max_users, len(degrees))))
    return bounds[1:]


def _sample_chunk(
    degrees: np.ndarray, cat: _Catalogue, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Sample ``degrees[u]`` distinct items for each user of the chunk (local user ids).

    Returns:
        ``(users, items)`` int64, sorted by user then item.
    """
    num_users = len(degrees)
    num_topics, num_items = len(cat.centers), len(cat.factors)
    user_factors = _user_factors(num_users, cat, rng)
    # [n, C] topic distribution per user, flattened with row offsets so that one
    # searchsorted draws a topic for every candidate of every user.
    logits = (user_factors @ cat.centers.T).astype(np.float64) / TOPIC_TEMPERATURE + cat.log_mass
    logits -= logits.max(axis=1, keepdims=True)
    cdf = np.cumsum(np.exp(logits), axis=1)
    cdf /= cdf[:, -1:]
    cdf += np.arange(num_users)[:, None]
    flat_cdf = cdf.ravel()
    del logits, cdf

    chosen_users = np.zeros(0, dtype=np.int64)
    chosen_items = np.zeros(0, dtype=np.int64)
    need = degrees.copy()
    for round_index in range(_MAX_ROUNDS):
        active = need > 0
        if not active.any():
            break
        draws = np.where(active, need, 0) * (CANDIDATES_PER_INTERACTION << round_index)
        cand_users = np.repeat(np.arange(num_users), draws)
        if round_index < TOPIC_ROUNDS:
            position = np.searchsorted(flat_cdf, cand_users + rng.random(len(cand_users)), "right")
            topics = np.clip(position - cand_users * num_topics, 0, num_topics - 1)
            slot = np.searchsorted(cat.item_cdf, topics + rng.random(len(topics)), "right")
            cand_items = cat.sorted_items[np.minimum(slot, cat.topic_end[topics] - 1)]
        else:
            cand_items = rng.integers(0, num_items, len(cand_users))
        scores = np.einsum("ij,ij->i", cat.factors[cand_items], user_factors[cand_users])
        scores = scores.astype(np.float64) / ITEM_TEMPERATURE + rng.gumbel(size=len(scores))
        # Items already chosen for a still-active user rejoin the pool ahead of all candidates.
        rejoin = active[chosen_users]
        pool_users = np.concatenate([chosen_users[rejoin], cand_users])
        pool_items = np.concatenate([chosen_items[rejoin], cand_items])
        pool_scores = np.concatenate([np.full(int(rejoin.sum()), np.inf), scores])
        picked_users, picked_items = _top_distinct(
            pool_users, pool_items, pool_scores, degrees, num_items
        )
        chosen_users = np.concatenate([chosen_users[~rejoin], picked_users])
        chosen_items = np.concatenate([chosen_items[~rejoin], picked_items])
        need = degrees - np.bincount(chosen_users, minlength=num_users)
    else:
        raise RuntimeError("synthetic sampler did not fill every user; this is a bug")
    order = np.lexsort((chosen_items, chosen_users))
    return chosen_users[order], chosen_items[order]


def _user_factors(num_users: int, cat: _Catalogue, rng: np.random.Generator) -> np.ndarray:
    num_home = rng.integers(1, MAX_HOME_TOPICS + 1, num_users)
    home = np.searchsorted(cat.topic_cdf, rng.random((num_users, MAX_HOME_TOPICS)), "right")
    home = np.minimum(home, len(cat.centers) - 1)
    mask = np.arange(MAX_HOME_TOPICS)[None, :] < num_home[:, None]
    factors = (cat.centers[home] * mask[:, :, None]).sum(axis=1) / num_home[:, None]
    noise = rng.standard_normal((num_users, LATENT_DIM), dtype=np.float32)
    factors += noise * (USER_NOISE / math.sqrt(LATENT_DIM))
    factors /= np.linalg.norm(factors, axis=1, keepdims=True)
    return factors.astype(np.float32)


def _top_distinct(
    users: np.ndarray, items: np.ndarray, scores: np.ndarray, degrees: np.ndarray, num_items: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per user, the ``degrees[user]`` distinct items with the highest scores."""
    order = np.lexsort((-scores, users))
    users, items = users[order], items[order]
    # np.unique's return_index gives each pair's first position, i.e. its best score.
    _, first = np.unique(users * num_items + items, return_index=True)
    keep = np.zeros(len(users), dtype=bool)
    keep[first] = True
    users, items = users[keep], items[keep]
    run_start = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    lengths = np.diff(np.r_[run_start, len(users)])
    rank = np.arange(len(users)) - np.repeat(run_start, lengths)
    selected = rank < degrees[users]
    return users[selected], items[selected]


def _modality_dims(num_modalities: int) -> list[np.ndarray]:
    """Latent dims each modality sees: the shared ones plus a private block."""
    shared = np.arange(SHARED_DIMS)
    private = np.array_split(np.arange(SHARED_DIMS, LATENT_DIM), max(num_modalities, 1))
    return [np.concatenate([shared, private[m]]) for m in range(num_modalities)]


def _feature_blocks(
    factors: np.ndarray, dims: np.ndarray, width: int, seed: int, modality: int
) -> Iterator[np.ndarray]:
    num_items = len(factors)
    in_dim = len(dims) + NUISANCE_DIM
    projection = np.random.default_rng([seed, _STREAM_PROJECTION, modality]).standard_normal(
        (in_dim, width), dtype=np.float32
    ) / np.float32(math.sqrt(in_dim))
    for block, start in enumerate(range(0, num_items, _FEATURE_BLOCK)):
        stop = min(start + _FEATURE_BLOCK, num_items)
        # Same stream for every modality: the nuisance part is shared content.
        nuisance = np.random.default_rng([seed, _STREAM_NUISANCE, block]).standard_normal(
            (stop - start, NUISANCE_DIM), dtype=np.float32
        )
        signal = np.concatenate(
            [
                factors[start:stop][:, dims] * np.float32(math.sqrt(LATENT_DIM)),
                nuisance * np.float32(NUISANCE_SCALE),
            ],
            axis=1,
        )
        private = np.random.default_rng([seed, _STREAM_PRIVATE, modality, block]).standard_normal(
            (stop - start, width), dtype=np.float32
        )
        yield signal @ projection + private * np.float32(PRIVATE_NOISE)
