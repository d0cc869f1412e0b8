"""The training dataset adapter: metadata spellings, resizing, skipped rows, bad input, size buckets."""

import json

import pytest
from PIL import Image

from diffsynth_l2p.training.dataset import L2PImageDataset, bucket_batches


def write_images(folder, sizes):
    for i, (width, height) in enumerate(sizes):
        Image.new("RGB", (width, height), (40 * i % 256, 200, 10)).save(folder / f"img{i}.png")


def write_csv(folder, header, rows):
    lines = [",".join(header)] + [",".join(str(v) for v in row) for row in rows]
    (folder / "metadata.csv").write_text("\n".join(lines) + "\n")


def test_csv_rows_resized_to_max_pixels_floor_16(tmp_path):
    write_images(tmp_path, [(100, 70), (64, 64)])
    write_csv(tmp_path, ["image", "prompt", "seed"], [["img0.png", "a red circle", 7], ["img1.png", "two dots", 8]])
    dataset = L2PImageDataset(str(tmp_path), max_pixels=4096)
    # 100x70 has 7000 px > 4096: scaled by sqrt(7000/4096) to 76x53, floored to multiples of 16 -> 64x48.
    assert dataset.sizes == [(48, 64), (64, 64)]
    item = dataset[0]
    assert item["image"].shape == (3, 48, 64)
    assert item["prompt"] == "a red circle" and item["seed"] == 7
    # Solid color (0, 200, 10) maps to [-1, 1].
    assert item["image"][:, 0, 0].tolist() == pytest.approx([-1.0, 200 / 127.5 - 1, 10 / 127.5 - 1])


def test_jsonl_with_readme_spelling(tmp_path):
    write_images(tmp_path, [(32, 32)])
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "img0.png", "text": "a square"}) + "\n")
    dataset = L2PImageDataset(str(tmp_path), require_seed=False)
    assert dataset[0]["prompt"] == "a square" and dataset[0]["seed"] is None


def test_missing_and_corrupt_images_are_skipped_and_counted(tmp_path):
    write_images(tmp_path, [(32, 32), (32, 32)])
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    rows = [["img0.png", "a", 1], ["gone.png", "b", 2], ["broken.png", "c", 3], ["img1.png", "d", 4]]
    write_csv(tmp_path, ["image", "prompt", "seed"], rows)
    dataset = L2PImageDataset(str(tmp_path))
    assert len(dataset) == 2 and dataset.prompts == ["a", "d"]
    assert len(dataset.skipped) == 2
    assert "row 2 ('gone.png')" in dataset.skipped[0] and "row 3 ('broken.png')" in dataset.skipped[1]


def test_csv_with_byte_order_mark(tmp_path):
    # Spreadsheet programs save "CSV UTF-8" with a BOM, which would otherwise end up in the first column's name.
    write_images(tmp_path, [(32, 32)])
    (tmp_path / "metadata.csv").write_bytes("image,prompt,seed\nimg0.png,ein Würfel,3\n".encode("utf-8-sig"))
    dataset = L2PImageDataset(str(tmp_path))
    assert dataset[0]["prompt"] == "ein Würfel" and dataset[0]["seed"] == 3


def test_malformed_json_names_the_line(tmp_path):
    write_images(tmp_path, [(32, 32)])
    good = json.dumps({"image": "img0.png", "prompt": "a", "seed": 1})
    (tmp_path / "metadata.jsonl").write_text(f"{good}\n\n{good}\n{{'image': 'img0.png'}}\n")
    with pytest.raises(ValueError, match=r"metadata.jsonl line 4 is not valid JSON"):
        L2PImageDataset(str(tmp_path))
    (tmp_path / "metadata.jsonl").unlink()
    (tmp_path / "metadata.json").write_text(f"[\n{good},\n{good} {good}\n]\n")
    with pytest.raises(
        ValueError, match=rf"metadata.json line 3 column {len(good) + 2} is not valid JSON \(Expecting ','"
    ):
        L2PImageDataset(str(tmp_path))


@pytest.mark.parametrize(
    "header, rows, message",
    [
        (["image", "prompt", "seed"], [], "has no rows"),
        (["path", "prompt", "seed"], [["img0.png", "a", 1]], "no 'image' or 'file_name' column"),
        (["image", "caption", "seed"], [["img0.png", "a", 1]], "no 'prompt' or 'text' column"),
        (["image", "prompt"], [["img0.png", "a"]], "no 'seed' column.*--noise fresh"),
        (["image", "prompt", "seed"], [["../outside.png", "a", 1]], "outside the dataset folder"),
        (["image", "prompt", "seed"], [["gone.png", "a", 1]], "No usable image"),
    ],
)
def test_bad_datasets_raise_clear_errors(tmp_path, header, rows, message):
    write_images(tmp_path, [(32, 32)])
    write_csv(tmp_path, header, rows)
    with pytest.raises(ValueError, match=message):
        L2PImageDataset(str(tmp_path))


def test_missing_metadata_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="metadata.csv"):
        L2PImageDataset(str(tmp_path))


def test_bucket_batches_group_equal_sizes():
    sizes = [(64, 64)] * 5 + [(48, 64)] * 4 + [(64, 32)] * 1
    batches = bucket_batches(sizes, batch_size=2, seed=0, epoch=0)
    assert sorted(i for batch in batches for i in batch) == list(range(10))
    assert all(len({sizes[i] for i in batch}) == 1 for batch in batches)
    assert sorted(len(b) for b in batches) == [1, 1, 2, 2, 2, 2]
    assert bucket_batches(sizes, 2, seed=0, epoch=0) == batches
    assert bucket_batches(sizes, 2, seed=0, epoch=1) != batches
