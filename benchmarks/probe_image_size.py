"""The embedded model's weights run at another image size, without retraining: does a finer attention grid help?

    LOCATEDIT_THREADS=2 python benchmarks/probe_image_size.py --size 128

The ShapeWorld model was trained at 64 px (16x16 latent: S at 16x16, m0 at 8x8), and small objects lose their mask
IoU on that grid (benchmarks/results/bench_shapeworld_summary.md). Its VAE and UNet are convolutional with global
attention, so they run at 128 px as they are (32x32 latent: S at 32x32, m0 at 16x16). This script edits the same 20
generated colour scenes as the test suite (scene seeds 0-19, rendered at --size) and reports, per scene and in all,
the target colour hit, the true background PSNR (outside the truth dilated by the same share of the image), the mask
IoU, the reconstruction's PSNR (the source branch: how well the VAE keeps the image at this size) and seconds; then
the object word's cross-attention IoU at m0's resolution and the self-attention purity (issue 3's attention gate,
``bench_shapeworld.gate_attention``) on 16 one-object scenes at that size.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from locatedit.runtime import configure_threads  # noqa: E402

THREADS = configure_threads()

import numpy as np  # noqa: E402

from analysis.metrics import grid_mask_iou, psnr, region_colour, true_background_psnr  # noqa: E402
from bench_shapeworld import gate_attention  # noqa: E402
from locatedit.loading import load_model  # noqa: E402
from locatedit.pipeline import EditParams, locatedit_edit  # noqa: E402
from locatedit.shapeworld.world import IMAGE_SIZE, sample_edit, sample_scene  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128, help="image size to run at (a multiple of 64)")
    parser.add_argument("--scenes", type=int, default=20)
    args = parser.parse_args()
    model = load_model("shapeworld", device="cpu")
    factor = args.size // IMAGE_SIZE
    spec = dataclasses.replace(model.spec, image_size=args.size, graph_resolution=model.spec.graph_resolution * factor,
                               mask_resolution=model.spec.mask_resolution * factor)
    model = dataclasses.replace(model, spec=spec)
    rows = []
    for seed in range(args.scenes):
        edit = sample_edit(np.random.default_rng(seed), "change_colour")
        source, target, truth = edit.render(args.size)
        tick = time.perf_counter()
        result = locatedit_edit(model, source, edit.source_prompt, edit.target_prompt, edit.blend_words, EditParams())
        seconds = time.perf_counter() - tick
        edited = np.asarray(result.edited)
        rows.append({"seed": seed, "object_pixels_of_4096": round(float(truth.mean()) * 4096),
                     "colour_hit": region_colour(edited, truth) == region_colour(target, truth),
                     "true_bg_psnr": true_background_psnr(source, edited, truth, dilate=2 * factor),
                     "mask_iou": grid_mask_iou(result.arrays["mask"][-1, 1], truth),
                     "reconstruction_psnr": psnr(source / 255.0, np.asarray(result.reconstruction) / 255.0),
                     "seconds": seconds})
        print(rows[-1], flush=True)
    hit, bg, iou, rec, sec = (np.array([r[k] for r in rows], float) for k in
                              ("colour_hit", "true_bg_psnr", "mask_iou", "reconstruction_psnr", "seconds"))
    every = (hit == 1) & (bg >= 30) & (iou >= 0.5)
    print(f"size {args.size} ({THREADS} threads): colour hit {hit.mean():.2f}, true background {bg.mean():.1f} dB, "
          f"mask IoU {iou.mean():.3f} (>= 0.5 in {(iou >= 0.5).sum()}), reconstruction {rec.mean():.1f} dB, "
          f"all three goals in {every.sum()} of {len(rows)}, {sec.mean():.1f} s per edit")
    rng = np.random.default_rng(77)
    attention = gate_attention(model, [sample_scene(rng, n_objects=1) for _ in range(16)])["per_t"]
    for t, row in attention.items():
        print(f"t = {t}: object-word cross-attention IoU at {spec.mask_resolution}x{spec.mask_resolution} "
              f"{row['cross_iou']:.3f}, self-attention purity of object patches {row['self_purity_object']:.3f} "
              f"(a distance graph: {row['spatial_purity_object']:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
