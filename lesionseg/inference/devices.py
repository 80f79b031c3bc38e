"""Choosing the torch device: ``auto`` takes CUDA when present, else the CPU; ``cuda:N`` must exist."""

from __future__ import annotations

import os


def resolve_device(name: str = "auto"):
    """A torch.device for ``auto``, ``cpu``, ``cuda`` or ``cuda:N``; a missing GPU is a clear error."""
    import torch

    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {name!r} asked for, but this torch ({torch.__version__}) sees no CUDA GPU; "
                "use --device cpu, or install a CUDA build of torch that matches the driver"
            )
        index = 0 if name == "cuda" else name.split(":", 1)[1]
        if not str(index).isdigit():
            raise ValueError(f"bad device {name!r}; write cuda:0, cuda:1, ...")
        count = torch.cuda.device_count()
        if int(index) >= count:
            raise ValueError(
                f"device {name!r} does not exist: this machine has {count} GPU(s), cuda:0..cuda:{count - 1}"
            )
        return torch.device(f"cuda:{int(index)}")
    raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")


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
