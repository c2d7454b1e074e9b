"""CPU thread settings for processes that run the models, chosen once at start.

Why (measured, README "Sharing the CPU"): PyTorch's CPU wheels run intra-op work on
OpenMP (libgomp) with one thread per core and *active* waiting: a thread that reaches the
end of a parallel region spins until the others arrive. The models here are small, so
denoising is thousands of short parallel regions; when another busy process holds one of
the cores, every region waits for a descheduled thread (a scheduler slice, milliseconds)
instead of microseconds, and generation slowed 30-50x instead of the 2x a fair share explains.
Fewer threads than cores, and sleeping instead of spinning, make it degrade with the CPU share.

The wait policy has to be in the environment before `torch` is imported (libgomp reads it once,
when it loads; importing `e4t` imports torch): the `e4t` command sets OMP_WAIT_POLICY=PASSIVE
unless the environment says otherwise (`cli.prepare_process`). `configure()` sets the thread
counts and reports both.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

ENV_THREADS = "E4T_THREADS"  # thread count when --threads is not given ("auto" or a number)
WAIT_POLICY = "OMP_WAIT_POLICY"


@dataclass(frozen=True)
class ThreadSettings:
    intra_op: int
    inter_op: int
    cores: float  # CPUs this process may use (affinity and cgroup quota)
    source: str  # "--threads", "$E4T_THREADS" or "auto"
    wait_policy: str  # OpenMP's, as the loaded libgomp saw it

    def describe(self) -> str:
        return (
            f"torch threads: {self.intra_op} intra-op ({self.source}), {self.inter_op} inter-op; "
            f"{self.cores:g} CPUs available; OpenMP wait policy {self.wait_policy}"
        )


def _cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by a cgroup v2 `cpu.max` quota (containers), None without one."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def available_cores() -> float:
    """CPUs this process can run on: its affinity mask, capped by a cgroup quota."""
    cores = float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    quota = _cgroup_quota()
    return min(cores, quota) if quota else cores


def auto_threads(cores: float) -> int:
    """Half the available cores, at least one: the share left when one other busy process runs beside us.

    On the 2-core machines this is 1 thread, which measured as fast as 2 on an idle machine
    (the embedded models' ops are too small to split well) and far faster on a busy one.
    """
    return max(1, math.floor(cores / 2))


def parse_threads(value: str | int | None, what: str) -> int | None:
    """A thread count from a flag or environment: a positive number, or "auto"/""/None for the default."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "auto")):
        return None
    try:
        threads = int(value)
    except ValueError:
        raise ValueError(f"{what} has to be a positive whole number or 'auto' but is {value!r}.") from None
    if threads < 1:
        raise ValueError(f"{what} has to be at least 1 but is {threads}.")
    return threads


def configure(threads: int | str | None = None) -> ThreadSettings:
    """Set torch's intra-op threads (`threads`, else $E4T_THREADS, else `auto_threads`) and one inter-op thread."""
    import torch

    cores = available_cores()
    chosen, source = parse_threads(threads, "--threads"), "--threads"
    if chosen is None:
        chosen, source = parse_threads(os.environ.get(ENV_THREADS), f"${ENV_THREADS}"), f"${ENV_THREADS}"
    if chosen is None:
        chosen, source = auto_threads(cores), "auto"
    torch.set_num_threads(chosen)
    try:  # only possible before the first inter-op work; the models never use that pool
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    settings = ThreadSettings(
        intra_op=torch.get_num_threads(),
        inter_op=torch.get_num_interop_threads(),
        cores=cores,
        source=source,
        wait_policy=os.environ.get(WAIT_POLICY, "ACTIVE (default)"),
    )
    logger.info(settings.describe())
    return settings
