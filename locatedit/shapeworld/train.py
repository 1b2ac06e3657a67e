"""Train the ShapeWorld model in resumable stages: data -> vae -> latents -> clip -> unet -> grounding -> binding ->
ip_adapter -> export.

Every stage checkpoints to ``<work>/<stage>/ckpt.pt`` every few minutes and marks itself done with ``done.json``;
a rerun of the same command skips finished stages and resumes the one in progress, so a killed background job loses
at most a few minutes. Losses go to ``<work>/<stage>/log.jsonl``; ``<work>/curves.html`` plots them.
"""
from __future__ import annotations

import copy
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..attention import CROSS, install_recorders
from .models import (
    ModelSizes,
    make_clip,
    make_scheduler,
    make_text_encoder,
    make_text_layers_identity,
    make_unet,
    make_vae,
    new_ip_adapter_state_dict,
    text_encoder_layers,
    vision_tower,
)
from .tokenizer import MAX_LENGTH, build_tokenizer
from .world import box_downsample, render, sample_scene

CHECKPOINT_SECONDS = 180
STAGES = ("vae", "clip", "unet", "grounding", "binding", "coverage", "polish", "ip_adapter")  # the trained stages, in order


@dataclass
class TrainConfig:
    work: Path = Path("data/train")
    out: Path = Path("data/models/shapeworld")
    seed: int = 0
    n_images: int = 30000
    vae_steps: int = 2400
    vae_batch: int = 32
    vae_crop: int = 32
    vae_lr: float = 2e-3
    clip_steps: int = 2000
    clip_batch: int = 128
    clip_lr: float = 2e-3
    unet_steps: int = 5500
    unet_batch: int = 32
    unet_lr: float = 1e-3
    caption_dropout: float = 0.1
    # Continue the UNet run with TokenCompose's token loss (Wang et al., CVPR 2024) on the ground-truth masks: each
    # object word's cross-attention should fall inside its object, each background word's outside every object.
    # Without it this small model's word maps stayed diffuse (object-word IoU 0.17 after 5.5 k steps).
    grounding_steps: int = 7000
    grounding_lr: float = 4e-4
    grounding_weight: float = 0.05
    # Then switch the text encoder's causal layer on (still with the token loss) and train with offset noise: a
    # per-image, per-channel constant added to the noise, so that at high t the model cannot read the image's mean
    # colour from the noise's own mean and must take it from the caption (with SD's schedule the signal left at
    # t = 999 is as large as the mean of 16x16 noise; backgrounds drifted to purple, 13/34 plain ones right).
    binding_steps: int = 4000
    binding_lr: float = 3e-4
    offset_noise: float = 0.1
    binding_text_layers: bool = True  # False: the binding stage with the text layer kept off (an ablation)
    # Then add TokenCompose's pixel loss: after binding, object-word maps thresholded like LOCATEdit's mask covered
    # only 52-61 % of the object's area (peaked at its centre), which caps mask IoU.
    coverage_steps: int = 1500
    coverage_lr: float = 2e-4
    pixel_weight: float = 0.05
    # Then the same objective again with a fresh warm-up and decay: 1500 coverage steps left object colour at 80 % of
    # generated samples, 6000 polish steps took it to 98 % (benchmarks/results/shapeworld_gates.md). A stage of its
    # own, so an exported model can be polished (``--from-export``) without re-running the hours before it.
    polish_steps: int = 6000
    polish_lr: float = 2e-4
    ip_steps: int = 2500
    ip_batch: int = 32
    # The image key/value weights start as copies of the text ones (new_ip_adapter_state_dict) and train at the same
    # rate as the projection: at 1e-4 for them (IP-Adapter's own rate) image-only colour was 0.58, at 1e-3 0.83.
    ip_lr: float = 1e-3
    ip_text_dropout: float = 0.5
    # Zero image embeddings are what classifier-free guidance feeds the unconditional branch (diffusers'
    # negative image embeds), so the adapter must learn them as "no image", as IP-Adapter's own training does.
    ip_image_dropout: float = 0.1
    ema_decay: float = 0.999
    sizes: ModelSizes = field(default_factory=ModelSizes)
    name: str = "shapeworld"
    graph_level: int = 0  # UNet level whose self-attention is the CASA graph (m0 comes from the next level down)

    def scaled(self, factor: float) -> "TrainConfig":
        """A copy with every step count scaled (for smoke tests)."""
        cfg = copy.deepcopy(self)
        for name in ("vae_steps", "clip_steps", "unet_steps", "grounding_steps", "binding_steps", "coverage_steps",
                     "polish_steps", "ip_steps"):
            setattr(cfg, name, max(2, int(getattr(cfg, name) * factor)))
        return cfg


# --------------------------------------------------------------------------------------------------------------
# Stage bookkeeping
# --------------------------------------------------------------------------------------------------------------


