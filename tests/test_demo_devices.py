"""Device discovery and ordering for the demo's worker pool, with the CUDA memory query injected."""

import pytest
import torch

from diffsynth_l2p.demo.devices import (
    DeviceMemory,
    order_cuda_devices,
    query_cuda_memory,
    resolve_devices,
    worker_devices,
    worker_names,
)
from diffsynth_l2p.validation import resolve_dtype

MB = 1024**2
GB = 1024**3


def gpus(*used_and_free):
    """Fake devices from (used, free) byte pairs, indexed in order."""
    return lambda: [DeviceMemory(i, free, used + free) for i, (used, free) in enumerate(used_and_free)]


def test_unused_devices_come_first_then_by_free_memory():
    memory = gpus(
        (2 * GB, 70 * GB),  # busy, most free
        (50 * MB, 10 * GB),  # unused, small
        (99 * MB, 40 * GB),  # unused, larger
        (30 * GB, 50 * GB),  # busy
        (100 * MB, 79 * GB),  # exactly 100 MB counts as used
    )()
    assert order_cuda_devices(memory) == ["cuda:2", "cuda:1", "cuda:4", "cuda:0", "cuda:3"]


def test_ties_keep_index_order():
    assert order_cuda_devices(gpus((0, GB), (0, GB), (0, GB))()) == ["cuda:0", "cuda:1", "cuda:2"]


def test_auto_uses_all_gpus_in_release_order():
    assert resolve_devices("auto", gpus((5 * GB, 10 * GB), (0, 8 * GB))) == ["cuda:1", "cuda:0"]
    assert resolve_devices("cuda", gpus((5 * GB, 10 * GB), (0, 8 * GB))) == ["cuda:1", "cuda:0"]


def test_auto_falls_back_to_cpu_without_cuda():
    assert resolve_devices("auto", gpus()) == ["cpu"]
    with pytest.raises(ValueError, match="no CUDA device.*--devices cpu"):
        resolve_devices("cuda", gpus())


def test_cpu_never_queries_cuda():
    def fail():
        raise AssertionError("the CUDA query must not run for --devices cpu")

    assert resolve_devices("cpu", fail) == ["cpu"]


def test_explicit_list_keeps_the_given_order():
    query = gpus((0, GB), (0, GB), (0, GB))
    assert resolve_devices("cuda:2, cuda:0", query) == ["cuda:2", "cuda:0"]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("cuda:3", r"cuda:3 is not visible \(CUDA devices: \[0, 1\]\)"),
        ("gpu0", "'gpu0' is not a device"),
        ("cuda:0,cuda:0", "each device once"),
        (",", "each device once"),
    ],
)
def test_explicit_list_errors_name_the_fix(spec, message):
    with pytest.raises(ValueError, match=message):
        resolve_devices(spec, gpus((0, GB), (0, GB)))


def test_workers_per_device_interleaves_devices_and_names_are_unique():
    devices = worker_devices(["cuda:1", "cuda:0"], 2)
    assert devices == ["cuda:1", "cuda:0", "cuda:1", "cuda:0"]
    assert worker_names(devices) == ["cuda:1#0", "cuda:0#0", "cuda:1#1", "cuda:0#1"]
    assert worker_names(worker_devices(["cpu"], 2)) == ["cpu#0", "cpu#1"]
    with pytest.raises(ValueError, match="--workers-per-device must be >= 1"):
        worker_devices(["cpu"], 0)


def test_dtype_auto_depends_on_device():
    assert resolve_dtype("auto", "cpu") is resolve_dtype(None, "cpu") is torch.float32
    assert resolve_dtype("auto", "cuda:0") is torch.bfloat16
    assert resolve_dtype("float16", "cpu") is torch.float16
    with pytest.raises(ValueError, match="'fp8' is not one of auto, float32"):
        resolve_dtype("fp8", "cpu")


def test_real_query_on_this_machine_matches_torch():
    memory = query_cuda_memory()
    assert len(memory) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert all(0 <= m.free <= m.total for m in memory)
