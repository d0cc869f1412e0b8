"""Header-only reads, validation of damaged files, streaming writes, closing, and the atomic-output guard."""

import os
from pathlib import Path

import pytest
import torch
from diffsynth.core import hash_state_dict_keys
from safetensors import safe_open
from safetensors.torch import save_file
from tiny_checkpoints import is_mapped, needs_proc_maps

from diffsynth_l2p.atomic import atomic_open
from diffsynth_l2p.safetensors_io import (
    SafetensorsCheckpoint,
    TensorInfo,
    atomic_output,
    hash_checkpoint,
    layout_hash,
    read_header,
    read_headers,
    same_bits,
    tensor_info,
    write_safetensors,
)


def mixed_state() -> dict:
    generator = torch.Generator().manual_seed(0)
    return {
        "a.weight": torch.randn(4, 3, generator=generator).to(torch.bfloat16),
        "a.bias": torch.randn(4, generator=generator),
        "steps": torch.tensor(7, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
        "half": torch.randn(2, 2, 2, generator=generator).half(),
    }


def test_read_header_reports_dtype_and_shape_of_every_tensor(tmp_path):
    path = tmp_path / "m.safetensors"
    state = mixed_state()
    save_file(state, str(path))
    header = read_header(path)
    assert header == {key: tensor_info(value) for key, value in state.items()}
    assert header["a.weight"] == TensorInfo("BF16", (4, 3)) and header["a.weight"].nbytes == 24
    assert header["steps"].shape == () and header["steps"].numel == 1


def test_shards_read_as_one_checkpoint_and_duplicate_keys_are_refused(tmp_path):
    state = mixed_state()
    first, second = tmp_path / "s1.safetensors", tmp_path / "s2.safetensors"
    save_file({k: state[k] for k in ("a.weight", "steps")}, str(first))
    save_file({k: state[k] for k in ("a.bias", "mask", "half")}, str(second))
    checkpoint = SafetensorsCheckpoint([first, second])
    assert set(checkpoint) == set(state) and len(checkpoint) == 5
    assert all(same_bits(checkpoint[key], value) for key, value in state.items())
    assert hash_checkpoint([first, second]) == hash_state_dict_keys(state)

    save_file({"a.bias": state["a.bias"]}, str(tmp_path / "dup.safetensors"))
    with pytest.raises(ValueError, match="a.bias.*dup.safetensors"):
        read_headers([first, second, tmp_path / "dup.safetensors"])


@needs_proc_maps
def test_checkpoint_unmaps_its_files_on_close_and_tensors_read_before_stay_valid(tmp_path):
    state = mixed_state()
    first, second = tmp_path / "s1.safetensors", tmp_path / "s2.safetensors"
    save_file({k: state[k] for k in ("a.weight", "steps")}, str(first))
    save_file({k: state[k] for k in ("a.bias", "mask", "half")}, str(second))
    with SafetensorsCheckpoint([first, second]) as checkpoint:
        assert is_mapped(first) and is_mapped(second)
        weight = checkpoint["a.weight"]
    assert same_bits(weight, state["a.weight"])  # a tensor read before closing keeps its own part of the mapping
    del weight
    assert not is_mapped(first) and not is_mapped(second)  # though `checkpoint` is still referenced
    with pytest.raises(Exception, match="closed"):
        checkpoint["a.bias"]
    assert set(checkpoint) == set(state)  # the header stays readable

    checkpoint = SafetensorsCheckpoint(first)
    checkpoint.close()
    assert not is_mapped(first)


def test_missing_file_is_named(tmp_path):
    missing = tmp_path / "shard-2.safetensors"
    with pytest.raises(FileNotFoundError, match="shard-2.safetensors"):
        read_headers([missing])


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[:-5],  # truncated download
        lambda data: data[:4],  # not even a header length
        lambda data: data[:8] + b"{not json" + data[17:],  # garbled header
        lambda data: (10**12).to_bytes(8, "little") + data[8:],  # absurd header length
        lambda data: data + b"\0" * 16,  # trailing garbage
    ],
)
def test_damaged_files_are_reported_as_corrupt(tmp_path, damage):
    path = tmp_path / "broken.safetensors"
    save_file(mixed_state(), str(path))
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ValueError, match=r"broken\.safetensors is corrupt or truncated.*re-download"):
        read_header(path)
    with pytest.raises(ValueError, match="corrupt or truncated"):
        hash_checkpoint(path)


