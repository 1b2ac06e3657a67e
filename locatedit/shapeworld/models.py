"""The ShapeWorld model's components: the same diffusers/transformers classes as SD 1.5 + IP-Adapter, scaled down.

Image 64x64 -> latent 4x16x16 (VAE factor 4). The UNet has cross-attention at 16x16 and 8x8, the same 2:1 ratio SD
1.5 uses at 32x32 (self-attention S, the CASA graph) and 16x16 (cross-attention m0), so the graph has 256 nodes.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from diffusers.models.embeddings import ImageProjection
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

from .tokenizer import MAX_LENGTH
from .world import IMAGE_SIZE

IP_TOKENS = 4  # image tokens per embedding, as in IP-Adapter for SD 1.5


@dataclass
class ModelSizes:
    """Widths of every component; the defaults are the trained model's."""

    vae_channels: tuple[int, ...] = (32, 64, 64)
    unet_channels: tuple[int, ...] = (32, 64, 128)
    unet_heads: int = 4
    text_width: int = 128
    # One causal layer, switched on only in the "binding" stage (before it, it is an exact identity and frozen): each
    # token's state starts as its own word (+ position), so grounding ties every word to its region first, and the
    # layer then lets a noun carry the adjectives before it ("blue striped background"), which a context-free encoder
    # can only bind by position. A 2-layer causal encoder trained jointly from scratch, without grounding, routed the
    # object's information through the later tokens ("on a blue background" lit up the object; IoU 0.07).
    text_layers: int = 1
    clip_width: int = 64
    clip_layers: int = 2
    clip_projection: int = 64
    layers_per_block: int = 1  # SD 1.5 uses 2 (then 2 attention layers per down level and 3 per up level)
    image_size: int = IMAGE_SIZE

    @property
    def latent_size(self) -> int:
        return self.image_size // 2 ** (len(self.vae_channels) - 1)

    def to_dict(self) -> dict:
        return asdict(self)


def make_vae(sizes: ModelSizes) -> AutoencoderKL:
    depth = len(sizes.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * depth,
        up_block_types=("UpDecoderBlock2D",) * depth,
        block_out_channels=sizes.vae_channels,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=sizes.image_size,
        mid_block_add_attention=False,  # fully convolutional, so training on crops matches full images
    )


def make_text_encoder(sizes: ModelSizes, vocab_size: int, bos: int, eos: int) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=sizes.text_width,
        intermediate_size=4 * sizes.text_width,
        num_hidden_layers=sizes.text_layers,
        num_attention_heads=4,
        max_position_embeddings=MAX_LENGTH,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=eos,
        projection_dim=sizes.clip_projection,
    )
    return CLIPTextModel(config)


def text_encoder_layers(text_encoder: CLIPTextModel) -> torch.nn.ModuleList:
    return getattr(text_encoder, "text_model", text_encoder).encoder.layers  # transformers 5 dropped text_model


def make_text_layers_identity(text_encoder: CLIPTextModel) -> None:
    """Zero every layer's output projections: each residual block then adds nothing (the ControlNet trick), so the
    encoder computes exactly what a 0-layer one does and training can switch the layers on gradually."""
    with torch.no_grad():
        for layer in text_encoder_layers(text_encoder):
            for linear in (layer.self_attn.out_proj, layer.mlp.fc2):
                linear.weight.zero_()
                linear.bias.zero_()


def make_unet(sizes: ModelSizes) -> UNet2DConditionModel:
    levels = len(sizes.unet_channels)  # cross-attention on every level but the lowest, as in SD 1.5
    return UNet2DConditionModel(
        sample_size=sizes.latent_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1),
        block_out_channels=sizes.unet_channels,
        layers_per_block=sizes.layers_per_block,
        attention_head_dim=sizes.unet_heads,  # diffusers' legacy name: this is the number of heads
        cross_attention_dim=sizes.text_width,
        norm_num_groups=32,
    )


def make_scheduler() -> DDIMScheduler:
    """SD 1.5's noise schedule."""
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        num_train_timesteps=1000,
    )


def make_clip(sizes: ModelSizes, vocab_size: int, bos: int, eos: int) -> CLIPModel:
    """The small CLIP: plays the role of LAION ViT-H for the IP-Adapter image embedding and the text offset."""
    text = make_text_encoder(sizes, vocab_size, bos, eos).config
    text.hidden_size = sizes.clip_width
    text.intermediate_size = 4 * sizes.clip_width
    text.num_hidden_layers = sizes.clip_layers
    vision = CLIPVisionConfig(
        hidden_size=sizes.clip_width,
        intermediate_size=4 * sizes.clip_width,
        num_hidden_layers=sizes.clip_layers,
        num_attention_heads=4,
        image_size=sizes.image_size,
        patch_size=sizes.image_size // 8,
        projection_dim=sizes.clip_projection,
    )
    config = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=sizes.clip_projection)
    return CLIPModel(config)


def vision_tower(clip: CLIPModel) -> CLIPVisionModelWithProjection:
    """The image encoder IP-Adapter loads: CLIP's vision tower and projection, sharing the trained weights."""
    encoder = CLIPVisionModelWithProjection(clip.config.vision_config)
    encoder.config.projection_dim = clip.config.projection_dim
    encoder.visual_projection = torch.nn.Linear(clip.config.vision_config.hidden_size, clip.config.projection_dim, bias=False)
    encoder.vision_model.load_state_dict(clip.vision_model.state_dict())
    encoder.visual_projection.load_state_dict(clip.visual_projection.state_dict())
    return encoder


def cross_attention_layers(unet: UNet2DConditionModel) -> list[str]:
    """attn2 processor names in ``unet.attn_processors`` order, the order IP-Adapter's weights are numbered in."""
    return [name for name in unet.attn_processors if name.endswith("attn2.processor")]


def new_ip_adapter_state_dict(unet: UNet2DConditionModel, embed_dim: int, seed: int = 0) -> dict[str, dict]:
    """A fresh IP-Adapter in the layout ``load_ip_adapter`` reads (image_proj + ip_adapter.{k}).

    Each layer's image key/value weights start as a copy of its text key/value weights, as IP-Adapter's own training
    does: the image tokens then start out read like words, so the adapter only has to learn to project the image
    embedding into word-like tokens, and the queries that the grounded UNet already points at an object's word can
    find the image token that describes it. The projection is seeded by ``seed``.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        projection = ImageProjection(image_embed_dim=embed_dim, cross_attention_dim=unet.config.cross_attention_dim,
                                     num_image_text_embeds=IP_TOKENS)
    ip_layers: dict[str, torch.Tensor] = {}
    modules = dict(unet.named_modules())
    for k, name in enumerate(cross_attention_layers(unet)):
        attention = modules[name.removesuffix(".processor")]
        ip_layers[f"{2 * k + 1}.to_k_ip.weight"] = attention.to_k.weight.detach().clone()
        ip_layers[f"{2 * k + 1}.to_v_ip.weight"] = attention.to_v.weight.detach().clone()
    # The original IP-Adapter checkpoint names ("proj", "norm"), which the loader converts to diffusers' names.
    image_proj = {k.replace("image_embeds", "proj"): v for k, v in projection.state_dict().items()}
    return {"image_proj": image_proj, "ip_adapter": ip_layers}
