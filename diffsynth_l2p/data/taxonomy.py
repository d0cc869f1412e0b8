"""The L2P prompt taxonomy: 4 major classes -> 17 sub-classes -> seed categories, with templates and LLM rules.

The paper builds its corpus from a hierarchy of Nature, Design, Text and People (17 sub-classes, 1000+ categories
expanded by an LLM), then writes one detailed prompt per record with per-class rules. The sub-class names and
category seeds below are this project's reconstruction of that hierarchy; the templates fill it offline, the
rules text drives a local LLM (``l2p prompts expand --llm PATH``).
"""

import random
import re
from dataclasses import dataclass
from typing import Dict, List, Mapping, Tuple

LIGHTING = (
    "soft morning light", "warm golden-hour sunlight", "overcast diffuse daylight", "dramatic low-key lighting",
    "cool blue twilight", "bright midday sun with crisp shadows", "gentle window light", "neon and street-lamp glow",
)

CAMERA = (
    "shot on a 50mm lens with shallow depth of field", "wide-angle composition with a low vantage point",
    "centered symmetrical framing", "close-up with fine texture detail", "eye-level medium shot",
    "aerial view from above", "rule-of-thirds composition with negative space",
)


@dataclass(frozen=True)
class MajorClass:
    """One top-level class: its sub-classes (each with seed categories), templates, slot fillers and LLM rules."""

    name: str
    sub_classes: Mapping[str, Tuple[str, ...]]
    templates: Tuple[str, ...]
    slots: Mapping[str, Tuple[str, ...]]
    rules: str


NATURE = MajorClass(
    name="Nature",
    sub_classes={
        "Landscapes": (
            "alpine lake", "desert dunes", "volcanic coastline", "bamboo forest", "terraced rice fields",
            "glacier valley", "autumn birch forest", "limestone canyon", "lavender field", "misty fjord",
        ),
        "Animals": (
            "red fox", "snow leopard", "humpback whale", "barn owl", "monarch butterfly", "african elephant",
            "hummingbird", "sea otter", "tree frog", "grey wolf",
        ),
        "Plants and Flowers": (
            "cherry blossom branch", "sunflower", "moss-covered log", "lotus pond", "cactus garden", "fern fronds",
            "wild orchids", "oak tree", "tulip field", "bonsai pine",
        ),
        "Sky and Weather": (
            "thunderstorm", "aurora borealis", "double rainbow", "fog bank", "starry night sky", "snowfall",
            "sunset clouds", "sandstorm", "lightning strike", "morning frost",
        ),
        "Underwater and Coast": (
            "coral reef", "kelp forest", "tide pool", "sea turtle", "jellyfish swarm", "rocky shoreline",
            "mangrove roots", "school of sardines", "sea cave", "breaking wave",
        ),
    },
    templates=(
        "A {adjective} view of a {category} {setting}, {light}. {detail} The scene is {camera}, rendered with "
        "natural colors and realistic textures.",
        "Nature photograph of a {category} {setting}. {detail} Captured in {light}, {camera}, with every leaf, "
        "stone and droplet in sharp focus.",
        "A {adjective} {category} {setting} under {light}. {detail} High-resolution wildlife and landscape "
        "photography, {camera}.",
    ),
    slots={
        "adjective": ("serene", "majestic", "wild", "quiet", "vivid", "remote", "pristine"),
        "setting": (
            "at the edge of a national park", "far from any road", "in early spring", "after a heavy rain",
            "in the middle of winter", "on a late summer evening", "beneath towering cliffs",
        ),
        "detail": (
            "Dew clings to the foreground and distant hills fade into a soft haze.",
            "Small details such as pebbles, insects and ripples in the water are clearly visible.",
            "A narrow path winds through the frame and leads the eye toward the horizon.",
            "Patches of light break through the canopy and dapple the ground.",
            "The reflection in still water doubles the scene almost perfectly.",
        ),
    },
    rules=(
        "Describe a real natural scene or living creature. Name the subject, its surroundings, season, weather and "
        "light. Mention concrete textures (fur, bark, water, rock) and the camera framing. No people, no text, no "
        "fantasy creatures."
    ),
)

