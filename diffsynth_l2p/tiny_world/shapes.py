"""The shapes world: seeded 64x64 scenes of colored shapes with captions from a small grammar.

A :class:`Scene` is the structured spec of one caption; :func:`render_scene` draws it, :func:`parse_caption`
reads a caption back into its scene.  Four categories, as in GenEval:

- ``single``: ``"a red circle"`` (colour-shape binding, anywhere),
- ``position``: ``"a red circle on the left"`` / ``"... in the center"``,
- ``count``: ``"two blue squares"`` (2 or 3 equal objects),
- ``relation``: ``"a red square left of a yellow circle"`` (two colors; left of, right of, above, below).

The (color, shape) pairs in :data:`HELD_OUT_PAIRS` never appear in a training scene; the evaluation prompt set
(:func:`evaluation_scenes`) is made of exactly those pairs, so it measures generalisation to unseen combinations.
"""

import re
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64
BACKGROUND = (255, 255, 255)
# Four well-separated hues: few enough that a CPU-sized teacher sees every seen pair often.
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 70),
    "blue": (40, 80, 220),
    "yellow": (240, 200, 20),
}
SHAPES = ("circle", "square", "triangle")
CATEGORIES = ("single", "position", "count", "relation")
# Half extents (pixels) of the drawn objects per category: large enough that a 16x16 token holds a recognisable part.
HALF_EXTENTS = {"single": (10, 13), "position": (9, 11), "count": (8, 10), "relation": (8, 10)}
# Object centres of the five named positions (x, y).
POSITIONS = {"left": (14, 32), "right": (50, 32), "top": (32, 14), "bottom": (32, 50), "center": (32, 32)}
POSITION_JITTER = 2
RELATIONS = ("left of", "right of", "above", "below")
COUNT_WORDS = {2: "two", 3: "three"}
# One held-out pair per shape and per colour (yellow keeps all three shapes): each held-out pair's colour and
# shape are both seen in training, only never together.
HELD_OUT_PAIRS = frozenset({("red", "triangle"), ("green", "circle"), ("blue", "square")})
OBJECT_GAP = 6
# RGB distance from the best background-color blend beyond which a pixel reads as no palette color.
MAX_RESIDUAL = 70.0
# Share of the autoencoder's objects drawn in a palette color (the rest get random colors).
CODEC_PALETTE_SHARE = 0.5
# RGB distance by which the autoencoder's random colors stay away from the background.
CODEC_BACKGROUND_MARGIN = 90.0


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


@dataclass(frozen=True)
class ShapeSpec:
    """One object of a caption; ``position`` is set only when the caption names it."""

    color: str
    shape: str
    position: Optional[str] = None


@dataclass(frozen=True)
class Scene:
    """The structured spec of a caption: a category and its objects (``count`` equal objects, or a relation pair)."""

    category: str
    objects: Tuple[ShapeSpec, ...]
    count: int = 1
    relation: Optional[str] = None

    @property
    def caption(self) -> str:
        first = self.objects[0]
        if self.category == "single":
            return f"{_article(first.color)} {first.color} {first.shape}"
        if self.category == "position":
            where = "in the center" if first.position == "center" else f"on the {first.position}"
            return f"{_article(first.color)} {first.color} {first.shape} {where}"
        if self.category == "count":
            return f"{COUNT_WORDS[self.count]} {first.color} {first.shape}s"
        second = self.objects[1]
        return (
            f"{_article(first.color)} {first.color} {first.shape} {self.relation} "
            f"{_article(second.color)} {second.color} {second.shape}"
        )

    def pairs(self) -> List[Tuple[str, str]]:
        """The (color, shape) pairs the scene contains."""
        return [(spec.color, spec.shape) for spec in self.objects]

    def is_held_out(self) -> bool:
        return any(pair in HELD_OUT_PAIRS for pair in self.pairs())


