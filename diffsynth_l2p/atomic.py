"""Crash-safe writes: a temporary file (or folder) beside the target, fsynced and renamed over it."""

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import IO, Iterator, List, Set, Union


def _fsync(path: str) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def current_umask() -> int:
    """The process umask, read from ``/proc`` where possible (setting it to read it is racy with threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(path: Union[str, os.PathLike]) -> None:
    """Give ``path`` (and everything under a folder) the permissions the umask gives new files and folders.

    Writers that create files 0600 (``tempfile``, safetensors' ``save_file``) would otherwise leave outputs
    unreadable to the group whatever the umask; executable files stay executable.
    """
    mask = current_umask()
    paths = [path] + [os.path.join(root, name) for root, dirs, files in os.walk(path) for name in dirs + files]
    for entry in paths:
        if os.path.islink(entry):
            continue
        executable = os.path.isdir(entry) or os.stat(entry).st_mode & 0o111
        os.chmod(entry, (0o777 if executable else 0o666) & ~mask)


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


# Temporary names ``.<name>.l2p<pid>.<random>.tmp``: the pid tells a later run which ones were left by dead writers.
_TEMP_NAME = re.compile(r"\..+\.l2p(\d+)\.[A-Za-z0-9_]+\.tmp")
# Directories this process has already cleaned: one scan each, not one per write (a corpus folder has 1M images).
_cleaned_directories: Set[str] = set()


def _temp_prefix(path: Union[str, os.PathLike]) -> str:
    return f".{os.path.basename(path)}.l2p{os.getpid()}."


def remove_stale_temps(directory: Union[str, os.PathLike]) -> List[str]:
    """Delete the temporary files and folders that killed writers left in ``directory``; return what was removed."""
    removed = []
    with os.scandir(directory) as entries:
        matches = [(entry, _TEMP_NAME.fullmatch(entry.name)) for entry in entries]
    stale = [entry for entry, match in matches if match and not _is_running(int(match.group(1)))]
    for entry in stale:
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(entry.path)
        removed.append(entry.path)
    return removed


def _prepare_directory(path: Union[str, os.PathLike]) -> str:
    """Create the folder of ``path``; the first time this process writes there, remove stale temporaries."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    if directory not in _cleaned_directories:
        remove_stale_temps(directory)
        _cleaned_directories.add(directory)
    return directory


@contextlib.contextmanager
def atomic_path(path: Union[str, os.PathLike]) -> Iterator[str]:
    """Yield a temporary path beside ``path`` to write; on success it is fsynced and renamed to ``path``, else removed.

    The directory is fsynced after the rename, so after a crash ``path`` holds either the old or the new file,
    never a partial one. The file gets the permissions the umask gives new files (0644 under umask 022), and
    temporary files that killed writers left in the folder are removed on this process's first write there.
    """
    directory = _prepare_directory(path)
    handle, temp_path = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=directory)
    os.close(handle)
    try:
        yield temp_path
        apply_umask(temp_path)
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
    _prepare_directory(path)
    staging = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent))
    try:
        yield staging
        apply_umask(staging)
        try:
            os.replace(staging, path)  # an empty folder is replaced; a non-empty one (a racing writer) is not
        except OSError as error:
            raise FileExistsError(f"{path} appeared while {what} was being written.") from error
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
