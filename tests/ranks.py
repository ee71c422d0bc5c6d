"""Run a test function on real gloo processes, with a deadline that holds in parent and children.

A rank that waits on a collective forever must fail its test, not the suite: pytest-timeout
fails the test in the parent, but the spawned ranks are not daemons, so multiprocessing's exit
handler would join them and pytest would never exit (CI saw exactly this). Here every rank
dumps its stacks and exits at the deadline, and the parent kills whatever is left a little
later and fails the test.

The ranks never call ``destroy_process_group``: with gloo in torch < 2.8 it can deadlock
against a worker thread that frees a tensor's Python object (pytorch/pytorch#56297), and it
can wait on the store of a rank 0 that has already exited. Process exit tears the group down.
"""

from __future__ import annotations

import datetime
import faulthandler
import socket
import time
from typing import Any, Callable

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

#: Seconds the parent waits past the ranks' own deadline before killing them.
_GRACE_S = 20.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rank_entry(
    rank: int, fn: Callable[..., None], world: int, port: int, timeout_s: float, args: tuple
) -> None:
    faulthandler.dump_traceback_later(timeout_s, exit=True)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    torch.set_num_threads(1)
    fn(rank, world, *args)
    dist.barrier()  # no rank exits (and takes the store down) while another still needs it


def run_ranks(fn: Callable[..., None], world: int, *args: Any, timeout_s: float = 150.0) -> None:
    """Call ``fn(rank, world, *args)`` in ``world`` spawned processes joined in one gloo group.

    ``fn`` must be a module-level function (the ranks are spawned, not forked). An exception in
    any rank fails the caller with that rank's traceback; a rank still running ``timeout_s``
    seconds after the start is stopped, with its stacks on stderr, and the caller fails.
    """
    context = mp.start_processes(
        _rank_entry,
        args=(fn, world, free_port(), timeout_s, args),
        nprocs=world,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + timeout_s + _GRACE_S
    while not context.join(timeout=max(0.0, deadline - time.monotonic())):
        if time.monotonic() >= deadline:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
                process.join()
            pytest.fail(f"{world} ranks of {fn.__name__} still running after {timeout_s:.0f} s")
