"""Shapes world: grammar round trip, seeded rendering, held-out split."""

import numpy as np
import pytest

from diffsynth_l2p.tiny_world.shapes import (
    CATEGORIES,
    COLORS,
    HELD_OUT_PAIRS,
    IMAGE_SIZE,
    Scene,
    ShapeSpec,
    all_scenes,
    evaluation_scenes,
    parse_caption,
    place_scene,
    render_scene,
    sample_dataset,
    sample_scene,
    training_captions,
)


def test_every_caption_parses_back_to_its_scene():
    scenes = list(all_scenes())
    assert {scene.category for scene in scenes} == set(CATEGORIES)
    for scene in scenes:
        assert parse_caption(scene.caption) == scene


def test_caption_examples_and_articles():
    assert parse_caption("two blue circles") == Scene("count", (ShapeSpec("blue", "circle"),) * 2, count=2)
    relation = parse_caption("A red square left of a yellow circle.")
    assert relation.relation == "left of"
    assert relation.pairs() == [("red", "square"), ("yellow", "circle")]
    assert Scene("position", (ShapeSpec("blue", "square", position="top"),)).caption == "a blue square on the top"
    assert Scene("single", (ShapeSpec("green", "triangle"),)).caption == "a green triangle"
    with pytest.raises(ValueError, match="not a shapes-world caption"):
        parse_caption("a dog on a beach")


def test_rendering_is_seeded_and_uses_the_palette():
    scene = Scene("relation", (ShapeSpec("red", "square"), ShapeSpec("blue", "circle")), relation="above")
    first = np.asarray(render_scene(scene, np.random.default_rng(3)))
    again = np.asarray(render_scene(scene, np.random.default_rng(3)))
    other = np.asarray(render_scene(scene, np.random.default_rng(4)))
    assert first.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    colors = {tuple(pixel) for pixel in first.reshape(-1, 3)}
    assert colors == {(255, 255, 255), COLORS["red"], COLORS["blue"]}


def test_placements_realise_the_scene():
    rng = np.random.default_rng(0)
    for _ in range(300):
        scene = sample_scene(rng, allow_held_out=True)
        placed = place_scene(scene, rng)
        assert len(placed) == len(scene.objects)
        for item in placed:
            left, top, right, bottom = item.box
            assert 0 <= left and 0 <= top and right < IMAGE_SIZE and bottom < IMAGE_SIZE
        if scene.relation in ("left of", "right of"):
            first, second = placed
            assert (first.x < second.x) == (scene.relation == "left of")
        if scene.relation in ("above", "below"):
            first, second = placed
            assert (first.y < second.y) == (scene.relation == "above")


def test_held_out_pairs_never_reach_training_data():
    for caption in training_captions():
        assert not parse_caption(caption).is_held_out()
    captions = [caption for _, caption in sample_dataset(500, seed=1)]
    assert not any(parse_caption(caption).is_held_out() for caption in captions)
    assert len(set(captions)) > 100


def test_evaluation_set_is_fixed_and_entirely_held_out():
    scenes = evaluation_scenes()
    assert scenes == evaluation_scenes()
    assert len(scenes) == 48
    relations = [scene for scene in scenes if scene.category == "relation"]
    assert all(scene.objects[0].color != scene.objects[1].color for scene in relations)
    # Every scene has exactly one held-out object; relations hold it first and second equally often.
    assert all(sum(pair in HELD_OUT_PAIRS for pair in set(scene.pairs())) == 1 for scene in scenes)
    assert sum(scene.pairs()[0] in HELD_OUT_PAIRS for scene in relations) == len(relations) // 2
    assert {scene.category for scene in scenes} == set(CATEGORIES)
    assert all(not parse_caption(caption).is_held_out() for caption in training_captions())
    assert not {scene.caption for scene in scenes} & set(training_captions())


def test_codec_images_never_show_a_held_out_pair():
    from diffsynth_l2p.tiny_world.shape_eval import detect_objects
    from diffsynth_l2p.tiny_world.shapes import sample_codec_images

    images = list(sample_codec_images(300, seed=0))
    assert images[0].size == (IMAGE_SIZE, IMAGE_SIZE)
    assert len({tuple(np.asarray(image)[32, 32]) for image in images}) > 20  # free colors, not the palette
    for image in images:  # the detector reads palette colors; a held-out pair must never appear
        assert not any((found.color, found.shape) in HELD_OUT_PAIRS for found in detect_objects(image))
