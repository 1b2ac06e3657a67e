"""``python -m locatedit.shapeworld train ...``: train the embedded model (see ``train.py``)."""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from locatedit.runtime import configure_threads

TRAINED_STAGES = ("vae", "clip", "unet", "grounding", "binding", "coverage", "polish", "ip")  # --<stage>-steps flags


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m locatedit.shapeworld", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train (or resume training) the ShapeWorld model, stage by stage")
    train.add_argument("--work", type=Path, default=Path("data/train"), help="checkpoints, logs and curves")
    train.add_argument("--out", type=Path, default=Path("data/models/shapeworld"), help="exported model folder")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--n-images", type=int, default=None)
    train.add_argument("--from-export", type=Path, default=None, metavar="MODEL_DIR",
                       help="start an empty --work folder from an exported model (the stages it was trained with "
                            "count as done) and train only the later stages")
    for stage in TRAINED_STAGES:
        train.add_argument(f"--{stage}-steps", type=int, default=None)
    train.add_argument("--offset-noise", type=float, default=None,
                       help="std of the per-channel noise offset in the binding and IP-Adapter stages (default 0.1)")
    train.add_argument("--no-binding-text-layers", action="store_true",
                       help="keep the text encoder's causal layer off in the binding stage (an ablation)")
    train.add_argument("--smoke", action="store_true", help="a tiny run (a few steps per stage) to check the code")
    args = parser.parse_args(argv)

    threads = configure_threads()
    import torch

    torch.set_num_threads(threads)
    from .train import TrainConfig, import_export, train as run_training

    cfg = TrainConfig(work=args.work, out=args.out, seed=args.seed)
    if args.smoke:
        cfg = dataclasses.replace(cfg.scaled(0.004), n_images=256, clip_batch=32, unet_batch=8, vae_batch=8, ip_batch=8)
    if args.n_images:
        cfg.n_images = args.n_images
    for stage in TRAINED_STAGES:
        if (steps := getattr(args, f"{stage}_steps")) is not None:
            setattr(cfg, f"{stage}_steps", steps)
    if args.from_export is not None:
        try:
            imported = import_export(cfg, args.from_export)
        except (OSError, ValueError) as error:
            parser.error(f"--from-export: {error}")
        print(f"imported stages {', '.join(imported)} from {args.from_export}")
    if args.offset_noise is not None:
        cfg.offset_noise = args.offset_noise
    cfg.binding_text_layers = not args.no_binding_text_layers
    out = run_training(cfg)
    print(f"model written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
