"""Training data: a folder of images with ``metadata.csv`` / ``.jsonl`` / ``.json`` rows ``image,prompt,seed``.

The release's code reads ``image, prompt, seed``; its README says ``file_name, text``; both spellings work.
Images are resized to at most ``max_pixels`` with both sides floored to multiples of ``size_multiple`` (DiffSynth's
``ImageCropAndResize``; the config's ``train_size_multiple``: 16 for 1K, 64 or more for UHR). Rows whose image is
missing or unreadable are skipped and counted when the dataset is built, so a bad file never stops a run hours in;
images outside the dataset folder are an error.
"""

import csv
import itertools
import json
import os
import random
import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from diffsynth.core.data.operators import ImageCropAndResize
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from ..validation import check_seed

METADATA_NAMES = ("metadata.csv", "metadata.jsonl", "metadata.json")
COLUMN_ALIASES = {"image": ("image", "file_name"), "prompt": ("prompt", "text")}
DIVISION_FACTOR = 16  # the 1K release's side multiple


@dataclass(frozen=True)
class Sample:
    """One usable row: absolute image path, caption, noise seed (None if the metadata has none), target size."""

    path: str
    prompt: str
    seed: Optional[int]
    height: int
    width: int


def find_metadata(folder: str) -> str:
    """The folder's ``metadata.csv`` / ``.jsonl`` / ``.json``."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"Dataset folder {folder!r} does not exist.")
    for name in METADATA_NAMES:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    names = ", ".join(METADATA_NAMES)
    raise FileNotFoundError(f"No metadata in {folder!r}: add one of {names} with columns image,prompt,seed.")


def _parse_json(text: str, path: str, line: Optional[int] = None) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        where = f"line {line}" if line is not None else f"line {error.lineno} column {error.colno}"
        raise ValueError(f"{path} {where} is not valid JSON ({error.msg}); fix or remove it.") from None
    except RecursionError:
        raise ValueError(f"{path} {f'line {line} ' if line else ''}is JSON nested too deeply; fix it.") from None


def _csv_rows(file, path: str) -> List[Dict[str, str]]:
    """Rows of a CSV file as dicts; a line with more or fewer fields than the header is an error naming it."""
    reader = csv.reader(file)
    header = next(reader, [])
    rows = []
    for fields in reader:
        if not fields:  # a blank line
            continue
        if len(fields) != len(header):
            raise ValueError(
                f"{path} line {reader.line_num} has {len(fields)} fields but the header has {len(header)}; "
                "quote prompts that contain commas."
            )
        rows.append(dict(zip(header, fields, strict=True)))
    return rows


def read_metadata(path: str) -> List[Dict[str, object]]:
    """Rows of a ``.csv``, ``.jsonl`` or ``.json`` (list of objects) metadata file, as dicts.

    Files may start with a UTF-8 byte-order mark (as spreadsheet programs write them). A row that is not an
    object, or a CSV line with a missing or extra field, is an error naming the file and line.
    """
    with open(path, encoding="utf-8-sig", newline="") as file:
        if path.endswith(".csv"):
            return _csv_rows(file, path)
        if path.endswith(".jsonl"):
            rows = [(f"line {n}", _parse_json(line, path, n)) for n, line in enumerate(file, start=1) if line.strip()]
        else:
            rows = _parse_json(file.read(), path)
            if not isinstance(rows, list):
                raise ValueError(f"{path} must hold a JSON list of row objects, got {type(rows).__name__}.")
            rows = [(f"item {number}", row) for number, row in enumerate(rows, start=1)]
    for where, row in rows:
        if not isinstance(row, dict):
            raise ValueError(f"{path} {where} must be an object like {{\"image\": ..., \"prompt\": ...}}.")
    return [row for _, row in rows]


def _row_value(row: Dict[str, object], column: str, number: int, kind: type) -> object:
    """``row[column]`` checked to be a ``kind`` (CSV gives text; a seed may be an integer written as text)."""
    value = row.get(column)
    if kind is int and isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if value is None or isinstance(value, bool) or not isinstance(value, kind):
        expected = "an integer" if kind is int else "text"
        raise ValueError(f"Metadata row {number}: {column!r} must be {expected}, got {json.dumps(value)}; fix the row.")
    return check_seed(value, f"Metadata row {number}: {column!r}") if kind is int else value


def resolve_columns(columns: Sequence[str], require_seed: bool) -> Dict[str, Optional[str]]:
    """Map ``image``/``prompt``/``seed`` to the metadata's column names, accepting ``file_name``/``text``."""
    resolved: Dict[str, Optional[str]] = {}
    for role, aliases in COLUMN_ALIASES.items():
        found = [alias for alias in aliases if alias in columns]
        if not found:
            raise ValueError(
                f"Metadata has no {' or '.join(repr(a) for a in aliases)} column (columns: {', '.join(columns)}); "
                "expected image,prompt,seed (or file_name,text,seed)."
            )
        resolved[role] = found[0]
    resolved["seed"] = "seed" if "seed" in columns else None
    if require_seed and resolved["seed"] is None:
        raise ValueError("Metadata has no 'seed' column, which seeded noise needs; add it or train with --noise fresh.")
    return resolved


