"""Command line: ``python -m locatedit generate | export-shapeworld ...``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from locatedit.runtime import configure_threads


def _generate(args: argparse.Namespace) -> int:
    import numpy as np

    from .generate import attention_sheet, generate
    from .loading import load_model

    model = load_model(args.model)
    gen = generate(model, args.prompt, seed=args.seed, steps=args.steps, guidance=args.guidance)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    gen.image.save(args.out)
    print(f"image: {args.out}")
    if args.attention:
        stem = args.out.with_suffix("")
        np.savez(f"{stem}_attention.npz", tokens=np.array(gen.tokens), **{f"res{r}": m for r, m in gen.maps.items()})
        attention_sheet(gen).save(f"{stem}_attention.png")
        print(f"attention maps: {stem}_attention.npz, {stem}_attention.png (tokens: {' '.join(gen.tokens)})")
    return 0


def _export(args: argparse.Namespace) -> int:
    from .shapeworld.world import export_piebench, sample_edits

    out = export_piebench(sample_edits(args.seed, args.per_type), args.out)
    print(f"wrote {6 * args.per_type} edits in PIE-Bench format to {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m locatedit", description="LOCATEdit Lab command line")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="text to image, optionally with per-token cross-attention maps")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--model", default="shapeworld", help="'shapeworld' (default, CPU), 'sd15', or a model folder")
    gen.add_argument("--seed", type=int, default=1)
    gen.add_argument("--steps", type=int, default=50)
    gen.add_argument("--guidance", type=float, default=5.0)
    gen.add_argument("--out", type=Path, default=Path("generated.png"))
    gen.add_argument("--attention", action="store_true", help="also save <out>_attention.npz and .png")
    gen.set_defaults(run=_generate)
    exp = sub.add_parser("export-shapeworld", help="write a ShapeWorld edit set in PIE-Bench's format")
    exp.add_argument("--out", type=Path, required=True)
    exp.add_argument("--per-type", type=int, default=20, help="edits per editing type (6 types)")
    exp.add_argument("--seed", type=int, default=0)
    exp.set_defaults(run=_export)
    args = parser.parse_args(argv)

    configure_threads()
    from .loading import ModelNotAvailableError
    from .shapeworld.tokenizer import UnknownWordError

    try:
        return args.run(args)
    except (ModelNotAvailableError, UnknownWordError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
