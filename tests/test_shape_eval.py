"""ShapeEval: the detector reads real shapes-world images perfectly and rejects wrong prompts and noise."""

import numpy as np
import pytest
from PIL import Image

from diffsynth_l2p.tiny_world.shape_eval import (
    classify_shape,
    color_labels,
    connected_components,
    detect_objects,
    evaluate,
    filled_mask,
    score_image,
)
from diffsynth_l2p.tiny_world.shapes import (
    CATEGORIES,
    COLORS,
    Placement,
    Scene,
    ShapeSpec,
    draw,
    evaluation_scenes,
    place_scene,
    render_scene,
    sample_scene,
)


def test_real_images_score_100_percent_in_every_category():
    rng = np.random.default_rng(0)
    samples = []
    for _ in range(400):
        scene = sample_scene(rng, allow_held_out=True)
        samples.append((render_scene(scene, rng), scene))
    report = evaluate(samples)
    assert set(report) == set(CATEGORIES) | {"overall", "color"}
    assert report == {key: 1.0 for key in report}


def test_held_out_evaluation_prompts_score_100_percent_on_real_images():
    rng = np.random.default_rng(1)
    assert evaluate((render_scene(scene, rng), scene.caption) for scene in evaluation_scenes())["overall"] == 1.0


def test_detections_carry_the_attributes():
    scene = Scene("position", (ShapeSpec("yellow", "triangle", position="left"),))
    (found,) = detect_objects(render_scene(scene, np.random.default_rng(0)))
    assert (found.color, found.shape, found.position) == ("yellow", "triangle", "left")


def test_wrong_prompts_fail():
    rng = np.random.default_rng(2)
    image = render_scene(
        Scene("relation", (ShapeSpec("red", "square"), ShapeSpec("blue", "circle")), relation="left of"), rng
    )
    assert score_image(image, "a red square left of a blue circle")
    assert not score_image(image, "a red square right of a blue circle")
    assert not score_image(image, "a red circle left of a blue circle")
    assert not score_image(image, "a green square left of a blue circle")
    assert not score_image(image, "two red squares")


def test_blurred_edges_keep_their_color():
    image = np.asarray(
        render_scene(Scene("single", (ShapeSpec("red", "circle"),)), np.random.default_rng(0))
    )
    blurred = np.asarray(Image.fromarray(image).resize((16, 16), Image.BILINEAR).resize((64, 64), Image.BILINEAR))
    labels = color_labels(blurred)
    assert set(np.unique(labels)) == {-1, list(COLORS).index("red")}
    assert score_image(blurred, "a red circle")


