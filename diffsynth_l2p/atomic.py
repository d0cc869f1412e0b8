"""Crash-safe file writes: a temporary file beside the target, fsynced, renamed over it, then the directory fsynced."""

import contextlib
import os
import tempfile
from typing import IO, Iterator, Union


def _fsync(path: str) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def atomic_path(path: Union[str, os.PathLike]) -> Iterator[str]:
    """Yield a temporary path beside ``path`` to write; on success it is fsynced and renamed to ``path``, else removed.

    The directory is fsynced after the rename, so after a crash ``path`` holds either the old or the new file,
    never a partial one.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temp_path = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    os.close(handle)
    try:
        yield temp_path
        _fsync(temp_path)
        os.replace(temp_path, path)
        if os.name == "posix":  # directories cannot be opened for fsync on Windows
            _fsync(directory)
    finally:
        if os.path.exists(temp_path):
            os.remove(temp_path)


@contextlib.contextmanager
def atomic_open(path: Union[str, os.PathLike], mode: str = "w") -> Iterator[IO]:
    """``open`` a temporary file beside ``path`` (text: UTF-8, newlines as written); ``atomic_path`` commits it."""
    text_options = {} if "b" in mode else {"encoding": "utf-8", "newline": ""}
    with atomic_path(path) as temp_path, open(temp_path, mode, **text_options) as file:
        yield file