def image_path_inside(folder: str, relative: str) -> str:
    """Absolute path of ``relative`` under ``folder``; paths that leave the folder are rejected."""
    root = os.path.realpath(folder)
    path = os.path.realpath(os.path.join(root, relative))
    if os.path.commonpath([root, path]) != root:
        raise ValueError(f"Image path {relative!r} points outside the dataset folder {folder!r}; move it inside.")
    return path


def scan_samples(
    folder: str,
    rows: Sequence[Dict[str, str]],
    max_pixels: int,
    require_seed: bool,
    size_multiple: int = DIVISION_FACTOR,
) -> Tuple[List[Sample], List[str]]:
    """Usable samples and one message per skipped row (missing, unreadable or too small image; bad seed)."""
    if not rows:
        raise ValueError(f"The dataset in {folder!r} has no rows; add image,prompt,seed rows to its metadata.")
    columns = resolve_columns(list(rows[0].keys()), require_seed)
    resize = ImageCropAndResize(None, None, max_pixels, size_multiple, size_multiple)
    samples, skipped = [], []
    for number, row in enumerate(rows, start=1):
        relative = _row_value(row, columns["image"], number, str)
        prompt = _row_value(row, columns["prompt"], number, str)
        seed = _row_value(row, columns["seed"], number, int) if columns["seed"] else None
        path = image_path_inside(folder, relative)
        try:
            with Image.open(path) as image:
                height, width = resize.get_height_width(image)
                image.verify()
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
            skipped.append(f"row {number} ({relative!r}): {error}")
            continue
        if height == 0 or width == 0:
            skipped.append(f"row {number} ({relative!r}): smaller than {size_multiple} px")
            continue
        samples.append(Sample(path, prompt, seed, height, width))
    if not samples:
        raise ValueError(f"No usable image in {folder!r} ({len(skipped)} rows skipped; first: {skipped[0]}).")
    return samples, skipped


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> float tensor [3, H, W] in [-1, 1] (the pixel-space "latents")."""
    return pil_to_tensor(image.convert("RGB")).float() / 127.5 - 1


class L2PImageDataset(torch.utils.data.Dataset):
    """Items ``{"image": [3,H,W] in [-1,1], "prompt", "seed", "index"}``; ``skipped`` lists the unusable rows."""

    def __init__(
        self,
        folder: str,
        max_pixels: int = 1024 * 1024,
        require_seed: bool = True,
        size_multiple: int = DIVISION_FACTOR,
    ) -> None:
        self.folder = folder
        self.metadata_path = find_metadata(folder)
        rows = read_metadata(self.metadata_path)
        self.samples, self.skipped = scan_samples(folder, rows, max_pixels, require_seed, size_multiple)
        self.resize = ImageCropAndResize(None, None, max_pixels, size_multiple, size_multiple)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def sizes(self) -> List[Tuple[int, int]]:
        return [(sample.height, sample.width) for sample in self.samples]

    @property
    def prompts(self) -> List[str]:
        return [sample.prompt for sample in self.samples]

    def __getitem__(self, index: int) -> dict:
        # An image that passed the header check can still fail to decode: substitute the next one of the same size.
        sizes = self.sizes
        size = sizes[index]
        order = itertools.chain(range(index, len(sizes)), range(index))  # lazily: almost always the first one
        for candidate in (i for i in order if sizes[i] == size):
            sample = self.samples[candidate]
            try:
                with Image.open(sample.path) as image:
                    pixels = image_to_tensor(self.resize(image.convert("RGB")))
            except (OSError, Image.DecompressionBombError) as error:
                warnings.warn(f"Skipping unreadable image {sample.path!r}: {error}", stacklevel=2)
                continue
            return {"image": pixels, "prompt": sample.prompt, "seed": sample.seed, "index": candidate}
        raise OSError(f"No readable image of size {size[1]}x{size[0]} is left in {self.folder!r}.")


def collate(items: List[dict]) -> dict:
    """Stack a same-size bucket into one batch."""
    return {
        "image": torch.stack([item["image"] for item in items]),
        "prompt": [item["prompt"] for item in items],
        "seed": [item["seed"] for item in items],
        "index": [item["index"] for item in items],
    }


def bucket_batches(sizes: Sequence[Tuple[int, int]], batch_size: int, seed: int, epoch: int) -> List[List[int]]:
    """One epoch of batches: indices grouped by image size, shuffled within and across buckets (seeded per epoch)."""
    rng = random.Random(seed * 100_003 + epoch)
    buckets: Dict[Tuple[int, int], List[int]] = {}
    for index, size in enumerate(sizes):
        buckets.setdefault(size, []).append(index)
    batches = []
    for size in sorted(buckets):
        indices = buckets[size]
        rng.shuffle(indices)
        batches += [indices[start : start + batch_size] for start in range(0, len(indices), batch_size)]
    rng.shuffle(batches)
    return batches
