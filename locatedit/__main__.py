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


def _edit(args: argparse.Namespace) -> int:
    from PIL import Image
    from tqdm import tqdm

    from .loading import load_model, resolve
    from .pipeline import locatedit_edit, read_image
    from .run import save_run

    params = _params(args)
    gt_mask = gt_target = None
    if args.shapeworld_edit:
        import numpy as np

        from .shapeworld.world import sample_edit

        edit = sample_edit(np.random.default_rng(args.scene_seed), args.shapeworld_edit)
        source, gt_target, gt_mask = edit.render()
        image, source_prompt, target_prompt = Image.fromarray(source), edit.source_prompt, edit.target_prompt
        blend = edit.blend_words
    else:
        if not (args.image and args.source_prompt and args.target_prompt):
            raise ValueError("give --image, --source-prompt and --target-prompt "
                             "(or --shapeworld-edit TYPE for a generated edit with ground truth)")
        image, source_prompt, target_prompt, blend = args.image, args.source_prompt, args.target_prompt, args.blend
    out = args.out
    if out is not None and out.exists():
        raise ValueError(f"{out} already exists; runs are never overwritten, pick a new --out")
    # Everything that can be checked without the weights fails here, before a model (minutes for SD 1.5) loads.
    image = read_image(image)
    spec = resolve(args.model)
    for prompt in (source_prompt, target_prompt):
        spec.check_prompt(prompt)
    model = load_model(args.model)
    bar = tqdm(total=params.steps, desc="denoising", unit="step")

    def progress(stage: str, i: int, n: int) -> None:
        if stage == "denoise":
            bar.update(1)

    result = locatedit_edit(model, image, source_prompt, target_prompt, blend, params, progress)
    bar.close()
    root, run_id = (out.parent, out.name) if out is not None else (Path("data/runs"), None)
    run = save_run(result, root, run_id=run_id, gt_mask=gt_mask, gt_target=gt_target)
    for warning in result.warnings:
        print(f"warning: {warning}")
    print(f"run saved: {run.path} (edited.png, mask.png; {result.timings['total']:.1f} s)")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from analysis.bench import collect, run_benchmark, write_config

    from .loading import load_model

    from accelerate import PartialState

    # Under `accelerate launch --multi_gpu` (or torchrun on CPU) every process gets its slice of the items.
    state = PartialState(cpu=not _cuda())
    shard = (state.process_index, state.num_processes)
    device = str(state.device)
    if shard[0] == 0:
        write_config(args.out, {"data": str(args.data), "methods": args.methods, "limit": args.limit,
                                "types": args.types, "model": args.model, "processes": shard[1]})
    model = load_model(args.model, device=device)
    bar = tqdm(desc=f"bench (process {shard[0] + 1}/{shard[1]})", unit="edit", position=shard[0])

    def progress(done: int, total: int, seconds: float) -> None:
        bar.total = total
        bar.update(done - bar.n)

    run_benchmark(model, args.data, args.out, args.methods, args.limit, args.types, base=_params(args),
                  progress=progress, state=state)
    bar.close()
    state.wait_for_everyone()
    if shard[0] == 0:
        table = collect(args.out)
        print((args.out / "summary.md").read_text())
        print(f"{len(table)} runs scored: {args.out}/results.csv, results.sqlite, summary.md")
    return 0


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _export(args: argparse.Namespace) -> int:
    from .shapeworld.world import export_piebench, sample_edits

    out = export_piebench(sample_edits(args.seed, args.per_type), args.out)
    print(f"wrote {6 * args.per_type} edits in PIE-Bench format to {out}")
    return 0


def _params(args: argparse.Namespace):
    import dataclasses

    from .pipeline import EditParams

    return EditParams(**{f.name: getattr(args, f.name) for f in dataclasses.fields(EditParams)})


