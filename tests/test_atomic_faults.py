"""Loss-free faults: kills during an atomic write never harm the old output, and reruns remove what they left."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffsynth_l2p.atomic import atomic_directory, atomic_path, remove_stale_temps

BIG = 16 * 1024 * 1024  # float32 values: a 64 MB output


def temp_files(directory: Path) -> list:
    return sorted(name for name in os.listdir(directory) if name.endswith(".tmp"))


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_temp_files_of_dead_writers_are_removed_by_the_first_write_into_their_folder(tmp_path):
    target = tmp_path / "out.safetensors"
    stale = tmp_path / f".out.safetensors.l2p{dead_pid()}.abc123_x.tmp"
    stale_dir = tmp_path / f".model.l2p{dead_pid()}.zz9.tmp"  # an atomic_directory's staging folder
    live = tmp_path / f".out.safetensors.l2p{os.getpid()}.live.tmp"  # a writer still running: kept
    foreign = tmp_path / f".notes.{dead_pid()}.abc.tmp"  # not ours: kept
    for path in (stale, live, foreign):
        path.write_bytes(b"partial")
    stale_dir.mkdir()
    with atomic_path(target) as temp:
        assert Path(temp).name.startswith(f".out.safetensors.l2p{os.getpid()}.")
        Path(temp).write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert temp_files(tmp_path) == sorted([live.name, foreign.name])
    stale.write_bytes(b"partial")
    assert remove_stale_temps(tmp_path) == [str(stale)]


def test_failed_directory_write_leaves_no_staging_folder(tmp_path):
    with pytest.raises(RuntimeError), atomic_directory(tmp_path / "model") as staging:
        (staging / "weights.bin").write_bytes(b"x")
        raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


# `l2p merge` in a fresh interpreter; with a marker path first, it stops before its last tensor and touches the marker,
# so a signal is sure to arrive mid-write whatever the machine's load.
MERGE = """
import pathlib, sys, time
import diffsynth_l2p.merge as merge
from diffsynth_l2p.cli import main

write = merge.write_safetensors


def write_then_pause(path, layout, fetch, *args, **kwargs):
    def fetch_or_pause(key):
        if key == list(layout)[-1]:
            pathlib.Path(sys.argv[1]).touch()
            time.sleep(600)
        return fetch(key)

    write(path, layout, fetch_or_pause, *args, **kwargs)


if sys.argv[1]:
    merge.write_safetensors = write_then_pause
sys.exit(main(sys.argv[2:]))
"""


def run_merge(tmp_path: Path, marker: str = "") -> subprocess.Popen:
    """Start ``l2p merge`` of a 64 MB checkpoint B with a small A into tmp_path/out.safetensors."""
    file_a, file_b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    if not file_b.exists():
        save_file({"big": torch.zeros(BIG), "small": torch.zeros(4)}, str(file_b))
        save_file({"small": torch.ones(4)}, str(file_a))
    output = tmp_path / "out.safetensors"
    arguments = ["merge", "--file_a", str(file_a), "--file_b", str(file_b), "--file_out", str(output)]
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.Popen([sys.executable, "-c", MERGE, marker, *arguments], env=environment, stderr=subprocess.PIPE)


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_kill_during_merge_keeps_the_old_output_and_leaves_no_temp_files(tmp_path, signum):
    old = tmp_path / "out.safetensors"
    save_file({"old": torch.arange(3.0)}, str(old))
    old_bytes = old.read_bytes()
    marker = tmp_path / "paused"
    process = run_merge(tmp_path, str(marker))
    deadline = time.time() + 300
    while not marker.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    (temp,) = [tmp_path / name for name in temp_files(tmp_path)]
    assert temp.stat().st_size >= 50 * 2**20  # the kill lands in the middle of a >= 50 MB write
    process.send_signal(signum)
    process.wait(timeout=60)
    assert process.returncode in (-signum, 128 + signum), process.stderr.read().decode()
    assert old.read_bytes() == old_bytes
    if signum == signal.SIGKILL:
        assert temp_files(tmp_path) == [temp.name]  # the kill left the partial temporary file...
        rerun = run_merge(tmp_path)
        assert rerun.wait(timeout=300) == 0
        assert load_file(str(old))["small"].tolist() == [1.0] * 4
    assert temp_files(tmp_path) == []  # ...which the rerun removed; SIGTERM removes its own
