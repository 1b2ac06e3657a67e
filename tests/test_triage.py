"""The goal tables of analysis.triage (benchmarks/triage_by_scene.py, the Benchmark page) on hand-made results."""
import pandas as pd

from analysis.triage import by_object_size, by_scene


def test_goals_are_counted_per_edit_method_and_scene_kind():
    mapping = {"000000000001": {"original_prompt": "a red [circle] on a blue background"},
               "000000000002": {"original_prompt": "a red [circle] and a black star on a blue background"},
               "000000000003": {"original_prompt": "a red [circle] and a black star on a blue background"},
               "000000000004": {"original_prompt": "a [blue] background"}}
    results = pd.DataFrame({
        "key": ["1", "2", "3", "4"], "method": "locatedit", "editing_type_id": [6, 6, 6, 8],
        "mask_iou_gt": [0.7, 0.6, 0.49, 0.9], "bg_psnr_true": [40.0, 29.0, 35.0, 12.0],
        "region_colour_match": [1.0, 1.0, 1.0, 1.0], "fail_target_word_spill": [False, True, False, False]})
    table = by_scene(results, mapping)
    assert list(table.index) == [("change_colour", "locatedit", 1), ("change_colour", "locatedit", 2)]  # type 8 out
    one, two = table.loc[("change_colour", "locatedit", 1)], table.loc[("change_colour", "locatedit", 2)]
    assert (one["goals_met"], one["items"]) == (1, 1)
    assert (two["goals_met"], two["items"], two["spill"]) == (0, 2, 0.5)  # 29 dB background; IoU 0.49


def test_goals_are_counted_per_object_size_in_attention_cells():
    results = pd.DataFrame({
        "key": ["1", "2", "3", "4", "5"], "method": "locatedit", "editing_type_id": [6, 6, 6, 6, 8],
        "mask_iou_gt": [0.4, 0.55, 0.7, 0.8, 0.9], "bg_psnr_true": [40.0, 35.0, 35.0, 31.0, 12.0],
        "region_colour_match": [1.0, 1.0, 1.0, 0.0, 1.0], "fail_target_word_spill": False,
        "object_m0_cells": [1.8, 2.99, 3.0, 12.0, 20.0], "mask_iou_grid_ceiling": [0.6, 0.7, 0.8, 0.9, 1.0]})
    table = by_object_size(results)
    assert [size for _, _, size in table.index] == ["under 3 cells", "3 to 6 cells", "6 cells or more"]
    small = table.loc[("change_colour", "locatedit", "under 3 cells")]
    large = table.loc[("change_colour", "locatedit", "6 cells or more")]
    assert (small["goals_met"], small["items"], small["grid_ceiling"]) == (1, 2, 0.65)
    assert (large["goals_met"], large["items"]) == (0, 1)  # the colour missed; the background change (type 8) is out