def test_streamed_write_is_a_valid_safetensors_file_with_identical_bits(tmp_path):
    state = mixed_state()
    layout = {key: tensor_info(value) for key, value in state.items()}
    path = tmp_path / "out.safetensors"
    write_safetensors(path, layout, state.__getitem__, metadata={"format": "pt"})
    with safe_open(str(path), framework="pt") as file:
        assert file.metadata() == {"format": "pt"}
        assert all(same_bits(file.get_tensor(key), value) for key, value in state.items())
    assert (8 + int.from_bytes(path.read_bytes()[:8], "little")) % 8 == 0
    assert hash_checkpoint(path) == layout_hash(layout) == hash_state_dict_keys(state)


def test_write_refuses_a_tensor_that_contradicts_the_layout(tmp_path):
    state = mixed_state()
    layout = {key: tensor_info(value) for key, value in state.items()}
    layout["a.bias"] = TensorInfo("BF16", (4,))
    with pytest.raises(ValueError, match="a.bias"):
        write_safetensors(tmp_path / "out.safetensors", layout, state.__getitem__)


def test_same_bits_is_exact():
    a = torch.tensor([1.0, float("nan")])
    assert same_bits(a, a.clone()) and not torch.equal(a, a.clone())
    assert not same_bits(a, a.to(torch.float64))
    assert not same_bits(torch.tensor([0.0]), torch.tensor([-0.0]))


def test_files_diffsynth_would_not_recognise_are_refused(tmp_path):
    path = tmp_path / "model.st"
    save_file(mixed_state(), str(path))
    with pytest.raises(ValueError, match=r"model\.st: DiffSynth only recognises .*\.safetensors"):
        hash_checkpoint(path)
    with pytest.raises(ValueError, match="rename it"), atomic_output(tmp_path / "out.bin"):
        pass
    assert os.listdir(tmp_path) == ["model.st"]


def test_atomic_output_replaces_only_on_success_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "out" / "model.safetensors"
    with atomic_output(target) as temp_path:
        assert os.path.dirname(temp_path) == str(target.parent)
        with open(temp_path, "wb") as file:
            file.write(b"new")
    assert target.read_bytes() == b"new"

    with pytest.raises(RuntimeError), atomic_output(target) as temp_path:
        with open(temp_path, "wb") as file:
            file.write(b"half-written")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"new"
    assert os.listdir(target.parent) == ["model.safetensors"]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs Linux /proc")
@pytest.mark.parametrize("writer", ["atomic_output", "atomic_open"])
def test_file_is_fsynced_before_the_rename_and_the_directory_after(tmp_path, monkeypatch, writer):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(descriptor):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{descriptor}")))
        real_fsync(descriptor)

    def replace(source, destination):
        events.append(("replace", os.path.realpath(source), os.path.realpath(destination)))
        real_replace(source, destination)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    target = tmp_path / "model.safetensors"
    if writer == "atomic_output":
        with atomic_output(target) as temp_path:
            Path(temp_path).write_bytes(b"weights")
    else:
        with atomic_open(target, "wb") as file:
            file.write(b"weights")
    assert target.read_bytes() == b"weights"
    temp = events[0][1]
    assert os.path.dirname(temp) == os.path.realpath(tmp_path) and temp != os.path.realpath(target)
    assert events == [
        ("fsync", temp),
        ("replace", temp, os.path.realpath(target)),
        ("fsync", os.path.realpath(tmp_path)),
    ]


def test_output_equal_to_an_input_is_refused_however_it_is_spelled(tmp_path, monkeypatch):
    source = tmp_path / "model.safetensors"
    source.write_bytes(b"precious")
    os.symlink(source, tmp_path / "link.safetensors")
    monkeypatch.chdir(tmp_path)
    for spelling in ("model.safetensors", "./model.safetensors", str(source), "link.safetensors"):
        with pytest.raises(ValueError, match="is also an input"):
            with atomic_output(spelling, [source]):
                pass
    assert source.read_bytes() == b"precious"
    assert sorted(os.listdir(tmp_path)) == ["link.safetensors", "model.safetensors"]
