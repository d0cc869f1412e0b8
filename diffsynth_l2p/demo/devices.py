"""Which devices the demo's workers run on, and in which order.

The release's rule: GPUs with almost nothing allocated (< 100 MB used) come first, then the others; within each group
the device with the most free memory comes first.
"""

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

UNUSED_BYTES = 100 * 1024**2
_CUDA_DEVICE = re.compile(r"cuda:(\d+)")


@dataclass(frozen=True)
class DeviceMemory:
    index: int
    free: int
    total: int

    @property
    def used(self) -> int:
        return self.total - self.free


def query_cuda_memory() -> list[DeviceMemory]:
    """Free and total bytes of every visible CUDA device (empty without CUDA)."""
    if not torch.cuda.is_available():
        return []
    return [DeviceMemory(index, *torch.cuda.mem_get_info(index)) for index in range(torch.cuda.device_count())]


def order_cuda_devices(memory: Sequence[DeviceMemory]) -> list[str]:
    """Device names, unused devices first, then by free memory (most first)."""
    ranked = sorted(memory, key=lambda m: (m.used >= UNUSED_BYTES, -m.free, m.index))
    return [f"cuda:{m.index}" for m in ranked]


def resolve_devices(
    spec: str = "auto", memory_query: Callable[[], list[DeviceMemory]] = query_cuda_memory
) -> list[str]:
    """Turn ``--devices`` into device names.

    ``auto``: every CUDA device in release order, or ``cpu`` without CUDA; ``cuda``: every CUDA device (an error
    without CUDA); ``cpu``; or an explicit comma-separated list such as ``cuda:0,cuda:1``.
    """
    spec = spec.strip().lower()
    if spec == "cpu":
        return ["cpu"]
    memory = memory_query()
    if spec in ("auto", "cuda"):
        if memory:
            return order_cuda_devices(memory)
        if spec == "cuda":
            raise ValueError("--devices cuda: no CUDA device is visible; use --devices cpu.")
        return ["cpu"]
    devices = [item.strip() for item in spec.split(",") if item.strip()]
    available = {m.index for m in memory}
    for device in devices:
        match = _CUDA_DEVICE.fullmatch(device)
        if device != "cpu" and match is None:
            raise ValueError(f"--devices: {device!r} is not a device; use auto, cpu, cuda, or e.g. cuda:0,cuda:1.")
        if match is not None and int(match.group(1)) not in available:
            raise ValueError(
                f"--devices: {device} is not visible (CUDA devices: {sorted(available) or 'none'}); "
                "check CUDA_VISIBLE_DEVICES or use --devices cpu."
            )
    if not devices or len(set(devices)) != len(devices):
        raise ValueError(f"--devices: {spec!r} must list each device once, e.g. cuda:0,cuda:1.")
    return devices


def worker_devices(devices: Sequence[str], workers_per_device: int) -> list[str]:
    """One entry per worker: each device repeated ``workers_per_device`` times, interleaved so load spreads."""
    if workers_per_device < 1:
        raise ValueError(f"--workers-per-device must be >= 1, got {workers_per_device}.")
    return [device for _ in range(workers_per_device) for device in devices]


def worker_names(devices: Sequence[str]) -> list[str]:
    """Unique, readable worker names such as ``cuda:0#0``, ``cuda:1#0``, ``cuda:0#1``."""
    seen: dict[str, int] = {}
    names = []
    for device in devices:
        names.append(f"{device}#{seen.get(device, 0)}")
        seen[device] = seen.get(device, 0) + 1
    return names
