"""The shared checks behind every option: numbers, seeds, sizes, devices and output paths."""

import argparse
import os

import pytest
import torch

from diffsynth_l2p.validation import (
    MAX_SEED,
    check_device,
    check_float,
    check_image_size,
    check_int,
    check_output_dir,
    check_output_file,
    check_seed,
    float_option,
    int_option,
)


@pytest.mark.parametrize(
    "value, kwargs, message",
    [
        (0, {}, "steps must be an integer >= 1, got 0"),
        (True, {}, "steps must be an integer, got True"),
        (2.0, {}, "steps must be an integer, got 2.0"),
        (5, {"minimum": 0, "maximum": 4}, r"steps must be an integer in 0..4, got 5"),
    ],
)
def test_check_int_refuses(value, kwargs, message):
    with pytest.raises(ValueError, match=message):
        check_int(value, "steps", **kwargs)


@pytest.mark.parametrize(
    "value, inclusive, message",
    [
        (float("nan"), True, "must be a finite number, got nan"),
        (float("-inf"), True, "must be a finite number, got -inf"),
        (-0.5, True, "must be >= 0, got -0.5"),
        (0.0, False, "must be > 0, got 0"),
        ("1", True, "must be a number, got '1'"),
    ],
)
def test_check_float_refuses(value, inclusive, message):
    with pytest.raises(ValueError, match=message):
        check_float(value, "cfg", inclusive=inclusive)


def test_accepted_values_come_back_as_plain_numbers():
    assert check_int(torch.tensor(3).item(), "n") == 3 and check_float(2, "cfg") == 2.0
    assert check_float(0.0, "cfg") == 0.0 and check_seed(MAX_SEED) == MAX_SEED
    assert check_seed(MAX_SEED - 3, count=4) == MAX_SEED - 3
    with pytest.raises(ValueError, match=r"in 0..18446744073709551612"):
        check_seed(MAX_SEED - 2, count=4)
    torch.Generator().manual_seed(MAX_SEED)  # the upper end is what torch accepts


def test_image_size_needs_one_step_and_stays_under_the_cap():
    check_image_size(16, 16, 256)
    with pytest.raises(ValueError, match="height must be an integer >= 16, got 8"):
        check_image_size(8, 16, 10_000)
    with pytest.raises(ValueError, match="32x16 is 512 pixels, over the cap of 256"):
        check_image_size(32, 16, 256)


def test_argparse_types_name_the_option():
    parser = argparse.ArgumentParser(exit_on_error=False)
    parser.add_argument("--steps", type=int_option(1))
    parser.add_argument("--shift", type=float_option(0, inclusive=False))
    assert parser.parse_args(["--steps", "3", "--shift", "0.5"]) == argparse.Namespace(steps=3, shift=0.5)
    refused = {
        ("--steps", "0"): "must be an integer >= 1",
        ("--steps", "x"): "expected an integer",
        ("--shift", "nan"): "must be a finite number",
        ("--shift", "0"): "must be > 0",
    }
    for argv, message in refused.items():
        with pytest.raises(argparse.ArgumentError, match=message):
            parser.parse_args(list(argv))


def test_devices_are_checked_without_loading_anything():
    assert check_device("cpu") == "cpu"
    assert check_device(None) == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="Unknown device 'gpu0'"):
        check_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU is visible; use --device cpu"):
            check_device("cuda:1")


def test_output_checks(tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("x")
    os.symlink(source, tmp_path / "link.txt")
    assert check_output_file(tmp_path / "new" / "deeper" / "out.txt", [source]) == str(tmp_path / "new/deeper/out.txt")
    assert not (tmp_path / "new").exists()  # checking creates nothing
    with pytest.raises(ValueError, match="is also an input"):
        check_output_file(tmp_path / "link.txt", [source])
    with pytest.raises(IsADirectoryError, match="is a directory; give a file path"):
        check_output_file(tmp_path, [])
    with pytest.raises(NotADirectoryError, match="is a file; give a directory"):
        check_output_dir(source)
    with pytest.raises(NotADirectoryError, match="in.txt is a file, not a directory"):
        check_output_dir(source / "sub")
    with pytest.raises(PermissionError, match="Cannot write"):
        check_output_dir("/sys/l2p-test")
    assert sorted(os.listdir(tmp_path)) == ["in.txt", "link.txt"]  # the write probe left nothing
