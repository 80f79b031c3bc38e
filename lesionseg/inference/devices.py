"""The torch device helpers training and inference share: choosing the device (``auto`` takes CUDA when present,
else the CPU; ``cuda:N`` must exist), the subnormal-float switch, and the memory a run may take."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def resolve_device(name: str = "auto", local_rank: int | None = None):
    """A torch.device for ``auto``, ``cpu``, ``cuda`` or ``cuda:N``; a missing GPU is a clear error.

    ``local_rank`` (a torchrun process's GPU): ``auto`` and ``cuda`` take ``cuda:<local_rank>``, not the default GPU.
    """
    import torch

    name = (name or "auto").strip().lower()
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda" if local_rank is None else f"cuda:{local_rank}")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {name!r} asked for, but this torch ({torch.__version__}) sees no CUDA GPU; "
                "use --device cpu, or install a CUDA build of torch that matches the driver"
            )
        index = (local_rank or 0) if name == "cuda" else name.split(":", 1)[1]
        if not str(index).isdigit():
            raise ValueError(f"bad device {name!r}; write cuda:0, cuda:1, ...")
        count = torch.cuda.device_count()
        if int(index) >= count:
            raise ValueError(
                f"device {name!r} does not exist: this machine has {count} GPU(s), cuda:0..cuda:{count - 1}"
            )
        return torch.device(f"cuda:{int(index)}")
    raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")


def flushes_subnormals() -> bool:
    """Whether this thread flushes subnormal floats to zero (``torch.set_flush_denormal``, which has no getter)."""
    import torch

    # The smallest positive subnormal float32, built from its bits so that making it cannot flush it already.
    smallest = torch.tensor([1], dtype=torch.int32).view(torch.float32)
    return bool((smallest * 2)[0] == 0)


@contextlib.contextmanager
def subnormals_flushed(device: Any) -> Iterator[None]:
    """On the CPU, flush subnormal floats to zero while the network runs (trains), then restore what was before.

    x86 CPUs handle subnormals in microcode: near-zero activations (air, padding) made a UNet inference step, and
    the small gradients of the backward pass a training step, up to 30x slower (7 s against 0.23 s). Values below
    1e-38 cannot change an argmax, a probability that matters or a useful weight update.
    """
    import torch

    if getattr(device, "type", str(device)) != "cpu":
        yield
        return
    before = flushes_subnormals()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(before)


def free_memory_bytes(device) -> int:
    """Free memory where tensors on ``device`` live: GPU memory, else available RAM."""
    import torch

    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return available_ram_bytes()


def available_ram_bytes() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


@dataclass(frozen=True)
class HostMemory:
    """The memory this process may still take, and what sets that bound (for the message when it is too little)."""

    available_bytes: int
    limited_by: str


def host_memory() -> HostMemory:
    """The tightest of: the host's available RAM, the room left under this process's cgroup memory limit, and the
    room left under its address-space limit (``ulimit -v``).

    A run planned against free host RAM alone is killed without a message inside a container or a batch job's
    cgroup; planning against the limit that actually applies lets it be refused with a figure instead.
    """
    bounds = [HostMemory(available_ram_bytes(), "the machine's available RAM")]
    room = cgroup_room_bytes()
    if room is not None:
        bounds.append(HostMemory(room, "this process's cgroup memory limit"))
    room = address_space_room_bytes()
    if room is not None:
        bounds.append(HostMemory(room, "this process's address-space limit (ulimit -v)"))
    return min(bounds, key=lambda bound: bound.available_bytes)


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None  # "max" (v2) means no limit


def _reclaimable_file_cache(stat_file: Path, key: str) -> int:
    try:
        for line in stat_file.read_text(encoding="ascii").splitlines():
            name, _, value = line.partition(" ")
            if name == key and value.strip().isdigit():
                return int(value)
    except (OSError, UnicodeDecodeError):
        pass
    return 0


# cgroup v1 reports "no limit" as a huge page-aligned number rather than "max".
_V1_UNLIMITED = 1 << 60


def cgroup_room_bytes(root: str | Path = "/sys/fs/cgroup", self_cgroup: str | Path = "/proc/self/cgroup") -> int | None:
    """Bytes this process's memory cgroup (v2 ``memory.max``, or v1 ``memory.limit_in_bytes``) still allows, over
    its own folder and every folder above it; None when no limit applies or none can be read.

    Inactive page cache counts as free: the kernel reclaims it before it kills anything.
    """
    root = Path(root)
    try:
        lines = Path(self_cgroup).read_text(encoding="ascii").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    rooms: list[int] = []
    for line in lines:
        _hierarchy, _, rest = line.partition(":")
        controllers, _, cgroup_path = rest.partition(":")
        if controllers == "":  # cgroup v2: "0::/path"
            base, limit_name, usage_name, stat_key = root, "memory.max", "memory.current", "inactive_file"
            if not (base / "memory.max").exists() and (base / "unified").is_dir():
                base = base / "unified"
        elif "memory" in controllers.split(","):
            base, limit_name, usage_name, stat_key = (
                root / "memory",
                "memory.limit_in_bytes",
                "memory.usage_in_bytes",
                "total_inactive_file",
            )
        else:
            continue
        # Inside a cgroup namespace the mount shows this process's own group at the top, while /proc/self/cgroup
        # may still name a path outside it: try the named path, then each folder above it down to the mount.
        parts = [part for part in cgroup_path.strip("/").split("/") if part]
        for depth in range(len(parts), -1, -1):
            folder = base.joinpath(*parts[:depth])
            limit = _read_int(folder / limit_name)
            if limit is None or limit >= _V1_UNLIMITED:
                continue
            usage = _read_int(folder / usage_name) or 0
            usage -= _reclaimable_file_cache(folder / "memory.stat", stat_key)
            rooms.append(max(0, limit - max(usage, 0)))
    return min(rooms) if rooms else None


def address_space_room_bytes(status: str | Path = "/proc/self/status") -> int | None:
    """Bytes left under RLIMIT_AS (``ulimit -v``) after this process's current virtual size; None when unlimited."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY or soft < 0:
        return None
    size = 0
    try:
        for line in Path(status).read_text(encoding="ascii").splitlines():
            if line.startswith("VmSize:"):
                size = int(line.split()[1]) * 1024
                break
    except (OSError, UnicodeDecodeError, ValueError):
        pass
    return max(0, soft - size)