_COLOR = "|".join(COLORS)
_SHAPE = "|".join(SHAPES)
_CAPTION_PATTERNS = {
    "single": re.compile(rf"an? (?P<color>{_COLOR}) (?P<shape>{_SHAPE})"),
    "position": re.compile(rf"an? (?P<color>{_COLOR}) (?P<shape>{_SHAPE}) (?:on the|in the) (?P<position>\w+)"),
    "count": re.compile(rf"(?P<count>two|three) (?P<color>{_COLOR}) (?P<shape>{_SHAPE})s"),
    "relation": re.compile(
        rf"an? (?P<color>{_COLOR}) (?P<shape>{_SHAPE}) (?P<relation>{'|'.join(RELATIONS)}) "
        rf"an? (?P<color2>{_COLOR}) (?P<shape2>{_SHAPE})"
    ),
}


def parse_caption(caption: str) -> Scene:
    """The scene a shapes-world caption describes; ValueError for text outside the grammar."""
    text = " ".join(caption.lower().strip().rstrip(".").split())
    for category, pattern in _CAPTION_PATTERNS.items():
        match = pattern.fullmatch(text)
        if match is None:
            continue
        fields = match.groupdict()
        if category == "position" and fields["position"] not in POSITIONS:
            continue
        if category == "count":
            count = {word: number for number, word in COUNT_WORDS.items()}[fields["count"]]
            return Scene("count", (ShapeSpec(fields["color"], fields["shape"]),) * count, count=count)
        if category == "relation":
            objects = (ShapeSpec(fields["color"], fields["shape"]), ShapeSpec(fields["color2"], fields["shape2"]))
            return Scene("relation", objects, relation=fields["relation"])
        spec = ShapeSpec(fields["color"], fields["shape"], fields.get("position"))
        return Scene(category, (spec,))
    raise ValueError(
        f"{caption!r} is not a shapes-world caption; examples: 'a red circle', 'a red circle on the left', "
        "'two blue squares', 'a red square left of a yellow circle'."
    )


def _sample_pair(rng: np.random.Generator, allow_held_out: bool, exclude_color: Optional[str] = None) -> Tuple:
    while True:
        pair = (str(rng.choice(list(COLORS))), str(rng.choice(SHAPES)))
        if pair[0] != exclude_color and (allow_held_out or pair not in HELD_OUT_PAIRS):
            return pair


def sample_scene(rng: np.random.Generator, allow_held_out: bool = False) -> Scene:
    """A random scene of a uniformly drawn category; held-out pairs are excluded unless ``allow_held_out``."""
    category = CATEGORIES[rng.integers(len(CATEGORIES))]
    color, shape = _sample_pair(rng, allow_held_out)
    if category == "single":
        return Scene(category, (ShapeSpec(color, shape),))
    if category == "position":
        return Scene(category, (ShapeSpec(color, shape, position=str(rng.choice(list(POSITIONS)))),))
    if category == "count":
        count = int(rng.choice(list(COUNT_WORDS)))
        return Scene(category, (ShapeSpec(color, shape),) * count, count=count)
    color2, shape2 = _sample_pair(rng, allow_held_out, exclude_color=color)
    relation = str(rng.choice(RELATIONS))
    return Scene(category, (ShapeSpec(color, shape), ShapeSpec(color2, shape2)), relation=relation)


def training_captions() -> List[str]:
    """Every caption of the grammar without a held-out pair (the training caption set)."""
    return [scene.caption for scene in all_scenes() if not scene.is_held_out()]


def all_scenes() -> Iterator[Scene]:
    """Every scene of the grammar, in a fixed order."""
    pairs = [(color, shape) for color in COLORS for shape in SHAPES]
    for color, shape in pairs:
        yield Scene("single", (ShapeSpec(color, shape),))
        for position in POSITIONS:
            yield Scene("position", (ShapeSpec(color, shape, position=position),))
        for count in COUNT_WORDS:
            yield Scene("count", (ShapeSpec(color, shape),) * count, count=count)
        for color2, shape2 in pairs:
            if color2 != color:
                for relation in RELATIONS:
                    yield Scene("relation", (ShapeSpec(color, shape), ShapeSpec(color2, shape2)), relation=relation)


