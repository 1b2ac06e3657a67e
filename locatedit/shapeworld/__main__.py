"""``python -m locatedit.shapeworld train ...``: train the embedded model (see ``train.py``)."""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from locatedit.runtime import configure_threads


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m locatedit.shapeworld", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train (or resume training) the ShapeWorld model, stage by stage")
    train.add_argument("--work", type=Path, default=Path("data/train"), help="checkpoints, logs and curves")
    train.add_argument("--out", type=Path, default=Path("data/models/shapeworld"), help="exported model folder")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--n-images", type=int, default=None)
    for stage in ("vae", "clip", "unet", "grounding", "ip"):
        train.add_argument(f"--{stage}-steps", type=int, default=None)
    train.add_argument("--smoke", action="store_true", help="a tiny run (a few steps per stage) to check the code")
    args = parser.parse_args(argv)

    threads = configure_threads()
    import torch

    torch.set_num_threads(threads)
    from .train import TrainConfig, train as run_training

    cfg = TrainConfig(work=args.work, out=args.out, seed=args.seed)
    if args.smoke:
        cfg = dataclasses.replace(cfg.scaled(0.004), n_images=256, clip_batch=32, unet_batch=8, vae_batch=8, ip_batch=8)
    if args.n_images:
        cfg.n_images = args.n_images
    for stage in ("vae", "clip", "unet", "grounding", "ip"):
        if (steps := getattr(args, f"{stage}_steps")) is not None:
            setattr(cfg, f"{stage}_steps", steps)
    out = run_training(cfg)
    print(f"model written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
