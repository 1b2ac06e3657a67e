"""Attention processors that hand attention probabilities to a per-call controller, only where it asks for them.

diffusers' default processor uses fused SDPA and never forms the probabilities. These processors do exactly what
``AttnProcessor2_0`` / ``IPAdapterAttnProcessor2_0`` do, except that for the layers a controller ``wants`` they form
``softmax(QK^T / sqrt(d))`` explicitly, pass it to the controller (which may record or edit it, as Prompt-to-Prompt
does) and multiply the returned probabilities by V. Every other layer keeps SDPA, so memory stays small.

The controller arrives per call through ``cross_attention_kwargs={"controller": ...}``, so a cached pipeline holds
no per-user state. Install the processors last: ``load_ip_adapter`` and attention slicing replace processors.
"""
from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, IPAdapterAttnProcessor2_0

SELF, CROSS, IP = "self", "cross", "ip"


class AttentionController(Protocol):
    def wants(self, layer: str, kind: str, query_len: int) -> bool:
        """Whether this layer's probabilities (kind: "self", "cross" or "ip") should be formed and passed on."""

    def __call__(self, layer: str, kind: str, probs: torch.Tensor) -> torch.Tensor:
        """Receive probabilities (batch, heads, queries, keys); return the ones to use (the same or edited)."""


def _attend(
    attn: Attention,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    controller: AttentionController | None,
    layer: str,
    kind: str,
) -> torch.Tensor:
    """(batch, heads, Q, d) x (batch, heads, K, d) -> (batch, Q, heads*d), explicit where the controller wants."""
    batch, heads, queries, dim = query.shape
    if controller is not None and controller.wants(layer, kind, queries):
        scores = torch.matmul(query, key.transpose(-1, -2)) * attn.scale
        if mask is not None:
            scores = scores + mask
        probs = controller(layer, kind, scores.softmax(dim=-1))
        out = torch.matmul(probs.to(value.dtype), value)
    else:
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=0.0, is_causal=False)
    return out.transpose(1, 2).reshape(batch, queries, heads * dim).to(query.dtype)


def _heads(attn: Attention, x: torch.Tensor, batch: int) -> torch.Tensor:
    return x.view(batch, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)


class _Recording:
    """The shared body of both processors; ``ip`` holds IP-Adapter weights for cross-attention layers."""

    layer: str

    def _forward(self, attn, hidden_states, encoder_hidden_states, attention_mask, temb, controller, ip_scales):
        ip_states: list[torch.Tensor] = []
        if isinstance(encoder_hidden_states, tuple):
            encoder_hidden_states, ip_states = encoder_hidden_states
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        four_d = hidden_states.ndim == 4
        if four_d:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch = hidden_states.shape[0]
        context_len = (hidden_states if encoder_hidden_states is None else encoder_hidden_states).shape[1]
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, context_len, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        kind = SELF if encoder_hidden_states is None else CROSS
        query = _heads(attn, attn.to_q(hidden_states), batch)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = _heads(attn, attn.to_k(encoder_hidden_states), batch)
        value = _heads(attn, attn.to_v(encoder_hidden_states), batch)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        out = _attend(attn, query, key, value, attention_mask, controller, self.layer, kind)

        for states, scale, to_k, to_v in zip(ip_states, ip_scales, self.to_k_ip, self.to_v_ip):
            if scale == 0:
                continue
            ip_key, ip_value = _heads(attn, to_k(states), batch), _heads(attn, to_v(states), batch)
            out = out + scale * _attend(attn, query, ip_key, ip_value, None, controller, self.layer, IP)

        out = attn.to_out[1](attn.to_out[0](out))
        if four_d:
            out = out.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


class RecordingAttnProcessor(_Recording):
    """Replaces ``AttnProcessor2_0`` (self-attention, and cross-attention without IP-Adapter)."""

    to_k_ip: tuple = ()
    to_v_ip: tuple = ()

    def __init__(self, layer: str = ""):
        self.layer = layer

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        controller: AttentionController | None = None,
    ) -> torch.Tensor:
        return self._forward(attn, hidden_states, encoder_hidden_states, attention_mask, temb, controller, ())


class RecordingIPAttnProcessor(_Recording, IPAdapterAttnProcessor2_0):
    """Replaces ``IPAdapterAttnProcessor2_0``; a subclass, so ``set_ip_adapter_scale`` keeps working."""

    def __init__(self, hidden_size=None, cross_attention_dim=None, num_tokens=(4,), scale=1.0, layer: str = ""):
        IPAdapterAttnProcessor2_0.__init__(self, hidden_size, cross_attention_dim, num_tokens, scale)
        self.layer = layer

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states=None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        controller: AttentionController | None = None,
    ) -> torch.Tensor:
        return self._forward(attn, hidden_states, encoder_hidden_states, attention_mask, temb, controller, self.scale)


def install_recorders(unet) -> None:
    """Swap every processor of ``unet`` for its recording twin (IP-Adapter weights carried over)."""
    processors = {}
    for name, old in unet.attn_processors.items():
        layer = name.removesuffix(".processor")
        if isinstance(old, IPAdapterAttnProcessor2_0):
            new = RecordingIPAttnProcessor(old.hidden_size, old.cross_attention_dim, old.num_tokens, old.scale, layer)
            new.load_state_dict(old.state_dict())
            param = next(old.parameters())
            processors[name] = new.to(device=param.device, dtype=param.dtype)
        else:
            processors[name] = RecordingAttnProcessor(layer)
    unet.set_attn_processor(processors)


def layer_resolutions(unet, sample_size: int | None = None) -> dict[str, int]:
    """Side length of the square feature map each attention layer sees, from the UNet's block structure.

    Used to choose layers by resolution (S from self-attention at the graph resolution, m0 from cross-attention at
    half of it) rather than by hard-coded indices, so SD 1.5 and ShapeWorld share one code path.
    """
    size = sample_size or unet.config.sample_size
    n_down = len(unet.config.down_block_types)
    resolutions = {}
    for name in unet.attn_processors:
        layer = name.removesuffix(".processor")
        block, index = layer.split(".")[0], layer.split(".")[1]
        if block == "down_blocks":
            level = int(index)
        elif block == "up_blocks":
            level = n_down - 1 - int(index)
        else:  # mid_block
            level = n_down - 1
        resolutions[layer] = size // (2**level)
    return resolutions


class CrossAttentionSum:
    """Controller that sums text cross-attention (conditional half, mean over heads) per resolution over steps.

    Used for text-to-image maps: ``maps[res]`` is (batch, res*res, tokens); divide by ``calls[res]`` for a mean.
    """

    def __init__(self, resolutions: dict[str, int], keep: set[int], conditional_half: bool = True):
        self.resolutions, self.keep, self.conditional_half = resolutions, keep, conditional_half
        self.maps: dict[int, torch.Tensor] = {}
        self.calls: dict[int, int] = {}

    def wants(self, layer: str, kind: str, query_len: int) -> bool:
        return kind == CROSS and self.resolutions[layer] in self.keep

    def __call__(self, layer: str, kind: str, probs: torch.Tensor) -> torch.Tensor:
        res = self.resolutions[layer]
        part = probs[probs.shape[0] // 2 :] if self.conditional_half else probs
        mean = part.mean(dim=1).detach().float()
        self.maps[res] = self.maps[res] + mean if res in self.maps else mean
        self.calls[res] = self.calls.get(res, 0) + 1
        return probs
