"""A LOCATEdit edit on a loaded diffusers pipeline, step by step as the reference code runs it (§A.13).

    x_T = add_noise(x_0, z, t_0)                      one start for both branches ("virtual inversion")
    for i, t in enumerate(timesteps):
        eps = unet([x_s, x_t, x_s, x_t], t, ["", "", P_s, P_t], IP [0, v, 0, v_edit])   P2P control + recording
        if i >= start: m* = refine(m0, S); Map += m*; M_blend = minmax(Map) > 0.2204
        eps_s, eps_t = CFG(1.0), CFG(5.0)
        x = edit_step(eps, x, x_0, noise once a mask exists)   source x0-prediction forced to x_0
        if M_blend: x_t = x_s + M_blend (x_t - x_s)             latent blending, target mask = source | target
Every hyperparameter is a field of ``EditParams`` with the reference default; the variants the lab compares
(lambda = 0, ViMAEdit smoothing, P2P LocalBlend masks, no pruning, maps before P2P, masked noise, any solver) are
switches of the same loop.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler
from PIL import Image

from . import graph
from .attention import layer_resolutions
from .embeddings import image_features, prune_offset, text_features
from .loading import LoadedModel
from .p2p import BlendWordError, ControlConfig, LocatEditController, new_word_indices, refinement_mapper, word_token_indices

MAX_IMAGE_PIXELS = 40_000_000


@dataclass
class EditParams:
    """Every knob of an edit; defaults are the reference benchmark script's (§b). The text-valued knobs take one of
    ``EditParams.CHOICES`` (the CLI and the Edit page offer exactly these)."""

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "solver": tuple(sorted(graph.SOLVERS)),
        "mask_source": ("casa", "localblend"),
        "target_mask": ("union", "source"),
        "noise": ("uniform", "masked"),
        "store_self_attention": ("mean", "per_step"),
    }

    steps: int = 50
    source_guidance: float = 1.0
    target_guidance: float = 5.0
    seed: int = 1234
    ip_scale: float = 0.522871620472319
    keep_percent: float = 91.0935948657488  # tau: % of CLIP offset coordinates kept (100 = no pruning)
    use_offset: bool = True  # False: v_edit = v (no text offset at all)
    lam: float = graph.LAM
    alpha: float = graph.ALPHA
    center: float = graph.CENTER
    solver: str = graph.DEFAULT_SOLVER  # "vimaedit" gives ViMAEdit's smoothing in place of the closed form
    solver_rtol: float = 1e-5
    topk: int | None = None
    warm_start: bool = True
    mask_source: str = "casa"  # "casa" (graph-refined, summed over steps) or "localblend" (P2P LocalBlend)
    # Where the target row blends: "union" of the source and target words' masks (the reference) or the "source"
    # word's mask alone (keeps a target word's map off other objects that already look like the target; an ablation,
    # and no use for adding an object, whose word is new).
    target_mask: str = "union"
    blend_threshold: float = 0.2204
    noise_threshold: float = 0.5
    localblend_threshold: float = 0.3
    start_blend: float = 0.2
    self_replace: float = 0.6
    cross_replace: float = 0.4
    ip_replace: float = 0.1
    equalizer: float = 15.0
    maps_after_p2p: bool = True
    noise: str = "uniform"  # "uniform" (LOCATEdit: on/off switch) or "masked" (ViMAEdit: sigma * mask)
    eta: float = 1.0
    clip_sample: bool = True  # clamp x0-predictions to the model's latent range (reference: [-1, 1] for SD 1.5)
    store_self_attention: str = "mean"  # "mean" over solve steps, or "per_step" (exact re-solves later)

    def __post_init__(self) -> None:
        checks = [
            *((getattr(self, name) in options, f"{name} must be one of {', '.join(options)}, not '{getattr(self, name)}'")
              for name, options in self.CHOICES.items()),
            (self.steps >= 2, "steps must be at least 2"),
            (0 <= self.keep_percent <= 100, "keep_percent (tau) must lie in [0, 100]"),
            (self.lam >= 0, "lam (λ) must be non-negative"),
            (0 <= self.start_blend < 1, "start_blend must lie in [0, 1)"),
            (self.steps <= 1000, "steps must be at most 1000 (the noise schedule has 1000 timesteps)"),
            (0 <= self.source_guidance <= 50 and 0 <= self.target_guidance <= 50, "guidance scales must lie in [0, 50]"),
            (0 <= self.ip_scale <= 5, "ip_scale must lie in [0, 5]"),
            (self.alpha > 0, "alpha (α) must be positive"),
            (all(0 <= v <= 1 for v in (self.blend_threshold, self.noise_threshold, self.localblend_threshold,
                                       self.self_replace, self.cross_replace, self.ip_replace, self.center)),
             "thresholds, replace fractions and the sigmoid centre must lie in [0, 1]"),
            (self.equalizer > 0, "equalizer must be positive"),
            (0 <= self.eta <= 1, "eta must lie in [0, 1]"),
            (self.solver_rtol > 0, "solver_rtol must be positive"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def start_step(self) -> int:
        """First step with a mask: the reference solves once its counter (i + 1) reaches int(0.2 * 50)."""
        return max(0, int(self.start_blend * self.steps) - 1)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class EditResult:
    """Everything an edit produced, in memory; ``locatedit.run.save_run`` writes it as a Run directory."""

    params: EditParams
    model: str
    source_prompt: str
    target_prompt: str
    blend_words: tuple[str, str] | None
    source_image: Image.Image
    reconstruction: Image.Image
    edited: Image.Image
    arrays: dict[str, np.ndarray]
    tokens: dict[str, list[str]]
    timings: dict[str, float]
    warnings: list[str] = field(default_factory=list)
    layers: dict[str, list[str]] = field(default_factory=dict)  # names of the recorded layers, in array order
    model_fingerprint: str | None = None  # content hash of the weights (locatedit.loading.weights_fingerprint)


Progress = Callable[[str, int, int], None]


def read_image(image: Image.Image | np.ndarray | str | Path | BinaryIO) -> Image.Image:
    """A fully decoded image, from a path, an open file (an upload), an array or a PIL image; clear errors for broken,
    missing or huge files (the CLI calls it before loading a model, so a bad file fails in a second)."""
    def check_size(width: int, height: int) -> None:
        if width * height > MAX_IMAGE_PIXELS:
            raise ValueError(
                f"the image is {width}x{height} pixels; images over {MAX_IMAGE_PIXELS // 1_000_000} MP are refused "
                "(the edit runs at the model's own size anyway): downscale it first")

    def unreadable(err: Exception) -> ValueError:
        name = image if isinstance(image, (str, Path)) else getattr(image, "name", image)  # an upload has a name
        return ValueError(f"could not read the image '{name}' ({err}); use a PNG or JPEG file")

    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if isinstance(image, Image.Image):
        check_size(*image.size)
        return image
    try:
        opened = Image.open(image)  # reads the header only, so the size is checked before decoding
    except Image.DecompressionBombError as err:
        raise ValueError(f"the image is too large to open safely ({err}): downscale it first") from err
    except (OSError, ValueError) as err:
        raise unreadable(err) from err
    with opened:
        check_size(*opened.size)
        try:
            opened.load()
        except (OSError, ValueError) as err:
            raise unreadable(err) from err
        return opened.copy()


def prepare_image(image: Image.Image | np.ndarray | str | Path, size: int) -> tuple[Image.Image, str | None]:
    """Centre-crop to a square and resize (the reference's load_512).

    Returns the image and a note when it had to be cropped (the caller reports it)."""
    image = read_image(image)
    image = image.convert("RGB")
    side = min(image.size)
    note = None
    if image.width != image.height:
        note = (f"the image is {image.width}x{image.height}, not square: its centre {side}x{side} was edited, "
                "as the reference does")
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.crop((left, top, left + side, top + side)).resize((size, size), Image.LANCZOS), note


def edit_scheduler(pipe) -> DDIMScheduler:
    """The reference's EDDIM settings on the model's own noise schedule."""
    return DDIMScheduler.from_config(
        pipe.scheduler.config, clip_sample=True, clip_sample_range=1.0, set_alpha_to_one=True, steps_offset=0,
        timestep_spacing="leading", prediction_type="epsilon",
    )


def edit_step(scheduler, eps, t, x, x0_true, eta, noise, noise_mask, steps, clip_range: float | None = 1.0):
    """One EDDIM step (§A.10): the source's x0-prediction is replaced by the true x_0, the target keeps its offset;
    x0-predictions are clamped to [-clip_range, clip_range] (None: no clamp)."""
    alphas = scheduler.alphas_cumprod.to(x.device, torch.float32)
    prev_t = t - scheduler.config.num_train_timesteps // steps
    a_t = alphas[t]
    a_prev = alphas[prev_t] if prev_t >= 0 else torch.tensor(1.0, device=x.device)
    x0_pred = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    x0_pred = x0_true + x0_pred - x0_pred[:1]
    if clip_range is not None:
        x0_pred = x0_pred.clamp(-clip_range, clip_range)
    sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
    b = ((1 - a_prev - sigma**2) / (1 - a_t)).sqrt()
    x_prev = (a_prev.sqrt() - a_t.sqrt() * b) * x0_pred + b * x
    if noise_mask is not None:
        x_prev = x_prev + sigma * noise * noise_mask
    return x_prev


def _minmax_mask(summed: torch.Tensor, size: int, threshold: float) -> torch.Tensor:
    """(2, g*g) summed maps -> (2, 1, size, size) bool: nearest upsample, per-row min-max, threshold; an all-equal
    row (no attention at all) gives an empty mask instead of the reference's 0/0."""
    g = int(round(summed.shape[-1] ** 0.5))
    up = F.interpolate(summed.float().reshape(2, 1, g, g), size=(size, size), mode="nearest")
    lo = up.amin(dim=(1, 2, 3), keepdim=True)
    span = up.amax(dim=(1, 2, 3), keepdim=True) - lo
    norm = torch.where(span > 0, (up - lo) / span.clamp_min(1e-12), torch.zeros_like(up))
    return norm > threshold


def _target_row(mask: torch.Tensor, target_mask: str) -> torch.Tensor:
    """Row 0 keeps the source-word mask; the target row becomes source | target (the reference's mask[:1] + mask)
    or, with ``target_mask="source"``, the source word's mask alone."""
    return torch.stack([mask[0], mask[0] | mask[1] if target_mask == "union" else mask[0]])


def _upsample_nearest(m: torch.Tensor, size: int) -> torch.Tensor:
    r = int(round(m.shape[-1] ** 0.5))
    return F.interpolate(m.reshape(m.shape[0], 1, r, r), size=(size, size), mode="nearest").reshape(m.shape[0], -1)


@torch.no_grad()
def locatedit_edit(
    model: LoadedModel,
    image: Image.Image | np.ndarray | str,
    source_prompt: str,
    target_prompt: str,
    blend_words: tuple[str, str] | str | None,
    params: EditParams | None = None,
    progress: Progress | None = None,
) -> EditResult:
    """Run one LOCATEdit edit and return everything it computed (see ``EditResult``)."""
    params = params or EditParams()
    progress = progress or (lambda stage, i, n: None)
    pipe, spec = model.pipe, model.spec
    device, dtype = model.device, pipe.unet.dtype
    timings: dict[str, float] = {}
    warnings: list[str] = []
    clock = time.perf_counter()

    # ---- inputs
    spec.check_prompt(source_prompt), spec.check_prompt(target_prompt)
    for name, prompt in (("source", source_prompt), ("target", target_prompt)):
        if not prompt.strip():
            raise ValueError(f"the {name} prompt is empty; describe the image (source) and the edit (target)")
        n = len(pipe.tokenizer.encode(prompt))
        if n > pipe.tokenizer.model_max_length:
            raise ValueError(f"the {name} prompt has {n} tokens but the text encoder reads at most "
                             f"{pipe.tokenizer.model_max_length}; shorten it")
    if isinstance(blend_words, str):
        words = blend_words.split()
        blend_words = (words[0], words[1]) if len(words) >= 2 else None
    tokenizer = pipe.tokenizer
    blend_tokens: list[list[int]] = [[], []]
    if blend_words is not None:
        blend_tokens = [word_token_indices(tokenizer, p, w) for p, w in zip((source_prompt, target_prompt), blend_words)]
        if not blend_tokens[0] and not blend_tokens[1]:
            raise BlendWordError(
                f"blend words {blend_words} occur in neither prompt: '{blend_words[0]}' must be a word of the source "
                f"prompt '{source_prompt}' or '{blend_words[1]}' a word of the target prompt '{target_prompt}'"
            )
        for row, (word, prompt) in enumerate(zip(blend_words, (source_prompt, target_prompt))):
            if not blend_tokens[row]:
                warnings.append(f"blend word '{word}' is not in '{prompt}' (its words: {prompt.split()}): "
                                "that row's mask is empty")
    source_image, note = prepare_image(image, spec.image_size)
    if note:
        warnings.append(note)
    progress("prepare", 1, 1)

    # ---- encode: x_0, text context, IP embeddings with the pruned offset
    pixels = torch.from_numpy(np.array(source_image)).permute(2, 0, 1)[None].to(device, torch.float32) / 127.5 - 1
    x0 = pipe.vae.encode(pixels.to(dtype)).latent_dist.mean * pipe.vae.config.scaling_factor
    ids = tokenizer(["", "", source_prompt, target_prompt], padding="max_length", truncation=True,
                    max_length=tokenizer.model_max_length, return_tensors="pt").input_ids.to(device)
    context = pipe.text_encoder(ids)[0]
    clip_pixels = pipe.feature_extractor(images=source_image, return_tensors="pt").pixel_values.to(device)
    v = image_features(model.clip, clip_pixels.float())[0]
    t = text_features(model.clip, model.clip_tokenizer, [source_prompt, target_prompt])
    t = t * v.norm() / t.norm(dim=-1, keepdim=True)
    offset = t[1] - t[0]
    pruned = prune_offset(offset, params.keep_percent) if params.use_offset else torch.zeros_like(offset)
    v_edit = v + pruned
    zero = torch.zeros_like(v)
    image_embeds = torch.stack([zero, v, zero, v_edit])[:, None].to(dtype)
    pipe.set_ip_adapter_scale(params.ip_scale)
    timings["encode"] = time.perf_counter() - clock

    # ---- control
    scheduler = edit_scheduler(pipe)
    scheduler.set_timesteps(params.steps, device=device)
    resolutions = layer_resolutions(pipe.unet, sample_size=x0.shape[-1])  # the latent's own size, not the config's
    mapper, alphas = refinement_mapper(tokenizer, source_prompt, target_prompt)
    equalizer = torch.ones(tokenizer.model_max_length)
    equalizer[new_word_indices(tokenizer, source_prompt, target_prompt)] = params.equalizer
    n_tokens = max(len(tokenizer.encode(source_prompt)), len(tokenizer.encode(target_prompt)))
    n_tokens = min(n_tokens, tokenizer.model_max_length)
    control = ControlConfig(params.steps, params.self_replace, params.cross_replace, params.ip_replace,
                            params.equalizer, params.maps_after_p2p)
    controller = LocatEditController(resolutions, spec.graph_resolution, spec.mask_resolution, mapper, alphas,
                                     equalizer, control, n_tokens)

    # ---- loop
    generator = torch.Generator(device="cpu").manual_seed(params.seed)
    t0 = scheduler.timesteps[0]
    z = torch.randn(x0.shape, generator=generator).to(device, dtype)
    a0 = scheduler.alphas_cumprod[t0].to(device)
    x = (a0.sqrt() * x0 + (1 - a0).sqrt() * z).repeat(2, 1, 1, 1)
    latent_size, g = x0.shape[-1], spec.graph_resolution
    n_nodes = g * g
    steps, start = params.steps, params.start_step
    rec = {
        "m0": np.zeros((steps, 2, n_nodes), np.float32),
        "m_star": np.full((steps, 2, n_nodes), np.nan, np.float32),
        "mask": np.zeros((steps, 2, latent_size, latent_size), bool),
        "solver_iterations": np.zeros(steps, np.int32),
        "solver_residual": np.full(steps, np.nan, np.float32),
        "solver_seconds": np.zeros(steps, np.float32),
        "cross_maps": None,
    }
    self_sum = torch.zeros(2, n_nodes, n_nodes, device=device)
    self_steps: list[np.ndarray] = []
    map_sum = torch.zeros(2, n_nodes, device=device)
    r = spec.mask_resolution
    localblend_sum = torch.zeros(2, r * r, device=device)
    blend_mask = noise_mask = None
    previous = None
    unet_seconds = casa_seconds = 0.0
    for i, t in enumerate(scheduler.timesteps):
        controller.begin_step(i)
        tick = time.perf_counter()
        eps = pipe.unet(torch.cat([x, x]), t, context, added_cond_kwargs={"image_embeds": [image_embeds]},
                        cross_attention_kwargs={"controller": controller}).sample.float()
        unet_seconds += time.perf_counter() - tick
        maps = controller.maps
        cross = torch.stack(maps.cross)  # (layers, 2, Q, T)
        if rec["cross_maps"] is None:
            rec["cross_maps"] = np.zeros((steps, cross.shape[0], 2, n_tokens, r, r), np.float16)
        rec["cross_maps"][i] = cross.permute(0, 1, 3, 2).reshape(cross.shape[0], 2, n_tokens, r, r).cpu().numpy()
        m0_coarse = torch.stack([cross[:, row][..., blend_tokens[row]].sum(-1).mean(0) for row in range(2)])
        m0 = _upsample_nearest(m0_coarse, g)
        rec["m0"][i] = m0.cpu().numpy()
        localblend_sum += m0_coarse  # P2P's store averages from step 0

        if blend_words is not None and i >= start:
            tick = time.perf_counter()
            S = maps.self_attention / maps.self_layers
            self_sum += S
            if params.store_self_attention == "per_step":
                self_steps.append(S.half().cpu().numpy())
            if params.mask_source == "casa":
                warm = previous if (params.warm_start and previous is not None) else None
                result = graph.refine(m0, S, lam=params.lam, alpha=params.alpha, center=params.center,
                                      solver=params.solver, topk=params.topk, x0=warm, rtol=params.solver_rtol)
                m_star = result.solution
                previous = m_star
                map_sum += m_star
                rec["m_star"][i] = m_star.cpu().numpy()
                rec["solver_iterations"][i], rec["solver_residual"][i] = result.iterations, result.residual
                rec["solver_seconds"][i] = result.seconds
                blend_mask = _target_row(_minmax_mask(map_sum, latent_size, params.blend_threshold), params.target_mask)
                noise_mask = _target_row(_minmax_mask(map_sum, latent_size, params.noise_threshold), params.target_mask)
            else:  # P2P LocalBlend: running mean of the raw maps, 3x3 max-pool, divide by the max, threshold
                mean = (localblend_sum / (i + 1)).reshape(2, 1, r, r)
                pooled = F.max_pool2d(mean, 3, stride=1, padding=1)
                up = F.interpolate(pooled, size=(latent_size, latent_size), mode="nearest")
                peak = up.amax(dim=(1, 2, 3), keepdim=True)
                blend_mask = _target_row(torch.where(peak > 0, up / peak.clamp_min(1e-12), up) > params.localblend_threshold,
                                         params.target_mask)
                noise_mask = blend_mask
            rec["mask"][i] = blend_mask[:, 0].cpu().numpy()
            casa_seconds += time.perf_counter() - tick

        eps_s = eps[0] + params.source_guidance * (eps[2] - eps[0])
        eps_t = eps[1] + params.target_guidance * (eps[3] - eps[1])
        noise = torch.randn((1, *x0.shape[1:]), generator=generator).to(device)
        if params.noise == "uniform":
            gate = None if noise_mask is None or not noise_mask.any() else torch.ones_like(x[:, :1])
        else:
            gate = None if noise_mask is None else noise_mask.float()
        x = edit_step(scheduler, torch.stack([eps_s, eps_t]), int(t), x.float(), x0.float(), params.eta, noise, gate,
                      steps, spec.latent_clip_range if params.clip_sample else None)
        if blend_mask is not None:
            x[1] = x[0] + blend_mask[1].float() * (x[1] - x[0])
        x = x.to(dtype)
        progress("denoise", i + 1, steps)
    timings["unet"], timings["casa"] = unet_seconds, casa_seconds

    # ---- decode
    tick = time.perf_counter()
    decoded = pipe.vae.decode(x / pipe.vae.config.scaling_factor).sample
    decoded = ((decoded.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    timings["decode"] = time.perf_counter() - tick
    timings["total"] = time.perf_counter() - clock
    progress("decode", 1, 1)

    solved = max(1, steps - start) if blend_words is not None else 1
    arrays = {
        **{k: v for k, v in rec.items() if v is not None},
        "map_sum": map_sum.cpu().numpy(),
        "self_attention_mean": (self_sum / solved).cpu().numpy(),
        "clip_image": v.cpu().numpy(),
        "clip_offset": offset.cpu().numpy(),
        "clip_offset_pruned": pruned.cpu().numpy(),
        "timesteps": scheduler.timesteps.cpu().numpy(),
        "latents_final": x.float().cpu().numpy(),
        "x0": x0.float().cpu().numpy(),
        "blend_token_indices_source": np.array(blend_tokens[0], np.int32),
        "blend_token_indices_target": np.array(blend_tokens[1], np.int32),
    }
    if self_steps:
        arrays["self_attention_per_step"] = np.stack(self_steps)
    convert = tokenizer.convert_ids_to_tokens
    tokens = {name: [tok.removesuffix("</w>") for tok in convert(tokenizer.encode(p))[:n_tokens]]
              for name, p in (("source", source_prompt), ("target", target_prompt))}
    layers = {
        "cross": [n for n, r in resolutions.items() if r == spec.mask_resolution and n.endswith("attn2")],
        "self": [n for n, r in resolutions.items() if r == spec.graph_resolution and n.endswith("attn1")],
    }
    return EditResult(
        params=params, model=spec.name, source_prompt=source_prompt, target_prompt=target_prompt,
        blend_words=blend_words, source_image=source_image, reconstruction=Image.fromarray(decoded[0]),
        edited=Image.fromarray(decoded[1]), arrays=arrays, tokens=tokens, timings=timings, warnings=warnings,
        layers=layers, model_fingerprint=model.fingerprint,
    )


class LocatEditPipeline:
    """The Python entry point: load a model once, then each ``edit`` runs LOCATEdit and returns the saved Run.

        pipe = LocatEditPipeline.from_pretrained("shapeworld")
        run = pipe.edit("cat.png", "a cat on a sofa", "a dog on a sofa", "cat dog", lam=0.0)
    """

    def __init__(self, model: LoadedModel):
        self.model = model

    @classmethod
    def from_pretrained(cls, name_or_path: str = "shapeworld", device: str | None = None, dtype=None):
        from .loading import load_model

        return cls(load_model(name_or_path, device=device, dtype=dtype))

    def edit(self, image, source_prompt: str, target_prompt: str, blend_words, out=None,
             progress: Progress | None = None, gt_mask=None, gt_target=None, **params):
        """``params``: any ``EditParams`` field; ``out``: the run directory (default: data/runs/<new id>)."""
        from .loading import REPO_ROOT
        from .run import save_run

        result = locatedit_edit(self.model, image, source_prompt, target_prompt, blend_words, EditParams(**params),
                                progress)
        out = Path(out) if out is not None else None
        root, run_id = (out.parent, out.name) if out is not None else (REPO_ROOT / "data" / "runs", None)
        return save_run(result, root, run_id=run_id, gt_mask=gt_mask, gt_target=gt_target)