DESIGN = MajorClass(
    name="Design",
    sub_classes={
        "Architecture and Interiors": (
            "brutalist library", "glass skyscraper", "japanese teahouse", "gothic cathedral", "suspension bridge",
            "lighthouse", "scandinavian living room", "industrial loft kitchen", "hotel lobby", "greenhouse cafe",
        ),
        "Products and Objects": (
            "mechanical wristwatch", "ceramic teapot", "leather backpack", "vintage camera", "wireless headphones",
            "glass perfume bottle", "wooden chess set", "fountain pen", "espresso machine", "desk lamp",
        ),
        "Food and Drink": (
            "bowl of ramen", "stack of blueberry pancakes", "sushi platter", "sourdough loaf", "iced matcha latte",
            "margherita pizza", "fruit tart", "street tacos", "chocolate layer cake", "cocktail with citrus peel",
        ),
        "Vehicles and Machines": (
            "vintage motorcycle", "steam locomotive", "electric sports car", "sailing yacht", "cargo drone",
            "red double-decker bus", "propeller airplane", "bicycle with a wicker basket", "excavator",
            "retro camper van",
        ),
        "Art and Illustration": (
            "watercolor city map", "isometric game scene", "paper-cut diorama", "stained glass window",
            "ink wash mountain painting", "claymation character set", "pixel art castle", "art nouveau ornament",
            "low-poly fox sculpture", "mosaic floor pattern",
        ),
    },
    templates=(
        "A {style} {category} made of {material}, {setting}. {detail} Lit by {light}, {camera}, product-quality "
        "rendering with accurate reflections.",
        "Design photograph of a {category} in a {style} style, featuring {material}. {detail} The image is {camera} "
        "under {light}.",
        "A carefully composed image of a {category} {setting}, {style} aesthetic with {material}. {detail} "
        "{light}, {camera}.",
    ),
    slots={
        "style": ("minimalist", "mid-century modern", "futuristic", "rustic", "luxurious", "playful", "industrial"),
        "material": (
            "brushed aluminum and walnut wood", "matte ceramic and brass", "polished concrete and glass",
            "recycled paper and cardboard", "hand-woven textiles", "glossy lacquer and chrome",
        ),
        "setting": (
            "on a clean studio backdrop", "in a sunlit showroom", "on a weathered wooden table",
            "in a busy city street", "against a pastel gradient wall", "inside a quiet museum hall",
        ),
        "detail": (
            "Edges, seams and small screws are precisely defined.",
            "Subtle reflections reveal the shape of the surrounding room.",
            "A few carefully placed props give a sense of scale.",
            "The color palette is limited to three harmonious tones.",
            "Fine surface scratches and fingerprints make it feel real.",
        ),
    },
    rules=(
        "Describe a designed object, building, interior, dish, vehicle or artwork. Name its style, materials, "
        "colors, setting, lighting and camera framing; keep proportions and geometry plausible. No readable text, "
        "no brand names, no people in focus."
    ),
)

TEXT = MajorClass(
    name="Text",
    sub_classes={
        "Signs and Storefronts": (
            "neon bar sign", "bakery storefront", "street name sign", "train station departure board",
            "hand-painted cafe chalkboard", "bookshop window", "highway billboard", "hotel entrance canopy",
        ),
        "Posters and Covers": (
            "concert poster", "vintage travel poster", "movie poster", "magazine cover", "book cover",
            "science fair poster", "protest placard", "event flyer",
        ),
        "Labels and Packaging": (
            "coffee bag label", "wine bottle label", "cereal box", "medicine bottle", "jam jar tag",
            "shipping box stamp", "tea tin", "soda can",
        ),
    },
    templates=(
        'A {category} that reads "{text}" in {font}, {setting}. {detail} The letters are sharp, correctly spelled '
        "and fully legible, {light}.",
        'Close-up of a {category} with the words "{text}" written in {font}. {detail} Photographed {setting} under '
        "{light}, {camera}.",
        'A {category} {setting} displaying the text "{text}" in {font}. {detail} Crisp typography and clean '
        "layout, {camera}.",
    ),
    slots={
        "text": (
            "OPEN LATE", "Fresh Bread Daily", "Platform 9", "Summer Jazz Festival", "Hello World", "Slow Down",
            "Mountain Roast Coffee", "The Last Lighthouse", "Keep It Simple", "Harvest Market",
        ),
        "font": (
            "bold sans-serif capitals", "elegant gold serif lettering", "playful hand-drawn script",
            "retro condensed type", "glowing neon tubes", "stenciled block letters",
        ),
        "setting": (
            "on a brick wall", "in a rainy street at night", "on a wooden shelf", "in a sunny shop window",
            "pinned to a corkboard", "on a marble counter",
        ),
        "detail": (
            "Small icons and a thin border frame the main words.",
            "A secondary line of smaller text sits below the headline.",
            "Slight wear on the surface shows the object has been used.",
            "The layout uses generous spacing and a strong contrast between text and background.",
        ),
    },
    rules=(
        "Describe an object or scene whose main subject is written text. Quote the exact short text (at most six "
        "words) in double quotes, state the font style, colors, material and placement, and ask for legible, "
        "correctly spelled letters. No offensive or trademarked text."
    ),
)

