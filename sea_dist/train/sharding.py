"""Row-wise sharded ID tables: each worker stores 1/P of every table's rows and their state.

A table of ``N`` rows is cut into ``P`` contiguous blocks of ``ceil(N / P)`` rows (the last one
padded); rank ``r`` owns block ``r``. A lookup is two ``all_to_all_single`` calls on a process
group of its own: the ids go to the ranks that own them, the rows come back. Its backward sends
each row's gradient to the owner, which sums what every rank sent, divided by ``P`` (the mean
that DDP and the replicated row-sparse sync take), into a sparse gradient of its own block;
``SparseAdam`` then updates the owned rows, with moments for those rows only. No rank allocates
a full table, gradient or optimizer state while training. Every rank must look tables up the
same number of times in the same order in a step, as DDP requires of its collectives: the
models have one code path, so they do.

Checkpoints keep the shards: :func:`sharded_state` splits the training state into what rank 0
writes (the model without the tables' rows, the optimizer without their moments) and this
rank's rows of the tables and moments as ``ShardedTensor`` s, which every rank writes with
``torch.distributed.checkpoint`` (``train/checkpoint.py``); no rank gathers a table.
:func:`load_sharded_state` reads them back into any layout: this rank's block on any number of
workers, or whole tables in an unsharded model (one worker, ``sea-dist evaluate``).
:func:`shard_model_state` / :func:`shard_optimizer_state` cut a replicated-layout state (a
checkpoint of replicated tables) to this rank's rows.

Why not TorchRec: it was tried first (torchrec 0.6.0, fbgemm-gpu-cpu 0.6.0, torch 2.2.1, gloo,
CPU), and row-wise sharding does not train there:

- ``EmbeddingCollection`` (one row per id, what a GNN needs) fails its first sharded lookup with
  "Split sizes doesn't match total dim 0 size": fbgemm's CPU kernel ignores
  ``PoolingMode.NONE`` and sums the ids of a bag (FBGEMM issue 4586, open in fbgemm 1.1.0);
- a row-wise ``EmbeddingBagCollection`` needs an asynchronous reduce-scatter that gloo lacks:
  "Gloo reduce_scatter_base fallback not supported with async_op=True" (torchrec issue 1252);
- the fused CPU optimizers are SGD and Adagrad variants only ("Optimizer adam is not supported
  in CPU mode"), and the models train with Adam;
- a sharded module cannot load a plain CPU state dict ("Device index must not be negative").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed._shard.metadata import ShardMetadata
from torch.distributed._shard.sharded_tensor import Shard, ShardedTensor
from torch.distributed._shard.sharded_tensor.metadata import ShardedTensorMetadata, TensorProperties

from sea_dist.models.tables import IdTable
from sea_dist.train.sparse_sync import nonzero_rows


class ShardedIdTable(nn.Module):
    """The rows ``[rank * block, (rank + 1) * block)`` of an :class:`IdTable`, looked up from
    every rank.

    Args:
        table: the full table to take this rank's rows from (its other rows are not kept); if
            it was never filled (:func:`~sea_dist.models.tables.deferred_tables`), this rank's
            initial rows are drawn instead.
        rank: this worker's rank; world: the number of workers.
        group: the process group of the lookups' all-to-alls.

    Attributes:
        weight: ``[block, dim]``, this rank's rows (padding rows past ``num_rows`` are never read).
        bytes_sent: bytes of ids, rows and gradients this rank sent to others, since last reset.
    """

    def __init__(self, table: IdTable, rank: int, world: int, group: Any) -> None:
        super().__init__()
        self.num_rows, self.dim = table.num_rows, table.dim
        self.rank, self.world, self.group = rank, world, group
        self.block = math.ceil(self.num_rows / world)
        start = min(rank * self.block, self.num_rows)
        stop = min(start + self.block, self.num_rows)
        # A table built under deferred_tables() was never filled: draw this rank's rows only.
        rows = (
            table.weight.detach()[start:stop] if table.filled else table.initial_rows(start, stop)
        )
        self.weight = nn.Parameter(_block_of(rows, 0, self.block).clone())
        self.bytes_sent = 0

    def forward(self, ids: Tensor) -> Tensor:
        rows = _ShardedLookup.apply(self.weight, ids.reshape(-1), self)
        return rows.view(*ids.shape, self.dim)

    def extra_repr(self) -> str:
        return f"{self.num_rows}, {self.dim}, rows {self.rank * self.block}+{self.block} of {self.world}"


def _block_of(full: Tensor, rank: int, block: int) -> Tensor:
    """Rows ``[rank * block, (rank + 1) * block)`` of ``full``, zero-padded to ``block`` rows."""
    part = full[rank * block : (rank + 1) * block]
    if part.shape[0] == block:
        return part
    return torch.cat([part, part.new_zeros((block - part.shape[0], *part.shape[1:]))])


def _exchange(values: Tensor, send: list[int], recv: list[int], group: Any) -> Tensor:
    out = values.new_empty((sum(recv), *values.shape[1:]))
    dist.all_to_all_single(out, values.contiguous(), recv, send, group=group)
    return out


def _route(owner: Tensor, world: int, group: Any) -> tuple[Tensor, list[int], list[int]]:
    """The order that groups requests by owner, and how many go to / come from each rank."""
    order = torch.argsort(owner, stable=True)
    send_counts = torch.bincount(owner, minlength=world)
    recv_counts = torch.empty_like(send_counts)
    dist.all_to_all_single(recv_counts, send_counts, group=group)
    return order, send_counts.tolist(), recv_counts.tolist()


def _fetch(
    local: Tensor, owner: Tensor, index: Tensor, world: int, group: Any
) -> tuple[Tensor, Tensor, Tensor, list[int], list[int]]:
    """:func:`fetch_rows` and its routing: the rows, the owner order, the indices this rank
    served, and the counts sent to / received from each rank (what a backward sends back by)."""
    order, send, recv = _route(owner, world, group)
    served = _exchange(index[order], send, recv, group)
    rows = _exchange(local[served], recv, send, group)
    out = torch.empty_like(rows)
    out[order] = rows
    return out, order, served, send, recv


def fetch_rows(local: Tensor, owner: Tensor, index: Tensor, group: Any = None) -> Tensor:
    """Rows ``index[k]`` of rank ``owner[k]``'s ``local``, for every k (collective).

    Every rank calls it the same number of times, with its own requests (possibly none); only
    the requested rows travel, never a whole ``local``.
    """
    return _fetch(local, owner, index, dist.get_world_size(group), group)[0]


class _ShardedLookup(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, weight: Tensor, ids: Tensor, table: ShardedIdTable) -> Tensor:
        owner = torch.div(ids, table.block, rounding_mode="floor")
        out, order, local, send, recv = _fetch(
            weight, owner, ids - owner * table.block, table.world, table.group
        )
        ctx.save_for_backward(order, local)
        ctx.table, ctx.send, ctx.recv = table, send, recv
        mine = table.rank
        row_bytes = weight.shape[1] * weight.element_size()
        # ids out, rows back, gradients out again (backward): to the other ranks only
        table.bytes_sent += (sum(send) - send[mine]) * (ids.element_size() + row_bytes)
        table.bytes_sent += (sum(recv) - recv[mine]) * row_bytes
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        order, local = ctx.saved_tensors
        table: ShardedIdTable = ctx.table
        received = _exchange(grad[order], ctx.send, ctx.recv, table.group)
        shape = (table.block, table.dim)
        summed = torch.sparse_coo_tensor(local.unsqueeze(0), received / table.world, shape)
        # Rows whose gradient sums to zero are left out, as the replicated sync leaves them
        # out: SparseAdam decays the moments of every row present, zero or not.
        rows, values = nonzero_rows(summed)
        grad_weight = torch.sparse_coo_tensor(rows.unsqueeze(0), values, shape, is_coalesced=True)
        return grad_weight, None, None


def shard_tables(model: nn.Module, rank: int, world: int) -> dict[str, ShardedIdTable]:
    """Replace every :class:`IdTable` of ``model`` by this rank's :class:`ShardedIdTable`.

    Collective: every rank calls it on the same model (it creates the lookups' process group).

    Returns:
        Module name -> sharded table, in ``model.named_modules()`` order.
    """
    group = dist.new_group(backend=dist.get_backend())
    sharded: dict[str, ShardedIdTable] = {}
    for name, module in list(model.named_modules()):
        if isinstance(module, IdTable):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            sharded[name] = ShardedIdTable(module, rank, world, group)
            setattr(parent, child, sharded[name])
    return sharded


def take_bytes_sent(tables: dict[str, ShardedIdTable]) -> int:
    """Bytes the tables sent since the last call (and reset the counters)."""
    sent = sum(t.bytes_sent for t in tables.values())
    for t in tables.values():
        t.bytes_sent = 0
    return sent


MOMENTS = ("exp_avg", "exp_avg_sq")  # SparseAdam's per-row state


def table_rows(local: Tensor, table: ShardedIdTable) -> ShardedTensor:
    """``local``, this rank's block of a ``[table.num_rows, ...]`` tensor (a table or one of its
    moments, on the CPU), as the rows it holds of the whole, for DCP (padding rows left out).

    Every rank knows the block layout, so the global metadata is built without communication.
    """
    rest = list(local.shape[1:])

    def rows(rank: int) -> int:
        return max(0, min(table.block, table.num_rows - rank * table.block))

    shards = [
        ShardMetadata([r * table.block] + [0] * len(rest), [rows(r), *rest], f"rank:{r}/cpu")
        for r in range(table.world)
        if rows(r) > 0
    ]
    # Blocks are filled in rank order, so the ranks with rows are the first len(shards).
    mine = rows(table.rank)
    local_shards = [Shard(local[:mine], shards[table.rank])] if mine > 0 else []
    metadata = ShardedTensorMetadata(
        shards, torch.Size([table.num_rows, *rest]), TensorProperties.create_from_tensor(local)
    )
    return ShardedTensor._init_from_local_shards_and_global_metadata(local_shards, metadata)


def _param_names(model: nn.Module) -> dict[int, str]:
    return {id(p): name for name, p in model.named_parameters()}


def sharded_state(
    model: nn.Module, optimizer: torch.optim.Optimizer | None, tables: dict[str, ShardedIdTable]
) -> tuple[dict[str, Tensor], dict[str, Any] | None, dict[str, ShardedTensor]]:
    """Split the state of ``model`` and of ``optimizer`` (the tables' SparseAdam) for a checkpoint.

    Returns:
        The model's state dict without the tables, the optimizer's without their moments (what
        rank 0 writes), and this rank's rows of every table (``<param>``) and moment
        (``<param>/<moment>``): what every rank writes.
    """
    names = _param_names(model)
    keys = {names[id(t.weight)] for t in tables.values()}
    model_state = {k: v for k, v in model.state_dict().items() if k not in keys}
    rows = {names[id(t.weight)]: table_rows(t.weight.detach().cpu(), t) for t in tables.values()}
    if optimizer is None:
        return model_state, None, rows
    full = optimizer.state_dict()
    opt_state: dict[str, Any] = {"param_groups": full["param_groups"], "state": {}}
    for index, table in enumerate(_tables_of(optimizer, tables)):
        entry = full["state"].get(index)
        if entry is None:
            continue  # never stepped: nothing to keep
        opt_state["state"][index] = {"step": entry["step"]}
        for moment in MOMENTS:
            rows[f"{names[id(table.weight)]}/{moment}"] = table_rows(entry[moment].cpu(), table)
    return model_state, opt_state, rows


def load_sharded_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    tables: dict[str, ShardedIdTable],
    keys: list[str],
    model_state: dict[str, Tensor],
    opt_state: dict[str, Any] | None,
    read: Callable[[dict[str, Tensor | ShardedTensor]], None],
) -> None:
    """Load what :func:`sharded_state` split, into any layout.

    Args:
        model: with ``tables`` sharded (this rank's rows are read), or unsharded (``tables``
            empty: whole tables are read, in one process).
        optimizer: the tables' SparseAdam, or None to load the model only.
        keys: the parameters the checkpoint keeps row by row (its ``<param>`` keys).
        model_state, opt_state: rank 0's part (``opt_state`` may be None with no optimizer).
        read: fills a dict of ``<param>`` / ``<param>/<moment>`` targets in place
            (:func:`sea_dist.train.checkpoint.load_tables` on the checkpoint).
    """
    current = model.state_dict()  # shares storage with the parameters: reads land in them
    by_key = {f"{name}.weight": t for name, t in tables.items()}
    staged: dict[str, Tensor] = {}  # CPU tensors DCP fills; copied to the device afterwards

    def target(key: str, param_key: str, local: Tensor) -> Tensor | ShardedTensor:
        staged[key] = local if local.device.type == "cpu" else torch.empty_like(local, device="cpu")
        table = by_key.get(param_key)
        return table_rows(staged[key], table) if table is not None else staged[key]

    targets = {key: target(key, key, current[key]) for key in keys}
    moments: dict[int, dict[str, Tensor]] = {}
    if optimizer is not None and opt_state is not None:
        names = _param_names(model)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        for index in opt_state["state"]:
            key = names[id(params[int(index)])]
            moments[int(index)] = {m: torch.zeros_like(current[key], device="cpu") for m in MOMENTS}
            for moment, tensor in moments[int(index)].items():
                targets[f"{key}/{moment}"] = target(f"{key}/{moment}", key, tensor)
    read(targets)
    for key in keys:
        if staged[key] is not current[key]:
            current[key].copy_(staged[key])
    model.load_state_dict({**model_state, **{key: current[key] for key in keys}})
    if optimizer is not None and opt_state is not None:
        state = {i: {**entry, **moments[int(i)]} for i, entry in opt_state["state"].items()}
        optimizer.load_state_dict({"param_groups": opt_state["param_groups"], "state": state})


def shard_model_state(
    state: dict[str, Tensor], tables: dict[str, ShardedIdTable]
) -> dict[str, Tensor]:
    """A full (replicated-layout) state dict cut to this rank's rows of every sharded table."""
    state = dict(state)
    for name, table in tables.items():
        state[f"{name}.weight"] = _block_of(state[f"{name}.weight"], table.rank, table.block)
    return state


def _tables_of(
    optimizer: torch.optim.Optimizer, tables: dict[str, ShardedIdTable]
) -> list[ShardedIdTable]:
    """The sharded table of each of ``optimizer``'s parameters, in the order its state dict
    numbers them (parameters counted across its groups), matched by identity."""
    by_param = {id(t.weight): t for t in tables.values()}
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if any(id(p) not in by_param for p in params):
        raise ValueError("the optimizer holds a parameter that is not a sharded table's")
    return [by_param[id(p)] for p in params]


def shard_optimizer_state(
    optimizer: torch.optim.Optimizer, state: dict[str, Any], tables: dict[str, ShardedIdTable]
) -> dict[str, Any]:
    """A full-table state dict for ``optimizer`` cut to this rank's rows."""
    owners = _tables_of(optimizer, tables)
    local = {"param_groups": state["param_groups"], "state": {}}
    for index, entry in state["state"].items():
        table = owners[int(index)]
        local["state"][index] = {
            key: _block_of(value, table.rank, table.block) if key != "step" else value
            for key, value in entry.items()
        }
    return local