class Stage:
    """Checkpoint, log and done-marker handling for one training stage."""

    def __init__(self, work: Path, name: str):
        self.dir = work / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.last_save = time.time()

    @property
    def done(self) -> bool:
        return (self.dir / "done.json").exists()

    def mark_done(self, **info) -> None:
        (self.dir / "done.json").write_text(json.dumps(info, indent=2))

    def info(self) -> dict:
        return json.loads((self.dir / "done.json").read_text())

    def load(self) -> dict | None:
        path = self.dir / "ckpt.pt"
        return torch.load(path, weights_only=False) if path.exists() else None

    def save(self, state: dict, force: bool = False) -> None:
        if not force and time.time() - self.last_save < CHECKPOINT_SECONDS:
            return
        tmp = self.dir / "ckpt.pt.tmp"
        torch.save(state, tmp)
        tmp.replace(self.dir / "ckpt.pt")  # atomic: a kill mid-write leaves the previous checkpoint intact
        self.last_save = time.time()

    def log(self, **row) -> None:
        with open(self.dir / "log.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")


def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p, 1 - decay)


def _lr(step: int, total: int, base: float, warmup: int = 200) -> float:
    """Linear warm-up then cosine decay to 10 %."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


# --------------------------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------------------------


def make_dataset(cfg: TrainConfig) -> dict:
    """Render the training scenes once (uint8 images, captions, object masks' union)."""
    path = cfg.work / "data" / "scenes.npz"
    if path.exists():
        data = np.load(path)
        return {k: data[k] for k in data.files}
    rng = np.random.default_rng(cfg.seed)
    images, captions = [], []
    for _ in tqdm(range(cfg.n_images), desc="rendering scenes"):
        scene = sample_scene(rng)
        images.append(render(scene)[0])
        captions.append(scene.caption)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"images": np.stack(images), "captions": np.array(captions)}
    np.savez(path.with_suffix(".tmp.npz"), **data)
    path.with_suffix(".tmp.npz").replace(path)
    return data


GROUNDING_SIDE = 16  # region targets are stored at the finest cross-attention resolution and pooled for coarser ones


