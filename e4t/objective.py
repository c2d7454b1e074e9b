"""The E4T training objective, shared by domain pretraining and inference-time tuning.

Diffusion loss on prompts like "a photo of {S}" where S's embedding is the class word's
embedding plus the encoder's offset, with L2 penalties on the offset and on the weight
offsets (Gal et al. 2023, sec. 4).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from e4t.base import Base
from e4t.encoder import E4TEncoder, unet_features
from e4t.offsets import TUNE, offsets_penalty
from e4t.prompts import encode_prompts, word_embedding

PLACEHOLDER = "S"


def diffusion_target(
    scheduler: DDPMScheduler, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """What the UNet is trained to predict for `latents` noised with `noise` at `t`: v or the noise itself."""
    if scheduler.config.prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, t)
    return noise


def image_error_scale(alphas_cumprod: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """Per noise level, what turns the UNet's squared error into that of the image it implies.

    The epsilon error is SNR x the image error and the v error (SNR + 1) x, so the factor is 1 / SNR or
    1 / (SNR + 1): one yardstick for UNets that predict either.
    """
    snr = alphas_cumprod / (1 - alphas_cumprod)
    return 1 / (snr + 1 if prediction_type == "v_prediction" else snr)


@dataclass(frozen=True)
class LossWeights:
    embedding: float = 0.01  # L2 on the predicted embedding offset, as in the paper's pretraining
    offsets: float = 1e-3  # L2 on the weight offsets B @ A

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class NoisedBatch:
    pixels: torch.Tensor
    noisy: torch.Tensor
    target: torch.Tensor
    timesteps: torch.Tensor


class E4TObjective:
    """Everything the loss needs from the frozen base, computed once per base."""

    def __init__(self, base: Base, class_word: str, weights: LossWeights = LossWeights()):
        self.base = base
        self.class_word = class_word
        self.weights = weights
        self.noise_scheduler = DDPMScheduler.from_config(base.scheduler.config)
        with torch.no_grad():
            self.class_embedding = word_embedding(base.text_encoder, base.tokenizer, class_word).clone()
            self.class_states = encode_prompts(base.text_encoder, base.tokenizer, [f"a photo of a {class_word}"], {})

    def noise(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> NoisedBatch:
        vae = self.base.vae
        pixels = pixels.to(vae.device)  # batches come from the CPU reader; the encoder reads these too
        with torch.no_grad():
            posterior = vae.encode(pixels.to(vae.dtype)).latent_dist
            latents = posterior.sample(generator) * vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
        steps = self.noise_scheduler.config.num_train_timesteps
        t = torch.randint(0, steps, (latents.shape[0],), generator=generator, device=latents.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, t)
        target = diffusion_target(self.noise_scheduler, latents, noise, t)
        return NoisedBatch(pixels=pixels, noisy=noisy, target=target, timesteps=t)

    def predict_offset(self, encoder: E4TEncoder, batch: NoisedBatch) -> torch.Tensor:
        """The encoder's embedding offset [B, D]; the UNet branch sees the noised latent."""
        with torch.no_grad():
            states = self.class_states.expand(batch.noisy.shape[0], -1, -1)
            features = unet_features(self.base.unet, batch.noisy, batch.timesteps, states)
        return encoder(batch.pixels, features)

    def loss(
        self,
        batch: NoisedBatch,
        embeddings: torch.Tensor,
        prompts: Sequence[str],
        offset: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        adapter: str = TUNE,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Diffusion loss of `prompts` (naming {S}) with S = `embeddings` [B, D], plus the penalties.

        `offset`: the encoder's raw offset, penalized when given. `mask`: [B, 1, H, W] in [0, 1]
        restricts the loss to the subject.
        """
        base = self.base
        states = encode_prompts(base.text_encoder, base.tokenizer, prompts, [{PLACEHOLDER: e} for e in embeddings])
        prediction = base.unet(batch.noisy, batch.timesteps, encoder_hidden_states=states).sample
        error = F.mse_loss(prediction.float(), batch.target.float(), reduction="none")
        if mask is not None:
            m = F.interpolate(mask.to(error.device), size=error.shape[-2:], mode="bilinear", align_corners=False)
            diffusion = (error * m).sum() / (m.sum() * error.shape[1]).clamp(min=1.0)
        else:
            diffusion = error.mean()
        total = diffusion
        if self.weights.offsets:  # 0 for methods without offsets (Textual Inversion): the UNet may have no adapter
            total = total + self.weights.offsets * offsets_penalty(base.unet, adapter)
        parts = {"diffusion": diffusion.item()}
        if offset is not None:
            reg = offset.pow(2).sum(-1).mean()
            total = total + self.weights.embedding * reg
            parts["embedding_l2"] = reg.item()
        return total, parts

    def subject_prompts(self, captions: Sequence[str]) -> list[str]:
        """Captions with the first "a <class word>" replaced by the placeholder: "a photo of {S} on the beach"."""
        subject = f"a {self.class_word}"
        out = []
        for caption in captions:
            if subject in caption:
                out.append(caption.replace(subject, "{" + PLACEHOLDER + "}", 1))
            else:
                out.append(f"a photo of {{{PLACEHOLDER}}}")
        return out