PEOPLE = MajorClass(
    name="People",
    sub_classes={
        "Portraits": (
            "elderly fisherman", "young violinist", "smiling nurse", "astronaut in a helmet", "freckled teenager",
            "grandmother with silver hair", "chef in whites", "farmer in a straw hat",
        ),
        "Daily Life": (
            "family cooking dinner", "commuters on a subway platform", "students in a library",
            "friends at a picnic", "street vendor serving noodles", "child flying a kite", "potter at a wheel",
            "couple walking a dog",
        ),
        "Sports and Action": (
            "surfer riding a wave", "marathon runner", "rock climber on a cliff", "ballet dancer mid-leap",
            "basketball player dunking", "skateboarder in a bowl", "cyclist on a mountain road", "swimmer diving in",
        ),
        "Fashion and Costume": (
            "model in a tailored wool coat", "dancer in a flamenco dress", "person in traditional hanbok",
            "street-style outfit with sneakers", "samurai armor costume", "bride in a lace gown",
            "knitted winter outfit", "festival face paint",
        ),
    },
    templates=(
        "A portrait of a {category} {action}, {setting}. {detail} {light}, {camera}, natural skin texture and "
        "realistic hands.",
        "Candid photograph of a {category} {action} {setting}. {detail} Shot in {light}, {camera}.",
        "An editorial image of a {category} {action}, {setting}, wearing {clothing}. {detail} {light}, {camera}.",
    ),
    slots={
        "action": (
            "looking thoughtfully into the distance", "laughing at something off-camera", "in the middle of a task",
            "pausing for a moment", "concentrating intently", "glancing over one shoulder",
        ),
        "clothing": (
            "a linen shirt and rolled-up sleeves", "a bright yellow raincoat", "a hand-knitted sweater",
            "a crisp white uniform", "layered earth-toned clothing", "a denim jacket",
        ),
        "setting": (
            "on a crowded market street", "in a small workshop", "by a window in a quiet apartment",
            "at the seaside", "in a mountain village", "under city lights",
        ),
        "detail": (
            "The expression is natural and the eyes are in sharp focus.",
            "The background is softly blurred so the person stands out.",
            "Hands and fingers are clearly visible and anatomically correct.",
            "Fabric folds and hair strands are rendered in fine detail.",
        ),
    },
    rules=(
        "Describe one or a few people with respect: age range, clothing, pose, expression, activity, setting, "
        "lighting and camera framing. Ask for natural faces and correct hands. No celebrities or real named "
        "persons, no nudity, violence or stereotypes."
    ),
)

TAXONOMY: Tuple[MajorClass, ...] = (NATURE, DESIGN, TEXT, PEOPLE)

# Rules every generated prompt must follow, prepended to the per-class rules in LLM mode.
GENERAL_RULES = (
    "Write one English text-to-image prompt of 200 to 350 characters as a single paragraph. Use complete, "
    "grammatical sentences, concrete visual details and no lists, numbering, hashtags or quotation of these "
    "instructions. Output only the prompt."
)

_ARTICLE_BEFORE_VOWEL = re.compile(r"\b([Aa]) (?=[aeioAEIO])")
_SENTENCE_START = re.compile(r"(?:^|(?<=[.!?] ))[a-z]")


def major_class(name: str) -> MajorClass:
    """The major class called ``name`` (case-insensitive)."""
    for major in TAXONOMY:
        if major.name.lower() == name.lower():
            return major
    raise ValueError(f"unknown major class {name!r}; choose one of {[m.name for m in TAXONOMY]}")


def sub_class_table() -> List[Tuple[str, str, Tuple[str, ...]]]:
    """Every ``(major-class, sub-class, categories)`` in taxonomy order."""
    return [(major.name, sub, categories) for major in TAXONOMY for sub, categories in major.sub_classes.items()]


def fill_template(major: MajorClass, category: str, rng: random.Random) -> str:
    """One prompt for ``category``: a random template of ``major`` with random slot fillers."""
    template = rng.choice(major.templates)
    values: Dict[str, str] = {slot: rng.choice(options) for slot, options in major.slots.items()}
    values.update(category=category, light=rng.choice(LIGHTING), camera=rng.choice(CAMERA))
    prompt = _ARTICLE_BEFORE_VOWEL.sub(r"\1n ", template.format(**values))
    return _SENTENCE_START.sub(lambda match: match.group(0).upper(), prompt)


def llm_instruction(major: MajorClass, sub_class: str, category: str) -> str:
    """The user message asking an LLM for one prompt about ``category`` under the paper-style class rules."""
    return (
        f"{GENERAL_RULES}\nClass: {major.name} / {sub_class}. Rules for this class: {major.rules}\nSubject: {category}."
    )