def make_grounding_targets(cfg: TrainConfig, data: dict) -> dict:
    """Per-token region targets of every training scene: regions (N, 3, 16, 16) = object 0, object 1, background
    (area fractions), and owners (N, MAX_LENGTH) = the region each token describes, -1 for none (BOS, grammar, pad).

    The scenes are re-sampled from the dataset's seed; their captions must match the stored ones.
    """
    path = cfg.work / "data" / "grounding.npz"
    if path.exists():
        data_ = np.load(path)
        return {k: data_[k] for k in data_.files}
    rng = np.random.default_rng(cfg.seed)
    n = len(data["captions"])
    regions = np.zeros((n, 3, GROUNDING_SIDE, GROUNDING_SIDE), dtype=np.float16)
    owners = np.full((n, MAX_LENGTH), -1, dtype=np.int8)
    for i in tqdm(range(n), desc="grounding targets"):
        scene = sample_scene(rng)
        if scene.caption != data["captions"][i]:
            raise RuntimeError(f"scene {i} re-sampled as '{scene.caption}', stored as '{data['captions'][i]}'; "
                               "the world generator changed since the dataset was rendered: delete the data folder")
        masks = render(scene)[1]
        union = np.zeros_like(masks[0], dtype=np.float32)
        for k, mask in enumerate(masks):
            regions[i, k] = box_downsample(mask.astype(np.float32), mask.shape[0] // GROUNDING_SIDE)
            union = np.maximum(union, mask)
        regions[i, 2] = box_downsample(1 - union, union.shape[0] // GROUNDING_SIDE)
        for w, owner in enumerate(scene.word_owners()):
            if owner is not None:
                owners[i, 1 + w] = 2 if owner == -1 else owner  # token 0 is BOS
    np.savez(path.with_suffix(".tmp.npz"), regions=regions, owners=owners)
    path.with_suffix(".tmp.npz").replace(path)
    return {"regions": regions, "owners": owners}


class CrossAttentionTaps:
    """Attention controller that keeps every cross-attention layer's head-mean probabilities, with gradients."""

    def __init__(self):
        self.maps: list[torch.Tensor] = []

    def wants(self, layer: str, kind: str, query_len: int) -> bool:
        return kind == CROSS

    def __call__(self, layer: str, kind: str, probs: torch.Tensor) -> torch.Tensor:
        self.maps.append(probs.mean(1))
        return probs


def _per_token(probs: torch.Tensor, regions: torch.Tensor, owners: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer's maps and targets per token, both (B, T, Q): its attention over the image, and the area fraction
    of the region each token describes, pooled to the layer's resolution."""
    side = math.isqrt(probs.shape[1])
    pooled = F.adaptive_avg_pool2d(regions, side).flatten(2)  # (B, R, Q)
    index = owners.clamp(min=0)[..., None].expand(-1, -1, pooled.shape[-1])
    return probs.transpose(1, 2), torch.gather(pooled, 1, index)


def token_grounding_loss(maps: list[torch.Tensor], regions: torch.Tensor, owners: torch.Tensor) -> torch.Tensor:
    """TokenCompose's L_token: mean over layers and supervised tokens of (1 - attention mass inside the region)^2.

    maps: (B, Q, T) per layer; regions: (B, R, s, s) area fractions; owners: (B, T) region index or -1.
    """
    supervised = owners >= 0
    if not supervised.any():
        return torch.zeros(())
    losses = []
    for probs in maps:
        attention, target = _per_token(probs, regions, owners)
        inside = (attention * target).sum(-1) / attention.sum(-1).clamp_min(1e-8)
        losses.append((1 - inside).pow(2)[supervised].mean())
    return torch.stack(losses).mean()


def pixel_grounding_loss(maps: list[torch.Tensor], regions: torch.Tensor, owners: torch.Tensor) -> torch.Tensor:
    """TokenCompose's L_pixel: binary cross-entropy between each supervised token's min-max-normalised map and its
    region. The token loss only asks for the mass to be inside, which a peak at the object's centre satisfies; this
    term asks the whole object to light up, which is what a map thresholded at a fraction of its maximum needs.
    """
    supervised = owners >= 0
    if not supervised.any():
        return torch.zeros(())
    losses = []
    for probs in maps:
        attention, target = _per_token(probs, regions, owners)
        low, high = attention.amin(-1, keepdim=True), attention.amax(-1, keepdim=True)
        normalised = ((attention - low) / (high - low).clamp_min(1e-8)).clamp(1e-4, 1 - 1e-4)
        bce = F.binary_cross_entropy(normalised, target, reduction="none").mean(-1)
        losses.append(bce[supervised].mean())
    return torch.stack(losses).mean()


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


def train_vae(cfg: TrainConfig, data: dict) -> torch.nn.Module:
    stage = Stage(cfg.work, "vae")
    vae = make_vae(cfg.sizes)
    if stage.done:
        vae.load_state_dict(torch.load(stage.dir / "vae.pt"))
        return vae
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    step = 0
    if (ckpt := stage.load()) is not None:
        vae.load_state_dict(ckpt["model"]), opt.load_state_dict(ckpt["opt"]), gen.set_state(ckpt["gen"])
        step = ckpt["step"]
    images = data["images"]
    n, size = len(images), images.shape[1]
    bar = tqdm(total=cfg.vae_steps, initial=step, desc="vae")
    while step < cfg.vae_steps:
        for g in opt.param_groups:
            g["lr"] = _lr(step, cfg.vae_steps, cfg.vae_lr)
        idx = torch.randint(0, n, (cfg.vae_batch,), generator=gen).numpy()
        # Full images for the last steps so the border statistics match inference (4x the cost of a crop).
        crop = size if step >= 0.93 * cfg.vae_steps else cfg.vae_crop
        ox, oy = torch.randint(0, size - crop + 1, (2,), generator=gen).tolist()
        x = _to_tensor(images[idx][:, oy : oy + crop, ox : ox + crop])
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=gen)).sample
        loss = F.l1_loss(recon, x) + F.mse_loss(recon, x) + 1e-6 * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step += 1
        bar.update(1)
        if step % 50 == 0 or step == cfg.vae_steps:
            stage.log(step=step, loss=loss.item(), crop=crop)
            bar.set_postfix(loss=f"{loss.item():.4f}")
        stage.save({"model": vae.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(), "step": step})
    torch.save(vae.state_dict(), stage.dir / "vae.pt")
    stage.mark_done(steps=step)
    return vae


@torch.no_grad()
def encode_latents(cfg: TrainConfig, vae: torch.nn.Module, data: dict) -> dict:
    """Posterior mean and std of every training image, plus the scaling factor (1 / latent std)."""
    stage = Stage(cfg.work, "latents")
    path = stage.dir / "latents.pt"
    if stage.done:
        return torch.load(path)
    vae.eval()
    means, stds = [], []
    for i in tqdm(range(0, len(data["images"]), 256), desc="encoding latents"):
        dist = vae.encode(_to_tensor(data["images"][i : i + 256])).latent_dist
        means.append(dist.mean.half())
        stds.append(dist.std.half())
    mean, std = torch.cat(means), torch.cat(stds)
    result = {"mean": mean, "std": std, "scaling_factor": float(1.0 / mean.float().std())}
    torch.save(result, path)
    stage.mark_done(scaling_factor=result["scaling_factor"])
    return result


def _tokenize(tokenizer, captions) -> torch.Tensor:
    return tokenizer(list(captions), padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids


def train_clip(cfg: TrainConfig, data: dict, tokenizer) -> torch.nn.Module:
    stage = Stage(cfg.work, "clip")
    clip = make_clip(cfg.sizes, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id)
    if stage.done:
        clip.load_state_dict(torch.load(stage.dir / "clip.pt"))
        return clip
    opt = torch.optim.AdamW(clip.parameters(), lr=cfg.clip_lr, weight_decay=0.05)
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    step = 0
    if (ckpt := stage.load()) is not None:
        clip.load_state_dict(ckpt["model"]), opt.load_state_dict(ckpt["opt"]), gen.set_state(ckpt["gen"])
        step = ckpt["step"]
    images, captions = data["images"], data["captions"]
    bar = tqdm(total=cfg.clip_steps, initial=step, desc="clip")
    while step < cfg.clip_steps:
        for g in opt.param_groups:
            g["lr"] = _lr(step, cfg.clip_steps, cfg.clip_lr)
        idx = torch.randint(0, len(images), (cfg.clip_batch,), generator=gen).numpy()
        out = clip(input_ids=_tokenize(tokenizer, captions[idx]), pixel_values=_to_tensor(images[idx]))
        # Identical captions in a batch are positives of each other, not negatives.
        same = torch.from_numpy(captions[idx][:, None] == captions[idx][None, :]).float()
        target = same / same.sum(1, keepdim=True)
        loss = 0.5 * (
            F.cross_entropy(out.logits_per_image, target) + F.cross_entropy(out.logits_per_text, target)
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        bar.update(1)
        if step % 50 == 0 or step == cfg.clip_steps:
            stage.log(step=step, loss=loss.item())
            bar.set_postfix(loss=f"{loss.item():.3f}")
        stage.save({"model": clip.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(), "step": step})
    torch.save(clip.state_dict(), stage.dir / "clip.pt")
    stage.mark_done(steps=step)
    return clip


def _sample_latents(latents: dict, idx: np.ndarray, gen: torch.Generator) -> torch.Tensor:
    mean, std = latents["mean"][idx].float(), latents["std"][idx].float()
    return (mean + std * torch.randn(mean.shape, generator=gen)) * latents["scaling_factor"]


def _min_snr_weights(scheduler, timesteps: torch.Tensor, gamma: float = 5.0) -> torch.Tensor:
    alpha_bar = scheduler.alphas_cumprod[timesteps]
    snr = alpha_bar / (1 - alpha_bar)
    return torch.clamp(snr, max=gamma) / snr


@dataclass(frozen=True)
class DenoiserStage:
    """One run of the UNet + text encoder objective: where it starts and what it adds."""

    name: str
    init_from: str | None  # the stage whose EMA weights it continues from
    seed_offset: int
    grounded: bool  # add the token loss on every cross-attention layer
    train_text_layers: bool  # the text encoder's causal layers (identity and frozen until "binding")
    offset_noise: bool
    pixel_loss: bool = False  # add TokenCompose's pixel loss (needs grounded)


DENOISER_STAGES = {
    "unet": DenoiserStage("unet", None, 3, grounded=False, train_text_layers=False, offset_noise=False),
    "grounding": DenoiserStage("grounding", "unet", 5, grounded=True, train_text_layers=False, offset_noise=False),
    "binding": DenoiserStage("binding", "grounding", 6, grounded=True, train_text_layers=True, offset_noise=True),
    "coverage": DenoiserStage("coverage", "binding", 7, grounded=True, train_text_layers=True, offset_noise=True,
                              pixel_loss=True),
    "polish": DenoiserStage("polish", "coverage", 8, grounded=True, train_text_layers=True, offset_noise=True,
                            pixel_loss=True),
}


def _noise(shape: torch.Size, gen: torch.Generator, offset: float) -> torch.Tensor:
    noise = torch.randn(shape, generator=gen)
    if offset > 0:
        noise = noise + offset * torch.randn(shape[0], shape[1], 1, 1, generator=gen)
    return noise


def train_unet(
    cfg: TrainConfig, data: dict, latents: dict, tokenizer, name: str = "unet", grounding: dict | None = None
) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Text encoder and UNet jointly, epsilon prediction with min-SNR weighting and EMA, as stage ``name`` of
    ``DENOISER_STAGES``; grounded stages need ``grounding`` (from ``make_grounding_targets``) and add
    ``grounding_weight`` x the token loss on every cross-attention layer.
    """
    spec = DENOISER_STAGES[name]
    if spec.grounded and grounding is None:
        raise ValueError(f"stage {name} needs grounding targets")
    total, base_lr = getattr(cfg, f"{name}_steps"), getattr(cfg, f"{name}_lr")
    stage = Stage(cfg.work, name)
    unet = make_unet(cfg.sizes)
    text_encoder = make_text_encoder(cfg.sizes, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id)
    make_text_layers_identity(text_encoder)
    text_encoder_layers(text_encoder).requires_grad_(spec.train_text_layers and cfg.binding_text_layers)
    models = torch.nn.ModuleDict({"unet": unet, "text_encoder": text_encoder})
    ema = copy.deepcopy(models).requires_grad_(False)
    if stage.done:
        ema.load_state_dict(torch.load(stage.dir / "ema.pt"))
        return ema["unet"], ema["text_encoder"]
    if spec.init_from is not None:
        models.load_state_dict(torch.load(Stage(cfg.work, spec.init_from).dir / "ema.pt"))
        ema.load_state_dict(models.state_dict())
    trainable = [p for p in models.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=base_lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(cfg.seed + spec.seed_offset)
    step = 0
    if (ckpt := stage.load()) is not None:
        models.load_state_dict(ckpt["model"]), ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["opt"]), gen.set_state(ckpt["gen"])
        step = ckpt["step"]
    if spec.grounded:
        install_recorders(unet)
    scheduler = make_scheduler()
    captions = data["captions"]
    empty = _tokenize(tokenizer, [""])
    offset = cfg.offset_noise if spec.offset_noise else 0.0
    bar = tqdm(total=total, initial=step, desc=name)
    while step < total:
        for g in opt.param_groups:
            g["lr"] = _lr(step, total, base_lr, warmup=100 if spec.init_from else 200)
        idx = torch.randint(0, len(captions), (cfg.unet_batch,), generator=gen).numpy()
        x0 = _sample_latents(latents, idx, gen)
        ids = _tokenize(tokenizer, captions[idx])
        drop = torch.rand(len(idx), generator=gen) < cfg.caption_dropout
        ids[drop] = empty
        noise = _noise(x0.shape, gen, offset)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(idx),), generator=gen)
        noisy = scheduler.add_noise(x0, noise, t)
        taps = CrossAttentionTaps() if spec.grounded else None
        kwargs = {"cross_attention_kwargs": {"controller": taps}} if taps is not None else {}
        pred = unet(noisy, t, text_encoder(ids).last_hidden_state, **kwargs).sample
        per_sample = (pred - noise).pow(2).mean(dim=(1, 2, 3))
        loss = (per_sample * _min_snr_weights(scheduler, t)).mean()
        row = {}
        if taps is not None:
            owners = torch.from_numpy(grounding["owners"][idx]).long()
            owners[drop] = -1
            regions = torch.from_numpy(grounding["regions"][idx]).float()
            token_loss = token_grounding_loss(taps.maps, regions, owners)
            loss = loss + cfg.grounding_weight * token_loss
            row["token_loss"] = token_loss.item()
            if spec.pixel_loss:
                pixel_loss = pixel_grounding_loss(taps.maps, regions, owners)
                loss = loss + cfg.pixel_weight * pixel_loss
                row["pixel_loss"] = pixel_loss.item()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        _ema_update(ema, models, min(cfg.ema_decay, (1 + step) / (10 + step)))
        step += 1
        bar.update(1)
        if step % 50 == 0 or step == total:
            stage.log(step=step, loss=loss.item(), mse=per_sample.mean().item(), **row)
            bar.set_postfix(loss=f"{loss.item():.4f}", **{k: f"{v:.3f}" for k, v in row.items()})
        state = {"model": models.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict()}
        stage.save({**state, "gen": gen.get_state(), "step": step})
    torch.save(ema.state_dict(), stage.dir / "ema.pt")
    stage.mark_done(steps=step)
    return ema["unet"], ema["text_encoder"]


def train_ip_adapter(
    cfg: TrainConfig, data: dict, latents: dict, tokenizer, unet, text_encoder, clip
) -> dict[str, dict]:
    """IP-Adapter (image projection + per-layer to_k_ip/to_v_ip) against the frozen UNet and text encoder.

    The caption is dropped half of the time, so the image embedding alone has to carry what the image shows; the
    image embedding is zeroed a tenth of the time, which is the unconditional input of guidance.
    """
    stage = Stage(cfg.work, "ip_adapter")
    unet = copy.deepcopy(unet).requires_grad_(False)
    text_encoder = text_encoder.requires_grad_(False)
    image_encoder = vision_tower(clip).requires_grad_(False).eval()
    if stage.done:
        return torch.load(stage.dir / "ip_adapter.pt")
    init = new_ip_adapter_state_dict(unet, cfg.sizes.clip_projection, seed=cfg.seed)
    unet._load_ip_adapter_weights([init])
    trainable = [p for n, p in unet.named_parameters() if "_ip" in n or "encoder_hid_proj" in n]
    for p in trainable:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(trainable, lr=cfg.ip_lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(cfg.seed + 4)
    step = 0
    if (ckpt := stage.load()) is not None:
        unet.load_state_dict(ckpt["model"], strict=False), opt.load_state_dict(ckpt["opt"]), gen.set_state(ckpt["gen"])
        step = ckpt["step"]
    scheduler = make_scheduler()
    images, captions = data["images"], data["captions"]
    empty = _tokenize(tokenizer, [""])
    bar = tqdm(total=cfg.ip_steps, initial=step, desc="ip_adapter")
    while step < cfg.ip_steps:
        for g in opt.param_groups:
            g["lr"] = _lr(step, cfg.ip_steps, cfg.ip_lr, warmup=50)
        idx = torch.randint(0, len(images), (cfg.ip_batch,), generator=gen).numpy()
        x0 = _sample_latents(latents, idx, gen)
        ids = _tokenize(tokenizer, captions[idx])
        ids[torch.rand(len(idx), generator=gen) < cfg.ip_text_dropout] = empty
        with torch.no_grad():
            image_embeds = image_encoder(pixel_values=_to_tensor(images[idx])).image_embeds
            image_embeds[torch.rand(len(idx), generator=gen) < cfg.ip_image_dropout] = 0
            context = text_encoder(ids).last_hidden_state
        noise = _noise(x0.shape, gen, cfg.offset_noise)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(idx),), generator=gen)
        pred = unet(
            scheduler.add_noise(x0, noise, t), t, context, added_cond_kwargs={"image_embeds": [image_embeds[:, None]]}
        ).sample
        loss = ((pred - noise).pow(2).mean(dim=(1, 2, 3)) * _min_snr_weights(scheduler, t)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        bar.update(1)
        if step % 50 == 0 or step == cfg.ip_steps:
            stage.log(step=step, loss=loss.item())
            bar.set_postfix(loss=f"{loss.item():.4f}")
        trained = {n: p for n, p in unet.state_dict().items() if "_ip" in n or "encoder_hid_proj" in n}
        stage.save({"model": trained, "opt": opt.state_dict(), "gen": gen.get_state(), "step": step})
    weights = extract_ip_adapter(unet)
    torch.save(weights, stage.dir / "ip_adapter.pt")
    stage.mark_done(steps=step)
    return weights


def extract_ip_adapter(unet) -> dict[str, dict]:
    """Read the trained IP-Adapter back out of a UNet into the ``load_ip_adapter`` layout."""
    projection = unet.encoder_hid_proj.image_projection_layers[0]
    ip_layers = {}
    for k, (name, processor) in enumerate((n, p) for n, p in unet.attn_processors.items() if n.endswith("attn2.processor")):
        ip_layers[f"{2 * k + 1}.to_k_ip.weight"] = processor.to_k_ip[0].weight.detach().clone()
        ip_layers[f"{2 * k + 1}.to_v_ip.weight"] = processor.to_v_ip[0].weight.detach().clone()
    image_proj = {k.replace("image_embeds", "proj"): v.detach().clone() for k, v in projection.state_dict().items()}
    return {"image_proj": image_proj, "ip_adapter": ip_layers}


# --------------------------------------------------------------------------------------------------------------
# Export and entry point
# --------------------------------------------------------------------------------------------------------------


def export(cfg: TrainConfig, vae, scaling_factor: float, text_encoder, unet, clip, ip_weights, tokenizer,
           steps: dict | None = None, latent_clip_range: float = 1.0, provenance: str = "") -> Path:
    """Write the diffusers layout: the SD pipeline folders, plus clip/ and ip_adapter/ beside them; ``provenance``
    is a line for the model card."""
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor

    from .world import VOCABULARY

    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    vae.register_to_config(scaling_factor=scaling_factor)
    # The image processor the CLIP was trained with (pixels / 127.5 - 1 at full size), saved with the pipeline so
    # load_ip_adapter keeps it instead of creating one with OpenAI CLIP's normalisation and a 224 px crop.
    size = cfg.sizes.image_size
    processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                   image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    pipe = StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=make_unet(cfg.sizes).eval(),
        scheduler=make_scheduler(),
        safety_checker=None,
        feature_extractor=processor,
        image_encoder=None,
        requires_safety_checker=False,
    )
    pipe.unet.load_state_dict(unet.state_dict())
    pipe.save_pretrained(out, safe_serialization=True)
    clip.save_pretrained(out / "clip", safe_serialization=True)
    tokenizer.save_pretrained(out / "clip")
    ip_dir = out / "ip_adapter"
    vision_tower(clip).save_pretrained(ip_dir / "image_encoder", safe_serialization=True)
    flat = {f"image_proj.{k}": v.contiguous() for k, v in ip_weights["image_proj"].items()}
    flat |= {f"ip_adapter.{k}": v.contiguous() for k, v in ip_weights["ip_adapter"].items()}
    save_file(flat, ip_dir / "ip-adapter_shapeworld.safetensors")
    n_levels = len(cfg.sizes.unet_channels)
    latent = cfg.sizes.latent_size
    info = {
        "name": cfg.name,
        "image_size": cfg.sizes.image_size,
        "graph_resolution": latent // 2 ** cfg.graph_level,
        "mask_resolution": latent // 2 ** (cfg.graph_level + 1),
        "unet_levels": n_levels,
        "vocabulary": list(VOCABULARY),
        "sizes": cfg.sizes.to_dict(),
        "seed": cfg.seed,
        "steps": steps or {},
        "scaling_factor": scaling_factor,
        "latent_clip_range": latent_clip_range,
    }
    (out / "locatedit.json").write_text(json.dumps(info, indent=2))
    (out / "README.md").write_text(MODEL_CARD.format(name=cfg.name, steps=json.dumps(steps or {}),
                                                     sizes=json.dumps(cfg.sizes.to_dict()), provenance=provenance))
    return out


MODEL_CARD = """# {name}

A Stable-Diffusion-architecture model (AutoencoderKL, UNet2DConditionModel, CLIPTextModel, a small CLIPModel and an
IP-Adapter) trained by `python -m locatedit.shapeworld train` on ShapeWorld scenes (`locatedit/shapeworld/world.py`).

- Steps per stage: {steps}
- Sizes: {sizes}
- Stages: VAE (L1 + MSE + KL, crops then full images) -> latents -> small CLIP (contrastive) -> UNet + text encoder
  (epsilon, min-SNR, EMA, 10 % caption dropout) -> grounding (the same objective plus TokenCompose's token loss on
  the ground-truth object masks, so each object word's cross-attention falls on its object and each background word's
  on the background; self-attention is never supervised) -> binding (the text encoder's causal layer, an identity
  until then, is switched on so a noun can carry its adjectives; offset noise 0.1 so the mean colour comes from the
  caption; token loss kept) -> coverage (TokenCompose's pixel loss added, so a word's map covers its whole region
  rather than peaking at its centre) -> polish (the coverage objective again with a fresh warm-up and decay) ->
  IP-Adapter against the frozen UNet (image key/value weights start as copies of the text ones; 50 % caption
  dropout, 10 % zeroed image embeddings, offset noise).{provenance}
- Quality gates: `python benchmarks/bench_shapeworld.py`; loss logs and curves in `training/`.
"""


def train(cfg: TrainConfig) -> Path:
    torch.manual_seed(cfg.seed)
    cfg.work.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    data = make_dataset(cfg)
    vae = train_vae(cfg, data)
    latents = encode_latents(cfg, vae, data)
    clip = train_clip(cfg, data, tokenizer)
    denoisers = [n for n in DENOISER_STAGES if n == "unet" or getattr(cfg, f"{n}_steps") > 0]
    for before, name in zip(denoisers, denoisers[1:]):
        if DENOISER_STAGES[name].init_from != before:
            start = DENOISER_STAGES[name].init_from
            raise ValueError(f"the {name} stage continues the {start} stage: set {start}_steps > 0")
    grounding = make_grounding_targets(cfg, data) if len(denoisers) > 1 else None
    for k, name in enumerate(denoisers):
        if any(Stage(cfg.work, later).done for later in denoisers[k + 1 :]):
            continue  # a later stage is finished (or imported), so this one's weights are not needed
        unet, text_encoder = train_unet(cfg, data, latents, tokenizer, name,
                                        grounding if DENOISER_STAGES[name].grounded else None)
    ip_weights = train_ip_adapter(cfg, data, latents, tokenizer, unet, text_encoder, clip)
    stages = ["vae", "clip", *denoisers, "ip_adapter"]
    infos = {s: Stage(cfg.work, s).info() for s in stages}
    imported = {s: info["imported_from"] for s, info in infos.items() if "imported_from" in info}
    steps = {s: info.get("steps") for s, info in infos.items()}
    provenance = (f"\n- Stages {', '.join(imported)} were imported (`--from-export`) from an earlier export at "
                  f"{', '.join(sorted(set(imported.values())))}; the later ones were trained on top of them."
                  if imported else "")
    # The clamp range of x0-predictions: the largest scaled training latent, so the source branch (whose
    # x0-prediction is the true x_0) is never clipped. SD 1.5's own range is the reference's 1.
    clip_range = math.ceil(10 * float(latents["mean"].float().abs().max()) * latents["scaling_factor"]) / 10
    # A fresh tokenizer: batched training calls leave fixed padding set in the fast tokenizer's state, which
    # save_pretrained would write out (and every later un-padded call would come back padded).
    out = export(cfg, vae, latents["scaling_factor"], text_encoder, unet, clip, ip_weights, build_tokenizer(), steps,
                 clip_range, provenance)
    write_curves(cfg.work)
    # The logs and curves travel with the weights, so the model folder says how it was made.
    (out / "training").mkdir(exist_ok=True)
    for stage in stages:
        shutil.copyfile(cfg.work / stage / "log.jsonl", out / "training" / f"{stage}.jsonl")
    shutil.copyfile(cfg.work / "curves.html", out / "training" / "curves.html")
    return out


def import_export(cfg: TrainConfig, model_dir: Path) -> list[str]:
    """Start a work folder from an exported model, so later stages can be (re)trained without the hours before them:
    its VAE, small CLIP and UNet + text encoder become the finished vae, clip and last denoiser stage it was trained
    with (earlier ones are marked done as part of it); their logs come along. Latents are re-encoded and later
    stages retrained.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPModel, CLIPTextModel

    info = json.loads((model_dir / "locatedit.json").read_text())
    trained = info.get("steps", {})
    denoisers = [n for n in DENOISER_STAGES if n in trained]
    missing = [s for s in ("vae", "clip", "unet") if s not in trained]
    if missing:
        raise ValueError(f"{model_dir} has no trained {', '.join(missing)} stage(s) to import (steps: {trained})")
    if any(Stage(cfg.work, s).done or (cfg.work / s / "ckpt.pt").exists() for s in STAGES):
        raise ValueError(f"{cfg.work} already holds training stages; import into an empty work folder")
    cfg.work.mkdir(parents=True, exist_ok=True)
    vae = AutoencoderKL.from_pretrained(model_dir / "vae")
    torch.save(vae.state_dict(), Stage(cfg.work, "vae").dir / "vae.pt")
    torch.save(CLIPModel.from_pretrained(model_dir / "clip").state_dict(), Stage(cfg.work, "clip").dir / "clip.pt")
    tokenizer = build_tokenizer()
    text_encoder = make_text_encoder(cfg.sizes, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id)
    make_text_layers_identity(text_encoder)
    result = text_encoder.load_state_dict(CLIPTextModel.from_pretrained(model_dir / "text_encoder").state_dict(),
                                          strict=False)
    layer_keys = {k for k in text_encoder.state_dict() if "encoder.layers." in k}
    if result.unexpected_keys or not set(result.missing_keys) <= layer_keys:
        raise ValueError(f"{model_dir}'s text encoder does not fit sizes {cfg.sizes}: {result}")
    models = torch.nn.ModuleDict({"unet": UNet2DConditionModel.from_pretrained(model_dir / "unet"),
                                  "text_encoder": text_encoder})
    torch.save(models.state_dict(), Stage(cfg.work, denoisers[-1]).dir / "ema.pt")
    imported = ["vae", "clip", *denoisers]
    for name in imported:
        stage = Stage(cfg.work, name)
        log = model_dir / "training" / f"{name}.jsonl"
        if log.exists():
            shutil.copyfile(log, stage.dir / "log.jsonl")
        stage.mark_done(steps=trained[name], imported_from=str(model_dir))
    return imported


def write_curves(work: Path) -> Path:
    """One HTML page with every stage's loss curve (plotly; no image backend needed)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    stages = [s for s in STAGES if (work / s / "log.jsonl").exists()]
    fig = make_subplots(rows=1, cols=max(1, len(stages)), subplot_titles=stages)
    for col, name in enumerate(stages, start=1):
        rows = [json.loads(line) for line in (work / name / "log.jsonl").read_text().splitlines() if line]
        fig.add_trace(go.Scatter(x=[r["step"] for r in rows], y=[r["loss"] for r in rows], name=name), row=1, col=col)
        fig.update_yaxes(type="log", row=1, col=col)
    path = work / "curves.html"
    fig.write_html(path, include_plotlyjs="cdn")
    return path


TINY = dict(text_width=32, clip_width=32, clip_projection=32, text_layers=1, clip_layers=1)
TINY_LADDERS = {
    # ShapeWorld's own ladder: 64 px, VAE x4, UNet levels 16/8/4 -> S at 16x16, m0 at 8x8
    "shapeworld": ModelSizes(vae_channels=(16, 16, 16), unet_channels=(32, 32, 32), **TINY),
    # SD 1.5's ladder at 1/4 scale: 128 px, VAE x8, UNet levels 16/8/4/2, 2 layers per block -> S from the 5
    # self-attention layers at level 1 (8x8), m0 from the 5 cross-attention layers at level 2 (4x4), like SD's 32/16
    "sd15": ModelSizes(vae_channels=(16, 16, 16, 16), unet_channels=(32, 32, 32, 32), layers_per_block=2,
                       image_size=128, **TINY),
}


def export_untrained(out: Path, seed: int = 0, ladder: str = "shapeworld") -> Path:
    """A randomly initialised model in the same layout: the seeded tiny fixture of mechanics tests."""
    torch.manual_seed(seed)
    sizes = TINY_LADDERS[ladder]
    cfg = TrainConfig(out=Path(out), sizes=sizes, seed=seed, name=f"tiny-{ladder}", graph_level=1 if ladder == "sd15" else 0)
    tokenizer = build_tokenizer()
    unet = make_unet(sizes)
    text_encoder = make_text_encoder(sizes, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id)
    clip = make_clip(sizes, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id)
    ip_weights = new_ip_adapter_state_dict(unet, sizes.clip_projection, seed=seed)
    return export(cfg, make_vae(sizes), 1.0, text_encoder, unet, clip, ip_weights, tokenizer, {"untrained": 0})
