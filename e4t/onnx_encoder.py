"""The E4T encoder on ONNX Runtime: the whole 0-step guess as one graph.

The graph takes the image and the random draws of one guess and returns the encoder's offset
and the resulting token embedding, per sample:

    pixels        [B, 3, H, W]  float32 in [-1, 1], H = W = the base's resolution
    latent_noise  [B, C, h, w]  float32, N(0, 1): the VAE posterior's sample
    noise         [B, C, h, w]  float32, N(0, 1): the diffusion noise
    timesteps     [B]           int64 in [0, num_train_timesteps)
 -> offset        [B, D]        the encoder's scaled offset
    token_embedding [B, D]      class-word embedding + offset; the guess is its mean over B

The UNet branch is in the graph (VAE encoder, noising, the UNet's down and mid blocks with the
pack's offsets active), so a backend needs nothing but onnxruntime and numpy: `bench/onnx_encoder.py`
measures the alternative (UNet features as inputs) too. `encoder.json` beside the model, and the
model's own metadata, say what the file is and which shapes to feed.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from e4t.base import Base
from e4t.concept import Concept
from e4t.encoder import unet_features
from e4t.errors import InvalidInput
from e4t.images import to_tensor
from e4t.objective import E4TObjective
from e4t.offsets import TUNE, activate, ensure_adapter, set_offsets
from e4t.pack import DomainPack

FORMAT = "e4t.onnx-encoder/1"
MODEL_FILE = "encoder.onnx"
INFO_FILE = "encoder.json"
OPSET = 18  # antialiased Resize (the vision branch's downsampling) needs opset 18
INPUTS = ("pixels", "latent_noise", "noise", "timesteps")
OUTPUTS = ("offset", "token_embedding")


class EncoderGuess(nn.Module):
    """The encoder's guess as a function of its random draws, as `personalize` computes it
    (`E4TObjective.noise` then `predict_offset`), with the pack's offsets active on the UNet."""

    def __init__(self, base: Base, pack: DomainPack):
        super().__init__()
        objective = E4TObjective(base, pack.class_word, pack.loss_weights)
        self.vae, self.unet, self.encoder = base.vae, base.unet, pack.encoder
        self.scheduler = objective.noise_scheduler
        self.register_buffer("class_states", objective.class_states.detach().clone(), persistent=False)
        self.register_buffer("class_embedding", objective.class_embedding.detach().clone(), persistent=False)

    def noisy(
        self, pixels: torch.Tensor, latent_noise: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        posterior = self.vae.encode(pixels).latent_dist
        # DiagonalGaussianDistribution.sample, with its draw given instead of drawn
        latents = (posterior.mean + posterior.std * latent_noise) * self.vae.config.scaling_factor
        return self.scheduler.add_noise(latents, noise, timesteps)

    def features(self, noisy: torch.Tensor, timesteps: torch.Tensor) -> list[torch.Tensor]:
        return unet_features(self.unet, noisy, timesteps, self.class_states.expand(noisy.shape[0], -1, -1))

    def forward(
        self, pixels: torch.Tensor, latent_noise: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        offset = self.encoder(pixels, self.features(self.noisy(pixels, latent_noise, noise, timesteps), timesteps))
        return offset, self.class_embedding + offset


class EncoderOnly(nn.Module):
    """The encoder alone, UNet feature maps as inputs (the variant `bench/onnx_encoder.py` compares)."""

    def __init__(self, pack: DomainPack):
        super().__init__()
        self.encoder = pack.encoder

    def forward(self, pixels: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor:
        return self.encoder(pixels, features)


@contextlib.contextmanager
def pack_offsets_active(base: Base, pack: DomainPack) -> Iterator[None]:
    """The UNet as `personalize` uses it for the guess: the pack's offsets in the tuning adapter."""
    ensure_adapter(base.unet, TUNE, pack.offset_config)
    set_offsets(base.unet, pack.offsets, TUNE)
    activate(base.unet, TUNE)
    try:
        yield
    finally:
        base.unet.disable_adapters()


def latent_shape(base: Base) -> tuple[int, int, int]:
    size = base.resolution // base.pipe.vae_scale_factor
    return (base.vae.config.latent_channels, size, size)


def draw_inputs(base: Base, pixels: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The random draws of `E4TObjective.noise`, in its order, so that one seed gives one guess
    in PyTorch and in ONNX Runtime alike: posterior sample, then noise, then timesteps."""
    shape = (pixels.shape[0], *latent_shape(base))
    latent_noise = torch.randn(shape, generator=generator)
    noise = torch.randn(shape, generator=generator)
    steps = base.scheduler.config.num_train_timesteps
    timesteps = torch.randint(0, steps, (pixels.shape[0],), generator=generator)
    return {"pixels": pixels, "latent_noise": latent_noise, "noise": noise, "timesteps": timesteps}


def info(base: Base, pack: DomainPack) -> dict:
    return {
        "format": FORMAT,
        "opset": OPSET,
        "domain": pack.domain,
        "class_word": pack.class_word,
        "pack_hash": pack.hash,
        "base_hash": base.hash,
        "resolution": base.resolution,
        "latent_shape": list(latent_shape(base)),
        "num_train_timesteps": int(base.scheduler.config.num_train_timesteps),
        "batch": pack.tune.batch,  # draws per guess, as `personalize` averages them
        "inputs": list(INPUTS),
        "outputs": list(OUTPUTS),
        "embed_dim": pack.encoder.config.embed_dim,
    }


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str], meta: dict) -> None:
    batch = torch.export.Dim("batch", min=1, max=1024)
    with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # export chatter about symbolic shapes and deprecated paths
        program = torch.onnx.export(
            module,
            args,
            input_names=inputs,
            output_names=outputs,
            dynamic_shapes=tuple([{0: batch}] * len(a) if isinstance(a, list) else {0: batch} for a in args),
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
        )
    # the file alone says what it is, as the packs do
    program.model.metadata_props["e4t"] = json.dumps(meta, sort_keys=True)
    program.save(str(path))


def export_onnx(base: Base, pack: DomainPack, out: str | Path) -> dict:
    """Write `encoder.onnx` (the whole guess, see the module doc) and `encoder.json` into `out`."""
    if pack.base_hash != base.hash:
        raise InvalidInput(f"pack {pack.domain} was trained for base {pack.base_hash}, not {base.hash}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # batch 2 while tracing: a batch of 1 lets the tracer fold batch-dependent shapes into constants
    pixels = torch.zeros(2, 3, base.resolution, base.resolution)
    example = draw_inputs(base, pixels, torch.Generator().manual_seed(0))
    meta = info(base, pack)
    with pack_offsets_active(base, pack):
        module = EncoderGuess(base, pack).eval()
        _export(module, tuple(example.values()), out / MODEL_FILE, list(INPUTS), list(OUTPUTS), meta)
    # checked on every export: a file that disagrees with PyTorch is worse than none
    meta["max_abs_error"] = max_abs_error(base, pack, out)
    (out / INFO_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def max_abs_error(base: Base, pack: DomainPack, folder: str | Path, *, batch: int = 3, seed: int = 0) -> float:
    """Largest |ONNX Runtime - PyTorch| over both outputs on random images and draws (a batch
    other than the traced one, so the dynamic batch axis is exercised too)."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.rand(batch, 3, base.resolution, base.resolution, generator=generator) * 2 - 1
    inputs = draw_inputs(base, pixels, generator)
    with torch.no_grad(), pack_offsets_active(base, pack):
        expected = EncoderGuess(base, pack)(*inputs.values())
    got = OnnxEncoder(folder)(inputs)
    return max(float(np.abs(got[name] - e.numpy()).max()) for name, e in zip(OUTPUTS, expected))


def export_encoder_only(base: Base, pack: DomainPack, path: str | Path) -> list[str]:
    """The encoder without its UNet branch: inputs `pixels`, `feature0`...; returns the input names."""
    pixels = torch.zeros(2, 3, base.resolution, base.resolution)
    example = draw_inputs(base, pixels, torch.Generator().manual_seed(0))
    guess = EncoderGuess(base, pack)
    with torch.no_grad(), pack_offsets_active(base, pack):
        features = guess.features(guess.noisy(*example.values()), example["timesteps"])
    names = ["pixels"] + [f"feature{i}" for i in range(len(features))]
    meta = {**info(base, pack), "inputs": names, "outputs": ["offset"]}
    _export(EncoderOnly(pack).eval(), (pixels, list(features)), Path(path), names, ["offset"], meta)
    return names


class OnnxEncoder:
    """An exported encoder on ONNX Runtime (CPU unless `providers` says otherwise)."""

    def __init__(self, folder: str | Path, providers: list[str] | None = None):
        import onnxruntime as ort

        path = Path(folder) / MODEL_FILE
        if not path.is_file():
            raise InvalidInput(f"{str(path)!r} does not exist; write it with `e4t export onnx`")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])
        described = self.session.get_modelmeta().custom_metadata_map.get("e4t")
        self.info = json.loads(described) if described else {}
        if self.info.get("format") != FORMAT:
            raise InvalidInput(f"{str(path)!r} is not an {FORMAT} model (no e4t metadata of that format)")

    def __call__(self, inputs: dict[str, torch.Tensor | np.ndarray]) -> dict[str, np.ndarray]:
        feed = {k: np.ascontiguousarray(v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}
        return dict(zip(OUTPUTS, self.session.run(list(OUTPUTS), feed)))

    def guess(self, base: Base, pack: DomainPack, image: Image.Image, *, seed: int = 0, owner: str = "") -> Concept:
        """The 0-step concept: what `personalize(base, pack, image, steps=0, seed=seed)` returns."""
        if self.info["pack_hash"] != pack.hash or self.info["base_hash"] != base.hash:
            raise InvalidInput(
                f"the ONNX encoder was exported from pack {self.info['pack_hash']} on base {self.info['base_hash']}; "
                f"the loaded pack is {pack.hash} on base {base.hash}"
            )
        generator = torch.Generator().manual_seed(seed)
        pixels = to_tensor(image, base.resolution).expand(pack.tune.batch, -1, -1, -1)
        embedding = self(draw_inputs(base, pixels, generator))["token_embedding"].mean(0)
        return Concept(
            embedding=torch.from_numpy(embedding).float(),
            offset_deltas={k: torch.zeros_like(v) for k, v in pack.offsets.items()},
            domain=pack.domain,
            pack_hash=pack.hash,
            base_hash=base.hash,
            steps=0,
            owner=owner,
            extra={"runtime": "onnx"},
        )
