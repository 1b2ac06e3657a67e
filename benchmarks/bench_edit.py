"""Seconds per LOCATEdit edit by stage, peak memory, and the share of time in the CASA solves (issue 4).

    python benchmarks/bench_edit.py                    # embedded ShapeWorld model on CPU, 5 edits
    python benchmarks/bench_edit.py --sd15-random      # SD 1.5-sized random-weight model at 512 px (CUDA)

Architecture, not weights, sets time and memory, so the SD 1.5 row uses random weights with SD 1.5's UNet, VAE and
text-encoder configs (ViT-H-sized embeddings for IP-Adapter). Goals: a 50-step ShapeWorld edit in < 10 s on 2 CPU
cores with the CASA solves under 5 % of it.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from locatedit.runtime import configure_threads  # noqa: E402

THREADS = configure_threads()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from locatedit.loading import load_model  # noqa: E402
from locatedit.pipeline import EditParams, locatedit_edit  # noqa: E402
from locatedit.shapeworld.world import sample_edit  # noqa: E402


def build_random_sd15(out: Path) -> Path:
    """A random-weight model with SD 1.5's architecture in the local model layout (512 px, S 32x32, m0 16x16)."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel, CLIPVisionConfig

    from locatedit.shapeworld.models import make_scheduler, new_ip_adapter_state_dict, vision_tower
    from locatedit.shapeworld.tokenizer import build_tokenizer
    from safetensors.torch import save_file

    tokenizer = build_tokenizer()
    tokenizer.model_max_length = 77
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8,
                                block_out_channels=(320, 640, 1280, 1280), layers_per_block=2)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        sample_size=512, scaling_factor=0.18215)
    text = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                          num_attention_heads=12, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                          pad_token_id=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=CLIPTextModel(text), tokenizer=tokenizer, unet=unet,
                                   scheduler=make_scheduler(), safety_checker=None, feature_extractor=None,
                                   image_encoder=None, requires_safety_checker=False)
    pipe.save_pretrained(out)
    small = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4)
    clip = CLIPModel(CLIPConfig(text_config={**text.to_dict(), **small},
                                vision_config=CLIPVisionConfig(image_size=224, patch_size=32, **small).to_dict(),
                                projection_dim=1024))
    clip.save_pretrained(out / "clip")
    tokenizer.save_pretrained(out / "clip")
    vision_tower(clip).save_pretrained(out / "ip_adapter" / "image_encoder")
    ip = new_ip_adapter_state_dict(unet, 1024)
    flat = {f"image_proj.{k}": v for k, v in ip["image_proj"].items()}
    flat |= {f"ip_adapter.{k}": v for k, v in ip["ip_adapter"].items()}
    save_file({k: v.contiguous() for k, v in flat.items()}, out / "ip_adapter" / "ip-adapter_shapeworld.safetensors")
    info = {"name": "sd15-random", "image_size": 512, "graph_resolution": 32, "mask_resolution": 16}
    (out / "locatedit.json").write_text(json.dumps(info))
    return out


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapeworld")
    parser.add_argument("--edits", type=int, default=5)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--sd15-random", action="store_true", help="SD 1.5-sized random model (CUDA unless --cpu)")
    parser.add_argument("--cpu", action="store_true", help="allow the SD 1.5-sized run on CPU (slow; use few steps)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.sd15_random:
        if device == "cpu" and not args.cpu:
            print("the SD 1.5-sized run needs CUDA (or --cpu with a few --steps); skipped")
            return 0
        tmp = Path(tempfile.mkdtemp())
        model_path = str(build_random_sd15(tmp / "sd15-random"))
        dtype = torch.float16 if device == "cuda" else torch.float32
    else:
        model_path, dtype = args.model, None
    tick = time.perf_counter()
    model = load_model(model_path, device=device, dtype=dtype)
    load_seconds = time.perf_counter() - tick
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    rows = []
    rng = np.random.default_rng(0)
    kinds = ("change_colour", "change_shape", "change_texture", "change_background", "add_object")
    for k in range(args.edits + 1):  # the first edit warms caches and is not counted
        edit = sample_edit(rng, kinds[k % len(kinds)])
        image = Image.fromarray(edit.render()[0])
        result = locatedit_edit(model, image, edit.source_prompt, edit.target_prompt, edit.blend_words,
                                EditParams(steps=args.steps))
        if k:
            rows.append(result.timings)
    mean = {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}
    share = mean["casa"] / mean["total"]
    report = {
        "model": model.spec.name, "device": device, "threads": THREADS, "steps": args.steps, "edits": len(rows),
        "load_s": load_seconds, **{f"{k}_s": v for k, v in mean.items()}, "casa_share": share,
        "peak_rss_mb": peak_rss_mb(),
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None,
        "load_average": list(__import__("os").getloadavg()),
    }
    print("| stage | seconds (mean of %d edits) |\n|---|---|" % len(rows))
    for key in ("encode", "unet", "casa", "decode", "total"):
        print(f"| {key} | {mean[key]:.3f} |")
    print(f"load: {load_seconds:.2f} s; CASA share of the edit: {100 * share:.2f} %; peak RSS {report['peak_rss_mb']:.0f} MB"
          + (f"; peak GPU {report['peak_gpu_mb']:.0f} MB" if device == "cuda" else ""))
    print(f"threads={THREADS}, load average {report['load_average']}")
    print(f"goals: total < 10 s: {'yes' if mean['total'] < 10 else 'NO'}; CASA < 5 %: {'yes' if share < 0.05 else 'NO'}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