def _add_param_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per EditParams field, named after it, with the reference default."""
    import dataclasses

    from .pipeline import EditParams

    group = parser.add_argument_group("hyperparameters (reference defaults)")
    defaults = EditParams()
    for f in dataclasses.fields(EditParams):
        value = getattr(defaults, f.name)
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            group.add_argument(flag, default=value, action=argparse.BooleanOptionalAction, help="default: %(default)s")
        elif value is None:
            group.add_argument(flag, type=int, default=None, help="default: %(default)s")
        else:
            group.add_argument(flag, type=type(value), default=value, choices=EditParams.CHOICES.get(f.name),
                               help="default: %(default)s")


MODEL_HELP = ("'shapeworld' (default: embedded, CPU), 'sd15', an SD 1.5 hub id (runwayml/stable-diffusion-v1-5) or "
              "diffusers folder, or a folder exported by `python -m locatedit.shapeworld train`")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m locatedit", description="LOCATEdit Lab command line")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="text to image, optionally with per-token cross-attention maps")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--model", default="shapeworld", help=MODEL_HELP)
    gen.add_argument("--seed", type=int, default=1)
    gen.add_argument("--steps", type=int, default=50)
    gen.add_argument("--guidance", type=float, default=5.0)
    gen.add_argument("--out", type=Path, default=Path("generated.png"))
    gen.add_argument("--attention", action="store_true", help="also save <out>_attention.npz and .png")
    gen.set_defaults(run=_generate)
    ed = sub.add_parser("edit", help="run a LOCATEdit edit and save it as a run directory")
    ed.add_argument("--image", help="source image file (centre-cropped to a square)")
    ed.add_argument("--source-prompt", help="what the image shows")
    ed.add_argument("--target-prompt", help="what it should show")
    ed.add_argument("--blend", help="blend words 'source_word target_word' (none: no mask and no blending)")
    ed.add_argument("--shapeworld-edit", choices=["change_shape", "change_colour", "change_texture",
                                                  "change_background", "add_object", "remove_object"],
                    help="instead of an image: a generated ShapeWorld edit, saved with its ground truth")
    ed.add_argument("--scene-seed", type=int, default=0, help="seed of the generated ShapeWorld edit")
    ed.add_argument("--model", default="shapeworld", help=MODEL_HELP)
    ed.add_argument("--out", type=Path, help="the run directory to create (default: data/runs/<new id>)")
    _add_param_flags(ed)
    ed.set_defaults(run=_edit)
    bench = sub.add_parser("bench", help="edit a PIE-Bench-format folder with several methods, resumable; "
                           "shards across GPUs under `accelerate launch --multi_gpu -m locatedit bench ...`")
    bench.add_argument("--data", type=Path, required=True, help="folder holding mapping_file.json")
    bench.add_argument("--out", type=Path, required=True, help="results folder (runs, results.csv, summary.md)")
    bench.add_argument("--methods", nargs="+", default=["locatedit"],
                       help="locatedit, no_laplacian, vimaedit_smoothing, p2p_localblend, no_pruning")
    bench.add_argument("--limit", type=int, help="first N items only")
    bench.add_argument("--types", nargs="+", help="editing type ids (0-9) or names")
    bench.add_argument("--model", default="shapeworld", help=MODEL_HELP)
    _add_param_flags(bench)
    bench.set_defaults(run=_bench)
    exp = sub.add_parser("export-shapeworld", help="write a ShapeWorld edit set in PIE-Bench's format")
    exp.add_argument("--out", type=Path, required=True)
    exp.add_argument("--per-type", type=int, default=20, help="edits per editing type (6 types)")
    exp.add_argument("--seed", type=int, default=100,
                     help="scene seed (default 100, the committed benchmark's; the training scenes come from seed 0)")
    exp.set_defaults(run=_export)
    args = parser.parse_args(argv)

    configure_threads()
    from .loading import ModelNotAvailableError
    from .run import RunError

    try:
        return args.run(args)
    except (ModelNotAvailableError, RunError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
