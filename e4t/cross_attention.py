"""Recording the UNet's cross-attention maps of chosen prompt tokens, through diffusers' attention-processor API.

Break-A-Scene's attention loss (Avrahami et al. 2023, sec. 3.2) compares where each handle token
is attended to with its subject's mask. `record_cross_attention(unet, resolution)` swaps in a
processor on every cross-attention layer (`attn2`) for the duration of a `with` block; it computes
attention exactly as diffusers' `AttnProcessor` does and keeps, for the layers whose query grid is
`resolution` x `resolution`, the attention probabilities (with their autograd graph, so a loss on
them trains the token embeddings and the q/k weights). The UNet's own processors come back on exit.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from diffusers.models.attention_processor import Attention


class CrossAttentionStore:
    """Attention probabilities [B, heads, H*W, L] of the recorded layers, since the last `clear()`."""

    def __init__(self, resolution: int):
        self.resolution = resolution
        self.probs: list[torch.Tensor] = []

    def clear(self) -> None:
        self.probs = []

    def maps(self) -> torch.Tensor:
        """[B, L, res, res]: every token's attention over the grid, averaged over heads and recorded layers."""
        if not self.probs:
            raise RuntimeError(f"no cross-attention at {self.resolution}x{self.resolution} was recorded")
        mean = torch.stack([p.mean(1) for p in self.probs]).mean(0)  # [B, H*W, L]
        b, _, length = mean.shape
        return mean.transpose(1, 2).reshape(b, length, self.resolution, self.resolution)


class RecordingAttnProcessor:
    """diffusers' `AttnProcessor` (attention probabilities made explicit), recording them at one grid size."""

    def __init__(self, store: CrossAttentionStore):
        self.store = store

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch, sequence, _ = hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence, batch)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        probs = attn.get_attention_scores(attn.head_to_batch_dim(query), key, attention_mask)  # [B*heads, HW, L]
        if probs.shape[1] == self.store.resolution**2:
            self.store.probs.append(probs.view(-1, attn.heads, *probs.shape[1:]))
        hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def cross_attention_resolutions(unet) -> list[int]:
    """Query grid sides of the UNet's cross-attention layers, finest first (e.g. [8, 4] for 16x16 latents)."""
    size, sides = unet.config.sample_size, set()
    for i, block in enumerate(unet.config.down_block_types):
        if "CrossAttn" in block:
            sides.add(size // 2**i)
    return sorted(sides, reverse=True)


@contextmanager
def record_cross_attention(unet, resolution: int) -> Iterator[CrossAttentionStore]:
    """While active, every cross-attention layer at `resolution` x `resolution` records into the yielded store."""
    available = cross_attention_resolutions(unet)
    if resolution not in available:
        raise ValueError(f"the UNet has cross-attention at {available} (grid sides), not at {resolution}")
    store = CrossAttentionStore(resolution)
    original = unet.attn_processors
    recorder = RecordingAttnProcessor(store)
    unet.set_attn_processor({name: recorder if ".attn2." in name else p for name, p in original.items()})
    try:
        yield store
    finally:
        unet.set_attn_processor(original)


def attention_mask_loss(
    maps: torch.Tensor, positions: Sequence[Sequence[int]], masks: Sequence[Sequence[torch.Tensor]]
) -> torch.Tensor:
    """Mean squared error between each listed token's attention map, scaled to a peak of 1, and its mask.

    `maps` [B, L, r, r] from `CrossAttentionStore.maps`; for sample b, `positions[b][j]` is a token
    index and `masks[b][j]` [r, r] in [0, 1] the region it should attend to (Break-A-Scene's L_attn).
    """
    terms = []
    for b, (where, regions) in enumerate(zip(positions, masks, strict=True)):
        for position, region in zip(where, regions, strict=True):
            attention = maps[b, position]
            attention = attention / attention.max().clamp(min=1e-8)
            terms.append((attention - region.to(attention)).pow(2).mean())
    if not terms:
        raise ValueError("no token was given to compare with a mask")
    return torch.stack(terms).mean()
