"""ShapeWorld's generator, tokenizer and PIE-Bench export: determinism, grammar, masks and round trips."""
import json

import numpy as np
import pytest

from locatedit.piebench import bracket_diff, load_mapping, rle_decode, rle_encode, strip_brackets
from locatedit.shapeworld.tokenizer import UnknownWordError, build_tokenizer, check_prompt
from locatedit.shapeworld.world import (
    COLOURS,
    EDIT_TYPES,
    VOCABULARY,
    Scene,
    ShapeObject,
    export_piebench,
    render,
    sample_edit,
    sample_edits,
    sample_scene,
)


def test_same_seed_same_scenes_and_pixels():
    a = [sample_scene(np.random.default_rng(7)) for _ in range(3)]
    b = [sample_scene(np.random.default_rng(7)) for _ in range(3)]
    assert a == b
    assert np.array_equal(render(a[0])[0], render(b[0])[0])


def test_captions_use_only_the_vocabulary_and_name_every_object():
    rng = np.random.default_rng(0)
    for _ in range(200):
        scene = sample_scene(rng)
        words = scene.caption.split()
        assert set(words) <= set(VOCABULARY)
        for obj in scene.objects:
            assert obj.shape in words and obj.colour in words
        assert scene.background != scene.objects[0].colour
        assert len({o.shape for o in scene.objects}) == len(scene.objects)


def test_word_owners_name_the_object_or_background_each_word_describes():
    scene = Scene(
        (ShapeObject("circle", "red", "dotted", 0.15, 0.3, 0.3), ShapeObject("star", "blue", None, 0.15, 0.7, 0.7)),
        "white",
        "striped",
    )
    assert scene.caption == "a red dotted circle and a blue star on a white striped background"
    assert scene.word_owners() == [None, 0, 0, 0, None, None, 1, 1, None, None, -1, -1, -1]
    rng = np.random.default_rng(1)
    for _ in range(50):
        scene = sample_scene(rng)
        owners = scene.word_owners()
        assert len(owners) == len(scene.caption.split())
        for word, owner in zip(scene.caption.split(), owners):
            assert (owner is None) == (word in ("a", "and", "on"))


def test_object_mask_holds_the_object_colour_and_background_holds_its_own():
    scene = Scene((ShapeObject("square", "red", radius=0.25, cx=0.5, cy=0.5),), "blue")
    image, (mask,) = render(scene)
    assert 0.08 < mask.mean() < 0.3  # side 0.23*sqrt(2) of the image: about 0.1 of its area
    inner = image[mask].astype(float).mean(0)
    outer = image[~mask].astype(float).mean(0)
    assert np.abs(inner - COLOURS["red"]).max() < 25
    assert np.abs(outer - COLOURS["blue"]).max() < 25


def test_two_object_masks_do_not_overlap():
    rng = np.random.default_rng(1)
    for _ in range(50):
        _, masks = render(sample_scene(rng, n_objects=2))
        assert not (masks[0] & masks[1]).any()


@pytest.mark.parametrize("edit_type", sorted(EDIT_TYPES))
def test_edit_ground_truth_mask_covers_exactly_where_the_renders_differ(edit_type):
    rng = np.random.default_rng(3)
    for _ in range(10):
        edit = sample_edit(rng, edit_type)
        src, tgt, mask = edit.render()
        changed = np.abs(src.astype(int) - tgt.astype(int)).max(-1) > 40
        # Nearly every strongly changed pixel lies in the mask (anti-aliased rims may fall just outside) ...
        assert (changed & ~mask).sum() <= 0.02 * changed.size + 0.15 * changed.sum()
        assert set(edit.target_prompt.split()) <= set(VOCABULARY)
        assert edit.source_word in edit.source_prompt.split() or edit_type == "add_object"
        assert edit.target_word in edit.target_prompt.split() or edit_type == "remove_object"
        assert mask.any()


def test_tokenizer_maps_every_word_to_one_token_and_round_trips(tmp_path):
    tok = build_tokenizer()
    for word in VOCABULARY:
        ids = tok(word).input_ids
        assert len(ids) == 3, (word, tok.convert_ids_to_tokens(ids))
        assert tok.convert_ids_to_tokens(ids)[1] == word + "</w>"
    tok.save_pretrained(tmp_path)
    from transformers import CLIPTokenizer

    again = CLIPTokenizer.from_pretrained(tmp_path)
    prompt = "a orange striped star and a red circle on a blue checkered background"
    assert again(prompt).input_ids == tok(prompt).input_ids


def test_unknown_words_get_an_error_listing_the_vocabulary():
    with pytest.raises(UnknownWordError, match="vocabulary is:.*circle"):
        check_prompt("a red dog on a blue background")
    assert check_prompt("A red circle on a blue background")[2] == "circle"


def test_rle_round_trip_and_reference_clipping():
    rng = np.random.default_rng(0)
    mask = rng.random((64, 64)) > 0.7
    assert np.array_equal(rle_decode(rle_encode(mask), (64, 64)), mask)
    assert rle_decode([10, 10**6], (8, 8)).sum() == 54  # a run past the end is clipped, not an error
    with pytest.raises(ValueError, match="pairs"):
        rle_decode([1, 2, 3], (8, 8))


def test_bracket_diff_marks_changed_words_and_strips_back():
    src, tgt = bracket_diff("a red circle on a blue background", "a red square on a blue background")
    assert src == "a red [circle] on a blue background" and tgt == "a red [square] on a blue background"
    assert strip_brackets(tgt) == "a red square on a blue background"


def test_piebench_export_loads_back_with_matching_masks(tmp_path):
    edits = sample_edits(seed=5, per_type=1)
    export_piebench(edits, tmp_path)
    items = load_mapping(tmp_path)
    assert len(items) == len(edits)
    raw = json.loads((tmp_path / "mapping_file.json").read_text())
    assert {v["editing_type_id"] for v in raw.values()} == set(EDIT_TYPES.values())
    for item, edit in zip(items, edits):
        assert item.image_path.exists() and item.target_image_path.exists()
        assert item.source_prompt == edit.source_prompt and item.target_prompt == edit.target_prompt
        assert item.blend_words == (edit.source_word, edit.target_word)
        assert np.array_equal(item.mask((64, 64)), edit.render()[2])


def test_load_mapping_on_a_folder_that_is_not_a_benchmark(tmp_path):
    with pytest.raises(FileNotFoundError, match="mapping_file.json"):
        load_mapping(tmp_path)
