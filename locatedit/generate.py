"""Text-to-image with per-token cross-attention maps: the model on its own, for teaching and for checking it."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .attention import CrossAttentionSum, layer_resolutions
from .loading import LoadedModel


@dataclass
class Generation:
    image: Image.Image
    tokens: list[str]  # one per map column, BOS/EOS/padding dropped
    maps: dict[int, np.ndarray]  # resolution -> (tokens, res, res), mean over layers, heads and steps


def generate(
    model: LoadedModel,
    prompt: str,
    seed: int = 1,
    steps: int = 50,
    guidance: float = 5.0,
    ip_image: Image.Image | None = None,
    ip_scale: float = 0.0,
) -> Generation:
    model.spec.check_prompt(prompt)
    pipe = model.pipe
    resolutions = layer_resolutions(pipe.unet)
    keep = {model.spec.graph_resolution, model.spec.mask_resolution}
    recorder = CrossAttentionSum(resolutions, keep, conditional_half=guidance > 1.0)
    pipe.set_ip_adapter_scale(ip_scale)
    size = model.spec.image_size
    image_kwargs = {"ip_adapter_image": ip_image} if ip_image is not None else {
        "ip_adapter_image_embeds": [torch.zeros(2 if guidance > 1 else 1, 1, model.clip.config.projection_dim,
                                                device=model.device, dtype=pipe.unet.dtype)]
    }
    with torch.no_grad():
        image = pipe(
            prompt,
            height=size,
            width=size,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=torch.Generator(device="cpu").manual_seed(seed),
            cross_attention_kwargs={"controller": recorder},
            **image_kwargs,
        ).images[0]
    ids = pipe.tokenizer(prompt).input_ids
    words = [t.removesuffix("</w>") for t in pipe.tokenizer.convert_ids_to_tokens(ids)[1:-1]]
    maps = {}
    for res, total in recorder.maps.items():
        mean = (total / recorder.calls[res])[0]  # (res*res, tokens)
        maps[res] = mean[:, 1 : 1 + len(words)].T.reshape(len(words), res, res).cpu().numpy()
    return Generation(image, words, maps)


def attention_sheet(gen: Generation, scale: int = 4) -> Image.Image:
    """The image beside one min-max-normalised map per token and resolution, upsampled to the image's size."""
    size = gen.image.size[0] * scale // 2
    tiles = [gen.image.resize((size, size), Image.NEAREST)]
    for res in sorted(gen.maps):
        for m in gen.maps[res]:
            norm = (m - m.min()) / (np.ptp(m) + 1e-8)
            tiles.append(Image.fromarray((norm * 255).astype(np.uint8)).resize((size, size), Image.NEAREST).convert("RGB"))
    rows = 1 + len(gen.maps)
    cols = max(1, len(gen.tokens))
    sheet = Image.new("RGB", (size * (cols + 1), size * (rows - 1 or 1)), "white")
    sheet.paste(tiles[0], (0, 0))
    for i, tile in enumerate(tiles[1:]):
        r, c = divmod(i, cols)
        sheet.paste(tile, (size * (c + 1), size * r))
    return sheet
