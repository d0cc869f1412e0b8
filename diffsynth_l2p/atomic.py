"""Crash-safe writes: a temporary file (or folder) beside the target, fsynced and renamed over it."""

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
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


@contextlib.contextmanager
def atomic_directory(path: Union[str, os.PathLike], what: str = "the output") -> Iterator[Path]:
    """A staging folder beside ``path``; on success it is renamed to ``path`` (which must be absent or empty).

    ``what`` names the content in the errors. On failure the staging folder is removed and ``path`` is untouched.
    """
    path = Path(path)
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"{path} is not empty; choose a new directory for {what}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    staging.chmod(path.parent.stat().st_mode & 0o777)  # mkdtemp's 0700 would stick to the final folder
    try:
        yield staging
        try:
            os.replace(staging, path)  # an empty folder is replaced; a non-empty one (a racing writer) is not
        except OSError as error:
            raise FileExistsError(f"{path} appeared while {what} was being written.") from error
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
