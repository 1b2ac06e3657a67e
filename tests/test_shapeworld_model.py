"""The trained embedded model: loads offline by name, generates, its attention finds objects, and LOCATEdit edits
with it stay where the ground truth says they should (issue 4's end-to-end checks, on a few fixed seeds).

Two levels: the default run holds the committed model to what it measurably does (regression guards: earlier models
fail them) and to issue 4's goals over 20 images, which it meets; the `gates` tests hold every edit to them on its own,
which small objects do not meet (benchmarks/results/bench_shapeworld_summary.md); `pytest -m gates` runs those."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from analysis.metrics import mask_iou, region_colour, resize_mask, true_background_psnr
from locatedit.attention import CROSS, layer_resolutions
from locatedit.loading import SHAPEWORLD_DIR, load_model
from locatedit.pipeline import EditParams, locatedit_edit
from locatedit.shapeworld.world import render, sample_edit, sample_scene

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def model():
    return load_model("shapeworld", device="cpu")


def test_loads_offline_by_name_within_the_size_budget(model):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    assert model.spec.graph_resolution == 16 and model.spec.mask_resolution == 8
    total = sum(f.stat().st_size for f in SHAPEWORLD_DIR.rglob("*") if f.is_file())
    assert total <= 50 * 2**20
    assert not list(SHAPEWORLD_DIR.rglob("*.bin")) and not list(SHAPEWORLD_DIR.rglob("*.pt"))  # safetensors only


def test_generate_command_writes_image_and_attention_maps(tmp_path):
    out = tmp_path / "img.png"
    cmd = [sys.executable, "-m", "locatedit", "generate", "--prompt", "a red circle on a blue background",
           "--seed", "1", "--steps", "20", "--out", str(out), "--attention"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    maps = np.load(tmp_path / "img_attention.npz")
    assert list(maps["tokens"]) == "a red circle on a blue background".split()
    assert maps["res8"].shape == (7, 8, 8) and maps["res16"].shape == (7, 16, 16)


class Catcher:
    def __init__(self, resolutions):
        self.resolutions, self.maps = resolutions, []

    def wants(self, layer, kind, query_len):
        return kind == CROSS and self.resolutions[layer] == 8

    def __call__(self, layer, kind, probs):
        self.maps.append(probs.mean(1))
        return probs


@torch.no_grad()
def object_word_iou(model, t: int, n: int = 16) -> float:
    """Real scenes noised to t: the shape word's 8x8 cross-attention, thresholded like the blend mask, vs the truth."""
    pipe = model.pipe
    rng = np.random.default_rng(77)
    scenes = [sample_scene(rng, n_objects=1) for _ in range(n)]
    images = np.stack([render(s)[0] for s in scenes])
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    latents = pipe.vae.encode(x).latent_dist.mean * pipe.vae.config.scaling_factor
    steps = torch.full((n,), t)
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(0))
    noisy = pipe.scheduler.add_noise(latents, noise, steps)
    ids = pipe.tokenizer([s.caption for s in scenes], padding="max_length", return_tensors="pt").input_ids
    catcher = Catcher(layer_resolutions(pipe.unet))
    pipe.unet(noisy, steps, pipe.text_encoder(ids)[0], added_cond_kwargs={"image_embeds": [torch.zeros(n, 1, 64)]},
              cross_attention_kwargs={"controller": catcher})
    cross = torch.stack(catcher.maps).mean(0).numpy()
    ious = []
    for b, scene in enumerate(scenes):
        m = cross[b, :, 1 + scene.caption.split().index(scene.objects[0].shape)].reshape(8, 8)
        pred = resize_mask((m - m.min()) / (np.ptp(m) + 1e-8) > 0.2204, 64)
        ious.append(mask_iou(pred, render(scene)[1][0]))
    return float(np.mean(ious))


def test_object_word_attention_meets_the_gate(model):
    """Issue 3's goal: mean IoU >= 0.5 over t = 200, 500, 800 (measured 0.68 / 0.61 / 0.42, mean 0.57; before the
    coverage stage 0.42, before grounding 0.17)."""
    assert np.mean([object_word_iou(model, t) for t in (200, 500, 800)]) >= 0.5


def colour_edit(model, seed: int):
    edit = sample_edit(np.random.default_rng(seed), "change_colour")
    source, target, truth = edit.render()
    result = locatedit_edit(model, source, edit.source_prompt, edit.target_prompt, edit.blend_words, EditParams())
    edited = np.asarray(result.edited)
    mask = resize_mask(result.arrays["mask"][-1, 1], 64)
    return source, target, truth, edited, mask


@pytest.fixture(scope="module")
def twenty_colour_edits(model) -> dict[int, tuple[bool, float, float]]:
    """Scene seeds 0-19, one colour edit each: (target colour hit inside the truth, true background PSNR, mask IoU)."""
    rows = {}
    for seed in range(20):
        source, target, truth, edited, mask = colour_edit(model, seed)
        rows[seed] = (region_colour(edited, truth) == region_colour(target, truth),
                      true_background_psnr(source, edited, truth, dilate=2), mask_iou(mask, truth))
    return rows


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_colour_edit_stays_on_the_object_and_keeps_the_background(twenty_colour_edits, seed):
    """Guard: the object takes the target colour (all three seeds; the model before binding missed seed 2), the
    background outside the dilated truth is kept (measured 32-41 dB) and the mask sits on the object (IoU 0.59 / 0.42
    / 0.51 on these seeds; the model before grounding had 0.16 and 22 dB)."""
    hit, background, iou = twenty_colour_edits[seed]
    assert hit, "the object did not take the target colour"
    assert background >= 30.0
    assert iou >= 0.38


def test_colour_edits_meet_the_pipeline_goals_over_twenty_scenes(twenty_colour_edits):
    """Issue 4's goals over 20 generated colour edits (scene seeds 0-19): the object takes the target colour inside
    the truth, the background outside the dilated truth keeps >= 30 dB, the mask's IoU with the truth >= 0.5, each as
    a mean (hit rate for the colour). Measured: hit 0.90, 38.9 dB, IoU 0.540; all three in the same edit only 10 of
    20 (see the line printed with -s; the misses are mostly objects under 6 cells of the 8x8 cross-attention grid:
    benchmarks/results/bench_shapeworld_summary.md splits each miss into grid, threshold and attention)."""
    hit, background, iou = (np.array(column, dtype=float) for column in zip(*twenty_colour_edits.values()))
    every = (hit == 1) & (background >= 30) & (iou >= 0.5)
    print(f"colour hit {hit.mean():.2f}, true background {background.mean():.1f} dB, mask IoU {iou.mean():.3f}, "
          f"all three goals in {every.sum()} of 20 (seeds {np.flatnonzero(~every).tolist()} miss one)")
    assert hit.mean() >= 0.9 and background.mean() >= 30.0 and iou.mean() >= 0.5


@pytest.mark.gates
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_colour_edit_meets_the_pipeline_goals(model, seed):
    """A stricter bar than issue 4's goals over 20 images: every edit on its own (seeds 0 and 2 meet it; seed 1's mask
    IoU is 0.42: its star covers 113 pixels, 1.8 cells of the 8x8 cross-attention grid; the best mask on the 16x16
    graph grid would reach 0.67 and the run's summed map at its best threshold 0.54, so the attention's shape, not
    the threshold, loses most of it)."""
    source, target, truth, edited, mask = colour_edit(model, seed)
    assert region_colour(edited, truth) == region_colour(target, truth), "the object did not take the target colour"
    assert true_background_psnr(source, edited, truth, dilate=2) >= 30.0
    assert mask_iou(mask, truth) >= 0.5
