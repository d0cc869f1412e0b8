"""ShapeEval: a deterministic shapes-world detector and a GenEval-style scorer.

``detect_objects`` segments the image by color (each pixel is explained as a blend of the background and one
palette color), splits every color into 8-connected components and classifies each component's shape as the one
of the world's three it overlaps best: a square, a disk or an apex-up triangle with the component's area and
centroid (holes filled).  ``score_image`` checks the detections against a caption's :class:`Scene`; ``evaluate``
aggregates per-category and overall accuracy.
"""

from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from .shapes import (
    COLORS,
    HELD_OUT_PAIRS,
    IMAGE_SIZE,
    POSITIONS,
    Scene,
    evaluation_scenes,
    palette_index,
    parse_caption,
)

MIN_AREA = 12  # components smaller than this are noise
_NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]


@dataclass(frozen=True)
class Detection:
    """One detected object: color, shape, nearest named position, bounding-box centre and area."""

    color: str
    shape: str
    position: str
    x: float
    y: float
    area: int


def color_labels(image: np.ndarray) -> np.ndarray:
    """Per-pixel palette index (order of ``COLORS``) or -1 for background / unexplained pixels (``palette_index``)."""
    return palette_index(image.reshape(-1, 3)).reshape(image.shape[:2])


def connected_components(mask: np.ndarray) -> List[np.ndarray]:
    """8-connected components of a boolean mask, each as an (n, 2) array of (y, x) pixels."""
    seen = np.zeros_like(mask, dtype=bool)
    height, width = mask.shape
    components = []
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        seen[start] = True
        queue, pixels = deque([start]), []
        while queue:
            y, x = queue.popleft()
            pixels.append((y, x))
            for dy, dx in _NEIGHBOURS:
                ny, nx = y + dy, x + dx
                if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        components.append(np.asarray(pixels))
    return components


def filled_mask(pixels: np.ndarray) -> np.ndarray:
    """A component as a mask of its bounding box plus a one-pixel frame, with its holes filled.

    Everything in the box not reachable from outside it belongs to the shape: its outline decides, and pixels inside
    it that noise pushed off the palette do not.
    """
    origin = pixels.min(0) - 1
    height, width = pixels.max(0) - origin + 2
    mask = np.zeros((height, width), dtype=bool)
    mask[tuple((pixels - origin).T)] = True
    outside = next(part for part in connected_components(~mask) if (part == 0).all(1).any())
    filled = np.ones_like(mask)
    filled[tuple(outside.T)] = False
    return filled


def template_overlaps(mask: np.ndarray) -> Dict[str, float]:
    """Intersection over union of ``mask`` with each shape as :func:`.shapes.draw` draws it, same area and centroid.

    The templates: an axis-aligned square, a disk, and a triangle as wide as it is tall with its apex up.  Matching
    area and centroid instead of the bounding box makes the reading robust to what a generator's outlines have and
    renders do not: wavy or slightly skewed edges and single stray pixels, which widen a box but barely move the area.
    """
    area = mask.sum()
    side, radius, height = np.sqrt(area), np.sqrt(area / np.pi), np.sqrt(2 * area)
    pad = int(np.ceil(height))  # every template fits in the mask's box grown by its largest extent
    grid = np.pad(mask, pad)
    ys, xs = np.nonzero(grid)
    cy, cx = ys.mean(), xs.mean()
    y, x = np.mgrid[: grid.shape[0], : grid.shape[1]]
    below_apex = y - (cy - 2 * height / 3)  # a triangle's centroid lies two thirds of its height below the apex
    templates = {
        "square": (np.abs(x - cx) <= side / 2) & (np.abs(y - cy) <= side / 2),
        "circle": (x - cx) ** 2 + (y - cy) ** 2 <= radius**2,
        "triangle": (below_apex >= 0) & (below_apex <= height) & (np.abs(x - cx) <= below_apex / 2),
    }
    return {name: float((grid & shape).sum() / (grid | shape).sum()) for name, shape in templates.items()}


def classify_shape(mask: np.ndarray) -> str:
    """The shape whose template overlaps the (hole-filled) component mask best."""
    overlaps = template_overlaps(mask)
    return max(overlaps, key=overlaps.get)


def nearest_position(x: float, y: float) -> str:
    """The named position whose centre is closest to (x, y)."""
    return min(POSITIONS, key=lambda name: (POSITIONS[name][0] - x) ** 2 + (POSITIONS[name][1] - y) ** 2)