def evaluation_scenes() -> List[Scene]:
    """The fixed held-out evaluation set (48 prompts): 16 scenes for each held-out pair.

    Per pair: its single scene, its five positions, both counts, and eight relations (each relation once with the
    held-out object first and once second; partners are seen pairs of another color, chosen deterministically).
    """
    seen = [(color, shape) for color in COLORS for shape in SHAPES if (color, shape) not in HELD_OUT_PAIRS]
    scenes = []
    for index, (color, shape) in enumerate(sorted(HELD_OUT_PAIRS)):
        held_out = ShapeSpec(color, shape)
        scenes.append(Scene("single", (held_out,)))
        for position in POSITIONS:
            scenes.append(Scene("position", (ShapeSpec(color, shape, position=position),)))
        for count in COUNT_WORDS:
            scenes.append(Scene("count", (held_out,) * count, count=count))
        partners = [ShapeSpec(*pair) for pair in seen if pair[0] != color]
        for offset, relation in enumerate(RELATIONS):
            first = partners[(5 * index + 3 * offset) % len(partners)]
            second = partners[(5 * index + 3 * offset + 1) % len(partners)]
            scenes.append(Scene("relation", (held_out, first), relation=relation))
            scenes.append(Scene("relation", (second, held_out), relation=relation))
    return scenes


@dataclass(frozen=True)
class Placement:
    """A drawn object: its spec and its centre and half extent in pixels."""

    spec: ShapeSpec
    x: int
    y: int
    half: int

    @property
    def box(self) -> Tuple[int, int, int, int]:
        return self.x - self.half, self.y - self.half, self.x + self.half, self.y + self.half


def _separated(box: Tuple[int, int, int, int], others: List[Placement]) -> bool:
    return all(
        box[2] + OBJECT_GAP < other.box[0]
        or other.box[2] + OBJECT_GAP < box[0]
        or box[3] + OBJECT_GAP < other.box[1]
        or other.box[3] + OBJECT_GAP < box[1]
        for other in others
    )


def _free_centre(rng: np.random.Generator, half: int, placed: List[Placement]) -> Optional[Tuple[int, int]]:
    """A random centre whose box keeps the gap to every placed object, or None if 200 draws found none."""
    margin = half + 1
    for _ in range(200):
        x, y = (int(v) for v in rng.integers(margin, IMAGE_SIZE - margin, size=2))
        if _separated((x - half, y - half, x + half, y + half), placed):
            return x, y
    return None


def _relation_centres(rng: np.random.Generator, relation: str, halves: Tuple[int, int]) -> List[Tuple[int, int]]:
    """Centres of the (first, second) objects of a relation: far apart on one axis, close on the other."""
    near = [int(rng.integers(11, 20)), int(rng.integers(45, 54))]  # first, second along the relation axis
    if relation in ("right of", "below"):
        near.reverse()
    across = int(rng.integers(24, 41))
    across2 = int(np.clip(across + rng.integers(-8, 9), max(halves) + 1, IMAGE_SIZE - max(halves) - 2))
    if relation in ("left of", "right of"):
        return [(near[0], across), (near[1], across2)]
    return [(across, near[0]), (across2, near[1])]


def place_scene(scene: Scene, rng: np.random.Generator) -> List[Placement]:
    """Random object placements that realise ``scene`` (non-overlapping, separated by a gap)."""
    low, high = HALF_EXTENTS[scene.category]
    if scene.category == "position":
        (spec,) = scene.objects
        half = int(rng.integers(low, high + 1))
        x, y = (c + int(rng.integers(-POSITION_JITTER, POSITION_JITTER + 1)) for c in POSITIONS[spec.position])
        return [Placement(spec, x, y, half)]
    if scene.category in ("single", "count"):
        while True:  # sequential placement can box itself in; start the layout over when it does
            placed: List[Placement] = []
            for spec in scene.objects:
                half = int(rng.integers(low, high + 1))
                centre = _free_centre(rng, half, placed)
                if centre is None:
                    break
                placed.append(Placement(spec, *centre, half))
            else:
                return placed
    halves = tuple(int(h) for h in rng.integers(low, high + 1, size=2))
    centres = _relation_centres(rng, scene.relation, halves)
    return [Placement(spec, x, y, half) for spec, (x, y), half in zip(scene.objects, centres, halves, strict=True)]


