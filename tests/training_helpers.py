"""Shared by the training tests: a seeded colored-shapes dataset and a short tiny-model training run."""

import os
import random

from PIL import Image, ImageDraw
from safetensors.torch import save_file

from diffsynth_l2p.models.configs import L2P_CONFIGS
from diffsynth_l2p.models.z_image_l2p_dit import ZImageL2PDiT
from diffsynth_l2p.registry import register_l2p_dit
from diffsynth_l2p.tiny import init_weights
from diffsynth_l2p.training.trainer import TrainConfig, train

COLORS = {"red": (220, 30, 30), "green": (30, 190, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40)}


def write_shapes(folder, count: int, seed: int, size: int = 64) -> None:
    """``count`` seeded images of one colored circle or square on white, with ``metadata.csv`` (image,prompt,seed)."""
    os.makedirs(folder, exist_ok=True)
    rng = random.Random(seed)
    rows = ["image,prompt,seed"]
    for i in range(count):
        color, shape = rng.choice(sorted(COLORS)), rng.choice(["circle", "square"])
        image = Image.new("RGB", (size, size), (255, 255, 255))
        x, y, r = rng.randint(10, size - 26), rng.randint(10, size - 26), rng.randint(8, 14)
        draw = ImageDraw.Draw(image)
        (draw.ellipse if shape == "circle" else draw.rectangle)([x, y, x + 2 * r, y + 2 * r], fill=COLORS[color])
        image.save(os.path.join(folder, f"{i:03d}.png"))
        rows.append(f"{i:03d}.png,a {color} {shape},{seed * 1000 + i}")
    with open(os.path.join(folder, "metadata.csv"), "w") as file:
        file.write("\n".join(rows) + "\n")


def run(tmp_path, dataset, model, **overrides) -> dict:
    settings = dict(max_steps=2, save_steps=2, learning_rate=1e-3, use_gradient_checkpointing=False)
    settings.update(overrides)
    return train(TrainConfig(dataset=dataset, output_path=str(tmp_path), model=model, **settings))


def write_deep_dit(path, n_layers: int, seed: int = 0) -> str:
    """A random tiny-width L2P DiT with ``n_layers`` main blocks (registered with DiffSynth), saved to ``path``."""
    kwargs = dict(L2P_CONFIGS["tiny"].kwargs, n_layers=n_layers)
    register_l2p_dit(**kwargs)
    model = ZImageL2PDiT(**kwargs)
    init_weights(model, seed)
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, str(path))
    return str(path)