def detect_objects(image: Union[Image.Image, np.ndarray]) -> List[Detection]:
    """Every object in a shapes-world image (resized to 64x64 if needed), largest first."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR))
    labels = color_labels(image)
    detections = []
    for index, color in enumerate(COLORS):
        for pixels in connected_components(labels == index):
            if len(pixels) < MIN_AREA:
                continue
            (top, left), (bottom, right) = pixels.min(0), pixels.max(0)
            x, y = (left + right) / 2, (top + bottom) / 2
            detections.append(
                Detection(
                    color=color,
                    shape=classify_shape(filled_mask(pixels)),
                    position=nearest_position(x, y),
                    x=float(x),
                    y=float(y),
                    area=len(pixels),
                )
            )
    return sorted(detections, key=lambda d: -d.area)


def _relation_holds(relation: str, first: Detection, second: Detection) -> bool:
    dx, dy = second.x - first.x, second.y - first.y  # second relative to first
    horizontal = abs(dx) >= abs(dy)
    return {
        "left of": horizontal and dx > 0,
        "right of": horizontal and dx < 0,
        "above": not horizontal and dy > 0,
        "below": not horizontal and dy < 0,
    }[relation]


def score_scene(scene: Scene, detections: List[Detection]) -> bool:
    """Whether the detections realise the scene exactly (GenEval's all-or-nothing rule per image)."""
    if scene.category in ("single", "position"):
        if len(detections) != 1:
            return False
        (spec,), (found,) = scene.objects, detections
        return (
            found.color == spec.color
            and found.shape == spec.shape
            and (spec.position is None or found.position == spec.position)
        )
    if scene.category == "count":
        spec = scene.objects[0]
        return len(detections) == scene.count and all(
            found.color == spec.color and found.shape == spec.shape for found in detections
        )
    if len(detections) != 2:
        return False
    first_spec, second_spec = scene.objects
    by_color = {found.color: found for found in detections}
    first, second = by_color.get(first_spec.color), by_color.get(second_spec.color)
    return (
        first is not None
        and second is not None
        and first.shape == first_spec.shape
        and second.shape == second_spec.shape
        and _relation_holds(scene.relation, first, second)
    )


def score_image(image: Union[Image.Image, np.ndarray], prompt: Union[str, Scene]) -> bool:
    """Whether ``image`` shows what the shapes-world ``prompt`` (caption or scene) describes."""
    scene = parse_caption(prompt) if isinstance(prompt, str) else prompt
    return score_scene(scene, detect_objects(image))


_Judgement = Tuple[Scene, bool, bool]  # the prompt's scene, whether the image realises it, whether its color shows


def _judge(samples: Iterable[Tuple[Union[Image.Image, np.ndarray], Union[str, Scene]]]) -> List[_Judgement]:
    judged = []
    for image, prompt in samples:
        scene = parse_caption(prompt) if isinstance(prompt, str) else prompt
        detections = detect_objects(image)
        color_hit = any(found.color == scene.objects[0].color for found in detections)
        judged.append((scene, score_scene(scene, detections), color_hit))
    return judged


def _aggregate(judged: List[_Judgement]) -> Dict[str, float]:
    results = defaultdict(list)
    for scene, hit, _ in judged:
        results[scene.category].append(hit)
    report = {category: float(np.mean(hits)) for category, hits in results.items()}
    report["overall"] = float(np.mean(list(report.values())))  # GenEval: the mean of the category scores
    report["color"] = float(np.mean([color_hit for _, _, color_hit in judged]))
    return report


def evaluate(
    samples: Iterable[Tuple[Union[Image.Image, np.ndarray], Union[str, Scene]]], by_pair: bool = False
) -> Dict[str, float]:
    """Accuracy per category and ``overall`` (the mean of the category accuracies) for (image, prompt) pairs.

    ``color`` is a partial-credit rate: the share of images with an object of the prompt's first color.  With
    ``by_pair``, the report adds ``overall`` on the prompts that contain each held-out pair, keyed ``"blue square"``
    (pairs present only): the evaluation set gives each pair 16 of its 48 prompts, and one pair the model cannot
    compose shows there while the mean hides it.
    """
    judged = _judge(samples)
    if not judged:
        raise ValueError("evaluate needs at least one (image, prompt) pair.")
    report = _aggregate(judged)
    if by_pair:
        for color, shape in sorted(HELD_OUT_PAIRS):
            chosen = [judgement for judgement in judged if (color, shape) in judgement[0].pairs()]
            if chosen:
                report[f"{color} {shape}"] = _aggregate(chosen)["overall"]
    return report


def evaluate_pipeline(
    pipe: Any,
    scenes: Optional[Sequence[Scene]] = None,
    seeds: Sequence[int] = (0, 1, 2, 3),
    num_inference_steps: int = 20,
    cfg_scale: float = 2.0,
    batch_size: int = 64,
    cfg_max_sigma: Optional[float] = None,
) -> Tuple[Dict[str, float], List[np.ndarray]]:
    """ShapeEval of the teacher or an L2P pipeline on ``scenes`` (default: held-out set); returns (report, images).

    One 64x64 image per (scene, seed), empty negative prompt, sampled in batches (:mod:`.sampling`); the images
    are ordered scene-major (all seeds of the first scene first).  The report includes the per-pair scores
    (:func:`evaluate` with ``by_pair``).
    """
    from .sampling import sample_images

    scenes = list(scenes) if scenes is not None else evaluation_scenes()
    jobs = [(scene, seed) for scene in scenes for seed in seeds]
    images = sample_images(
        pipe,
        [scene.caption for scene, _ in jobs],
        [seed for _, seed in jobs],
        num_inference_steps,
        cfg_scale,
        batch_size,
        cfg_max_sigma,
    )
    return evaluate(zip(images, [scene for scene, _ in jobs], strict=True), by_pair=True), images