def draw(placements: List[Placement], colors: Optional[Sequence[Tuple[int, int, int]]] = None) -> Image.Image:
    """Draw placed objects on the background, without anti-aliasing (flat colors, crisp masks).

    ``colors`` overrides the palette color of each placement (the autoencoder's training images).
    """
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUND)
    canvas = ImageDraw.Draw(image)
    for index, item in enumerate(placements):
        color = tuple(colors[index]) if colors is not None else COLORS[item.spec.color]
        left, top, right, bottom = item.box
        if item.spec.shape == "circle":
            canvas.ellipse((left, top, right, bottom), fill=color)
        elif item.spec.shape == "square":
            canvas.rectangle((left, top, right, bottom), fill=color)
        else:
            canvas.polygon([(item.x, top), (right, bottom), (left, bottom)], fill=color)
    return image


def render_scene(scene: Scene, rng: np.random.Generator) -> Image.Image:
    """One random 64x64 RGB image of ``scene``."""
    return draw(place_scene(scene, rng))


def sample_dataset(count: int, seed: int, allow_held_out: bool = False) -> Iterator[Tuple[Image.Image, str]]:
    """``count`` seeded (image, caption) pairs; without ``allow_held_out`` no held-out pair appears."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        scene = sample_scene(rng, allow_held_out)
        yield render_scene(scene, rng), scene.caption


def palette_index(pixels: np.ndarray) -> np.ndarray:
    """Palette index (order of ``COLORS``) of each RGB pixel ``(N, 3)``, or -1 for background / unexplained pixels.

    Each pixel is projected on every background->color segment; the closest segment wins if the pixel is at
    least half-way to the color and near enough to the segment (anti-aliased or blurry edges stay classifiable).
    """
    pixels = pixels.astype(np.float32) - np.asarray(BACKGROUND, np.float32)  # (N, 3)
    directions = np.asarray(list(COLORS.values()), np.float32) - np.asarray(BACKGROUND, np.float32)  # (K, 3)
    alpha = np.clip(pixels @ directions.T / (directions**2).sum(1), 0.0, 1.0)  # (N, K)
    residual = np.linalg.norm(pixels[:, None, :] - alpha[..., None] * directions[None], axis=-1)  # (N, K)
    best = residual.argmin(1)
    rows = np.arange(len(best))
    foreground = (alpha[rows, best] >= 0.5) & (residual[rows, best] <= MAX_RESIDUAL)
    return np.where(foreground, best, -1)


def _random_color(rng: np.random.Generator, shape: str) -> Tuple[int, int, int]:
    """A palette color (half the time) or a random RGB color; never one that reads as held out with ``shape``."""
    held_out = [list(COLORS).index(color) for color, held in HELD_OUT_PAIRS if held == shape]
    if rng.random() < CODEC_PALETTE_SHARE:
        allowed = [color for index, color in enumerate(COLORS.values()) if index not in held_out]
        return allowed[rng.integers(len(allowed))]
    while True:
        color = rng.integers(0, 256, size=3)
        if np.linalg.norm(color - np.asarray(BACKGROUND)) > CODEC_BACKGROUND_MARGIN:
            if palette_index(color[None])[0] not in held_out:
                return tuple(int(c) for c in color)


def sample_codec_images(count: int, seed: int) -> Iterator[Image.Image]:
    """``count`` seeded images for the autoencoder: shapes-world layouts with random, unnamed colors.

    The codec learns shapes and colors independently, as a real VAE learns from generic images; no image shows a
    held-out pair (a held-out shape is never drawn near the held-out color), so the held-out split stays clean.
    """
    rng = np.random.default_rng(seed)
    for _ in range(count):
        placements = place_scene(sample_scene(rng, allow_held_out=True), rng)
        yield draw(placements, [_random_color(rng, item.spec.shape) for item in placements])
