"""Checks shared by the CLI, the Python API and the training/synthesis jobs: numbers, seeds, devices, outputs.

Every check raises a ``ValueError`` (``PermissionError``, ``IsADirectoryError`` or ``NotADirectoryError`` for
paths) whose message is one sentence naming the fix, before any model is loaded or any file written. The
``*_option`` factories wrap the same checks as ``argparse`` types, so ``l2p`` reports the option by name.
"""

import argparse
import math
import os
import tempfile
from numbers import Integral, Real
from typing import TYPE_CHECKING, Callable, Iterable, Optional, Union

if TYPE_CHECKING:
    import torch

# torch.Generator.manual_seed takes 64-bit seeds; negative values wrap around, so only 0..2**64-1 is accepted.
MAX_SEED = 2**64 - 1
# Images are at most this many pixels unless a pipeline raises its ``max_pixels``.
DEFAULT_MAX_PIXELS = 4096 * 4096
PathLike = Union[str, os.PathLike]


def _named(name: str, message: str) -> str:
    return f"{name} {message}" if name else message


def check_int(value: object, name: str = "", minimum: int = 1, maximum: Optional[int] = None) -> int:
    """``value`` as an int in ``[minimum, maximum]``; bools and non-integral numbers are refused."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(_named(name, f"must be an integer, got {value!r}."))
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
        raise ValueError(_named(name, f"must be an integer {bound}, got {value}."))
    return int(value)


def check_float(value: object, name: str = "", minimum: float = 0.0, inclusive: bool = True) -> float:
    """``value`` as a finite float ``>= minimum`` (``> minimum`` unless ``inclusive``); NaN and inf are refused."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(_named(name, f"must be a number, got {value!r}."))
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(_named(name, f"must be a finite number, got {value}."))
    if value < minimum or (not inclusive and value == minimum):
        raise ValueError(_named(name, f"must be {'>=' if inclusive else '>'} {minimum:g}, got {value:g}."))
    return value


def check_seed(value: object, name: str = "seed", count: int = 1) -> int:
    """A seed such that ``value .. value + count - 1`` all fit ``torch.Generator.manual_seed`` (0..2**64-1)."""
    return check_int(value, name, minimum=0, maximum=MAX_SEED - (count - 1))


def check_image_size(height: int, width: int, max_pixels: int, step: int = 16, raise_hint: str = "") -> None:
    """Refuse sizes below one ``step`` or above ``max_pixels`` before anything is allocated.

    ``raise_hint`` completes the over-cap message with how the caller can raise the cap.
    """
    for name, value in (("height", height), ("width", width)):
        check_int(value, name, minimum=step)
    if height * width > max_pixels:
        raise ValueError(
            f"{height}x{width} is {height * width:,} pixels, over the cap of {max_pixels:,} (max_pixels); "
            f"lower height/width{' ' + raise_hint if raise_hint else ''}."
        )


def _argparse_type(check: Callable[[object], object], convert: Callable[[str], object], kind: str) -> Callable:
    def parse(text: str) -> object:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
        try:
            return check(value)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    parse.__name__ = kind
    return parse


def int_option(minimum: int = 1, maximum: Optional[int] = None) -> Callable[[str], int]:
    """``argparse`` type: an integer in ``[minimum, maximum]``."""
    return _argparse_type(lambda value: check_int(value, "", minimum, maximum), int, "an integer")


def float_option(minimum: float = 0.0, inclusive: bool = True) -> Callable[[str], float]:
    """``argparse`` type: a finite number ``>= minimum`` (``>`` unless ``inclusive``)."""
    return _argparse_type(lambda value: check_float(value, "", minimum, inclusive), float, "a number")


def seed_option(maximum: int = MAX_SEED) -> Callable[[str], int]:
    """``argparse`` type: a seed in ``0..maximum``."""
    return int_option(0, maximum)


def check_device(device: Optional[str]) -> str:
    """The torch device to use (``None``: cuda if available, else cpu), refused before loading if it does not exist."""
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"Unknown device {device!r}; use cpu, cuda, cuda:N or mps.") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"Device {device!r} was asked for, but no CUDA GPU is visible; use --device cpu.")
        if parsed.index is not None and parsed.index >= count:
            raise ValueError(f"Device {device!r} does not exist: {count} CUDA GPU(s) visible (cuda:0..{count - 1}).")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"Device {device!r} is not available on this machine; use --device cpu.")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        backend = getattr(torch, parsed.type, None)
        if backend is None or not getattr(backend, "is_available", lambda: False)():
            raise ValueError(f"Device {device!r} is not available on this machine; use cpu, cuda, cuda:N or mps.")
    return device


DTYPE_NAMES = ("float32", "bfloat16", "float16")


def resolve_dtype(name: Optional[str], device: str) -> "torch.dtype":
    """The compute dtype ``name`` (``None`` or ``auto``: bfloat16 on CUDA, float32 elsewhere), as a torch dtype."""
    import torch

    if name is None or name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if name not in DTYPE_NAMES:
        raise ValueError(f"--dtype: {name!r} is not one of auto, {', '.join(DTYPE_NAMES)}.")
    return getattr(torch, name)


def same_file(a: PathLike, b: PathLike) -> bool:
    """True when both paths name the same file (also through links), whether or not it exists yet."""
    a, b = os.fspath(a), os.fspath(b)
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)


def check_not_an_input(output: PathLike, inputs: Iterable[PathLike], what: str = "output") -> None:
    """Refuse an output path that is (or resolves to) one of ``inputs``, so an input is never overwritten."""
    output = os.fspath(output)
    for path in inputs:
        if same_file(output, os.fspath(path)):
            raise ValueError(f"The {what} {output} is also an input; choose a new file name so the input is kept.")


def check_writable_dir(directory: PathLike, what: str = "output") -> None:
    """Refuse a directory that cannot be created or written, by creating and removing a probe file in it.

    A directory that does not exist yet is judged by its nearest existing ancestor (where it would be created).
    """
    directory = os.path.abspath(os.fspath(directory))
    existing = directory
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise NotADirectoryError(f"Cannot write the {what} under {directory}: {existing} is a file, not a directory.")
    try:
        handle, probe = tempfile.mkstemp(prefix=".l2p-write-test-", dir=existing)
        os.close(handle)
        os.remove(probe)
    except OSError as error:
        raise PermissionError(
            f"Cannot write the {what} to {directory} ({error.strerror or error}); choose a writable location."
        ) from None


def check_output_file(path: PathLike, inputs: Iterable[PathLike] = (), what: str = "output") -> str:
    """Refuse, before any work, an output file that is a directory, unwritable, or one of ``inputs``; return it."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"The {what} {path} is a directory; give a file path.")
    check_not_an_input(path, inputs, what)
    check_writable_dir(os.path.dirname(os.path.abspath(path)), what)
    return path


def check_output_dir(path: PathLike, what: str = "output") -> str:
    """Refuse, before any work, an output directory that is a file or cannot be written; return it."""
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryError(f"The {what} {path} is a file; give a directory.")
    check_writable_dir(path, what)
    return path
