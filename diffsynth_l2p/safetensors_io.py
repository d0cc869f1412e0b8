"""Safetensors helpers shared by convert, merge and inspect: header-only reads, validation, streaming atomic writes.

Checkpoints here are a file or a list of shards.  Headers are read through safetensors' ``safe_open`` (no weights
read), so a 19.6 GB file is inspected instantly, and writes stream one tensor at a time so merging or converting
the 6B model never holds two copies of it in memory.
"""

import contextlib
import json
import os
import struct
from collections.abc import Iterator, Mapping
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from diffsynth.core import hash_model_file, hash_state_dict_keys
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from .atomic import atomic_path
from .validation import check_output_file

PathOrPaths = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]

# safetensors dtype names <-> torch dtypes.
TORCH_DTYPES: Dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
DTYPE_NAMES: Dict[torch.dtype, str] = {dtype: name for name, dtype in TORCH_DTYPES.items()}


class TensorInfo(NamedTuple):
    """What a safetensors header says about one tensor."""

    dtype: str
    shape: Tuple[int, ...]

    @property
    def numel(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count

    @property
    def nbytes(self) -> int:
        return self.numel * TORCH_DTYPES[self.dtype].itemsize


Layout = Dict[str, TensorInfo]


def as_path_list(paths: PathOrPaths) -> List[str]:
    """One path or a list of shards -> list of path strings."""
    if isinstance(paths, (str, os.PathLike)):
        return [os.fspath(paths)]
    return [os.fspath(path) for path in paths]


def _corrupt(path: str, reason: str) -> ValueError:
    return ValueError(f"{path} is corrupt or truncated ({reason}); re-download or re-create it.")


def read_header(path: Union[str, os.PathLike]) -> Layout:
    """Tensor layout of one safetensors file from its header alone (in storage order), after safetensors' own checks.

    ``safe_open`` maps the file without reading the data and refuses truncated files, overlapping or gapped byte
    ranges and malformed headers; those are reported as one line naming the file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint file not found: {path}")
    try:
        with safe_open(path, framework="pt", device="cpu") as file:
            slices = {key: file.get_slice(key) for key in file.offset_keys()}
            layout = {key: TensorInfo(part.get_dtype(), tuple(part.get_shape())) for key, part in slices.items()}
    except (SafetensorError, OSError, ValueError) as error:
        message = str(error).strip() or type(error).__name__
        raise _corrupt(path, message.splitlines()[0]) from None
    unknown = sorted({info.dtype for info in layout.values()} - set(TORCH_DTYPES))
    if unknown:
        raise _corrupt(path, f"unsupported dtype {unknown[0]}")
    return layout


def read_headers(paths: PathOrPaths) -> Layout:
    """Union of the layouts of one file or several shards; every file is validated and keys must be unique."""
    layout: Layout = {}
    owner: Dict[str, str] = {}
    for path in as_path_list(paths):
        for key, info in read_header(path).items():
            if key in layout:
                raise ValueError(f"Tensor {key!r} is in both {owner[key]} and {path}; pass each shard only once.")
            layout[key] = info
            owner[key] = path
    return layout


class SafetensorsCheckpoint(Mapping):
    """Read-only, lazy ``{key: tensor}`` view of one file or several shards; ``header`` holds the layout.

    The files stay memory-mapped until ``close()``; use it as a context manager so they are released on exit
    (tensors already read stay valid: each keeps a reference to the mapping it views).
    """

    def __init__(self, paths: PathOrPaths) -> None:
        self.paths = as_path_list(paths)
        self.header = read_headers(self.paths)
        with contextlib.ExitStack() as files:  # closes what was opened if a later file fails to open
            handles = {path: files.enter_context(safe_open(path, framework="pt", device="cpu")) for path in self.paths}
            self._files = files.pop_all()
        self._handles = {key: handles[path] for path in self.paths for key in handles[path].keys()}

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._handles[key].get_tensor(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.header)

    def __len__(self) -> int:
        return len(self.header)

    def close(self) -> None:
        """Release every file; reading a tensor afterwards raises."""
        self._files.close()

    def __enter__(self) -> "SafetensorsCheckpoint":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _require_suffix(path: str) -> None:
    if not path.endswith(".safetensors"):
        raise ValueError(f"{path}: DiffSynth only recognises safetensors files named *.safetensors; rename it.")


def hash_checkpoint(paths: PathOrPaths) -> str:
    """DiffSynth's registry hash of a file or shard list (validated first)."""
    path_list = as_path_list(paths)
    read_headers(path_list)
    for path in path_list:
        _require_suffix(path)
    return hash_model_file(path_list if len(path_list) > 1 else path_list[0])


def layout_hash(layout: Mapping[str, TensorInfo]) -> str:
    """The DiffSynth hash a file with this layout will have (DiffSynth's own function on meta tensors)."""
    return hash_state_dict_keys({key: torch.empty(info.shape, device="meta") for key, info in layout.items()})


def tensor_info(tensor: torch.Tensor) -> TensorInfo:
    return TensorInfo(DTYPE_NAMES[tensor.dtype], tuple(tensor.shape))


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True when both tensors have the same dtype, shape and bytes (NaN-safe, unlike ``torch.equal``)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


def check_output_path(output_path: Union[str, os.PathLike], inputs: PathOrPaths) -> str:
    """Refuse an output path that is one of the inputs, a directory, unwritable or not *.safetensors; return it."""
    output = os.fspath(output_path)
    _require_suffix(output)
    return check_output_file(output, as_path_list(inputs))


@contextlib.contextmanager
def atomic_output(output_path: Union[str, os.PathLike], inputs: PathOrPaths = ()) -> Iterator[str]:
    """``atomic_path`` for a *.safetensors output that is none of ``inputs`` (checked first; inputs are kept)."""
    with atomic_path(check_output_path(output_path, inputs)) as temp_path:
        yield temp_path


def save_module(module: torch.nn.Module, path: Union[str, os.PathLike], dtype: Optional[torch.dtype] = None) -> None:
    """Save a module's state dict as safetensors (floating tensors cast to ``dtype``), atomically."""
    state_dict = {}
    for key, value in module.state_dict().items():
        value = value.detach()
        state_dict[key] = (value.to(dtype) if dtype is not None and value.is_floating_point() else value).contiguous()
    with atomic_path(path) as temp_path:
        save_file(state_dict, temp_path)


def write_safetensors(
    path: Union[str, os.PathLike],
    layout: Mapping[str, TensorInfo],
    fetch: Callable[[str], torch.Tensor],
    metadata: Optional[Dict[str, str]] = None,
    desc: str = "Writing",
) -> None:
    """Write a safetensors file with ``layout``, fetching one tensor at a time (peak memory: one tensor)."""
    header: Dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for key, info in layout.items():
        header[key] = {"dtype": info.dtype, "shape": list(info.shape), "data_offsets": [offset, offset + info.nbytes]}
        offset += info.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)  # keep tensor data 8-byte aligned, as safetensors does
    with open(path, "wb") as file:
        file.write(struct.pack("<Q", len(encoded)))
        file.write(encoded)
        for key, info in tqdm(layout.items(), desc=desc, unit="tensor", disable=None):
            tensor = fetch(key)
            if tensor_info(tensor) != info:
                raise ValueError(f"Tensor {key!r} is {tensor_info(tensor)}, but the planned layout says {info}.")
            file.write(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)