def test_pixels_knocked_out_inside_a_shape_do_not_change_it():
    scene = Scene("single", (ShapeSpec("blue", "circle"),))
    image = np.array(render_scene(scene, np.random.default_rng(0)))
    inside = np.argwhere(color_labels(image) == list(COLORS).index("blue"))
    rng = np.random.default_rng(0)
    for y, x in inside[rng.choice(len(inside), len(inside) // 4, replace=False)]:
        if 0 < y < 63 and 0 < x < 63:
            image[y, x] = (255, 255, 255)  # speckle: background-coloured pixels punched into the object
    (found,) = [d for d in detect_objects(image) if d.color == "blue"]
    assert found.shape == "circle"
    assert score_image(image, "a blue circle")


def test_filled_mask_fills_holes_but_not_open_notches():
    ring = np.zeros((7, 7), bool)
    ring[1:6, 1:6] = True
    ring[3, 3] = False  # a hole: filled
    assert filled_mask(np.argwhere(ring)).sum() == 25
    notch = np.zeros((7, 7), bool)
    notch[1:6, 1:6] = True
    notch[1:4, 3] = False  # a notch open to the top edge: not filled
    assert filled_mask(np.argwhere(notch)).sum() == 22


def _wobble(image: np.ndarray, rng: np.random.Generator, amplitude: float, degrees: float) -> np.ndarray:
    """``image`` resampled (nearest pixel) through a small rotation and a smooth random displacement field."""
    size = image.shape[0]
    angle = np.deg2rad(rng.uniform(-degrees, degrees))
    fields = [
        np.asarray(Image.fromarray(rng.normal(size=(6, 6)).astype(np.float32)).resize((size, size), Image.BICUBIC))
        for _ in range(2)
    ]
    scale = amplitude / max(np.abs(field).max() for field in fields)
    y, x = np.mgrid[:size, :size] - (size - 1) / 2
    source_y = np.cos(angle) * y - np.sin(angle) * x + scale * fields[0] + (size - 1) / 2
    source_x = np.sin(angle) * y + np.cos(angle) * x + scale * fields[1] + (size - 1) / 2
    rows, columns = (np.clip(np.rint(c), 0, size - 1).astype(int) for c in (source_y, source_x))
    return image[rows, columns]


def test_wavy_and_skewed_outlines_read_as_drawn_and_other_shapes_do_not():
    """Generated shapes have wavy, slightly rotated outlines that a bounding box exaggerates; the reading holds."""
    rng = np.random.default_rng(5)
    scenes = [scene for scene in evaluation_scenes() for _ in range(2)]
    other = {"circle": "square", "square": "triangle", "triangle": "circle"}
    drawn, swapped = [], []
    for scene in scenes:
        placements = place_scene(scene, rng)
        drawn.append(_wobble(np.asarray(draw(placements)), rng, amplitude=2.0, degrees=8.0))
        changed = [Placement(ShapeSpec(p.spec.color, other[p.spec.shape]), p.x, p.y, p.half) for p in placements]
        swapped.append(_wobble(np.asarray(draw(changed)), rng, amplitude=2.0, degrees=8.0))
    assert evaluate(zip(drawn, scenes, strict=True))["overall"] >= 0.95
    assert evaluate(zip(swapped, scenes, strict=True))["overall"] == 0.0


def test_noise_and_blank_images_score_zero():
    rng = np.random.default_rng(0)
    noise = [(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), scene) for scene in evaluation_scenes()]
    assert evaluate(noise)["overall"] == 0.0
    assert detect_objects(np.full((64, 64, 3), 255, np.uint8)) == []
    with pytest.raises(ValueError):
        evaluate([])


def test_components_and_shape_templates():
    mask = np.zeros((6, 6), bool)
    mask[0, 0] = mask[1, 1] = True  # diagonal neighbours: one 8-connected component
    mask[4:, 4:] = True
    assert sorted(len(c) for c in connected_components(mask)) == [2, 4]
    for half in (6, 10, 14):
        y, x = np.mgrid[-half : half + 1, -half : half + 1]
        square, disk = np.ones_like(y, bool), x**2 + y**2 <= half**2
        triangle = np.abs(x) <= (y + half) / 2  # apex at the top, as wide as tall
        assert [classify_shape(np.pad(m, 1)) for m in (square, disk, triangle)] == ["square", "circle", "triangle"]


def test_overall_is_the_mean_of_the_category_scores():
    rng = np.random.default_rng(3)
    single = Scene("single", (ShapeSpec("red", "circle"),))
    count = Scene("count", (ShapeSpec("blue", "circle"),) * 2, count=2)
    blank = np.full((64, 64, 3), 255, np.uint8)
    # single: 3 of 3 right; count: 0 of 1 right -> overall (1 + 0) / 2, not 3 / 4.
    samples = [(render_scene(single, rng), single) for _ in range(3)] + [(blank, count)]
    report = evaluate(samples)
    assert (report["single"], report["count"], report["overall"]) == (1.0, 0.0, 0.5)


def test_scores_by_pair_single_out_the_pair_a_model_cannot_compose():
    rng = np.random.default_rng(4)
    blank = np.full((64, 64, 3), 255, np.uint8)
    scenes = evaluation_scenes()
    samples = [(blank if ("blue", "square") in scene.pairs() else render_scene(scene, rng), scene) for scene in scenes]
    report = evaluate(samples, by_pair=True)
    assert {key: report[key] for key in ("blue square", "green circle", "red triangle")} == {
        "blue square": 0.0,
        "green circle": 1.0,
        "red triangle": 1.0,
    }
    assert 0.0 < report["overall"] < 1.0 and evaluate(samples) == {
        key: value for key, value in report.items() if key not in ("blue square", "green circle", "red triangle")
    }
    seen_only = [(render_scene(scene, rng), scene) for scene in [Scene("single", (ShapeSpec("red", "circle"),))]]
    assert evaluate(seen_only, by_pair=True) == evaluate(seen_only)


def test_report_table_shows_pair_columns_only_where_recorded():
    from diffsynth_l2p.tiny_world.reproduce import format_report

    base = dict.fromkeys([*CATEGORIES, "overall", "color"], 0.5)
    table = format_report({"teacher": {**base, "blue square": 0.25}, "student": {**base, "overall": 0.4}})
    header, _, teacher, student, _, retention = table.splitlines()
    assert header.endswith("| overall | color | blue square |")
    assert teacher.endswith("| 0.500 | 0.500 | 0.250 |") and student.endswith("| 0.400 | 0.500 | - |")
    assert retention.endswith("0.800")
    assert "blue square" not in format_report({"teacher": base})
