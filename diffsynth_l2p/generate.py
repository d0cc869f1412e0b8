"""Batch generation to PNG files: prompt files in, images with their generation parameters out (``l2p generate``)."""

import json
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from PIL import Image
from PIL.PngImagePlugin import PngInfo
from tqdm import tqdm

from .atomic import atomic_open
from .pipelines.z_image_l2p import ZImageL2PPipeline

PNG_PARAMETERS_KEY = "parameters"


def _slug(text: str, length: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:length].rstrip("-") or "image"


def output_paths(out: Union[str, os.PathLike], names: List[str]) -> List[Path]:
    """``out`` itself for one image named ``*.png``, numbered siblings for several, else files in directory ``out``."""
    out = Path(out)
    if out.suffix.lower() == ".png":
        if len(names) == 1:
            return [out]
        return [out.with_name(f"{out.stem}-{index:03d}.png") for index in range(len(names))]
    return [out / f"{index:03d}-{_slug(name)}.png" for index, name in enumerate(names)]


def save_png(image: Image.Image, path: Union[str, os.PathLike], parameters: Dict[str, Any]) -> None:
    """Write ``image`` atomically as PNG with ``parameters`` as JSON in the ``parameters`` text chunk."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngInfo()
    info.add_text(PNG_PARAMETERS_KEY, json.dumps(parameters, sort_keys=True))
    with atomic_open(path, "wb") as file:
        image.save(file, format="PNG", pnginfo=info)


def read_png_parameters(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The generation parameters ``save_png`` stored in a PNG."""
    with Image.open(path) as image:
        return json.loads(image.text[PNG_PARAMETERS_KEY])


def generate_to_files(
    pipe: ZImageL2PPipeline,
    records: List[Dict[str, Any]],
    out: Union[str, os.PathLike],
    *,
    height: Optional[int] = None,
    width: Optional[int] = None,
    num_inference_steps: Optional[int] = None,
    cfg_scale: Optional[float] = None,
    sigma_shift: Optional[float] = None,
    cfg_max_sigma: Optional[float] = None,
    negative_prompt: str = "",
    seed: Optional[int] = None,
    num_images: int = 1,
    model: Optional[str] = None,
) -> List[Path]:
    """Run ``pipe`` for every prompt record, ``num_images`` each with seeds ``seed``, ``seed + 1``, …; return the PNGs.

    Records (see ``data.prompts.read_prompts``) may override ``negative_prompt`` and ``seed``.  Arguments left at
    ``None`` take the loaded checkpoint's defaults (``pipe.config``).  Each PNG stores its own parameters, the
    defaults resolved (see ``read_png_parameters``); ``model`` is recorded as given.
    """
    defaults = pipe.with_defaults(
        height=height,
        width=width,
        num_inference_steps=num_inference_steps,
        cfg_scale=cfg_scale,
        seed=seed,
        cfg_max_sigma=cfg_max_sigma,
    )
    paths = output_paths(out, [record["prompt"] for record in records for _ in range(num_images)])
    several = len(records) > 1
    written = []
    for number, record in enumerate(tqdm(records, desc="prompts", disable=not several)):
        call = dict(
            prompt=record["prompt"],
            negative_prompt=record.get("negative_prompt", negative_prompt),
            seed=int(record.get("seed", defaults["seed"])),
            height=defaults["height"],
            width=defaults["width"],
            num_inference_steps=defaults["num_inference_steps"],
            cfg_scale=defaults["cfg_scale"],
            cfg_max_sigma=defaults["cfg_max_sigma"],
            sigma_shift=sigma_shift,
        )
        progress = (lambda steps: steps) if several else tqdm
        for index, image in enumerate(pipe.generate_images(**call, num_images=num_images, progress_bar_cmd=progress)):
            parameters = dict(call, seed=call["seed"] + index, height=image.height, width=image.width, model=model)
            if sigma_shift is None:
                parameters["sigma_shift"] = pipe.sigma_shift_for(image.height, image.width)
            path = paths[number * num_images + index]
            save_png(image, path, parameters)
            written.append(path)
    return written
