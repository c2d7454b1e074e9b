"""A backend calling the exported E4T encoder with onnxruntime and numpy only (Pillow reads the image).

    e4t export onnx --pack artifacts/packs/faces.safetensors --out out/onnx/faces
    python deploy/examples/onnx_encoder_client.py out/onnx/faces/encoder.onnx face.png --out embedding.npy

The model describes itself (metadata key "e4t": resolution, latent shape, timesteps, draws per
guess). The guess is the mean, over a few random draws, of the token embedding the encoder
predicts; the embedding is what a concept carries, and what `pipe.load_textual_inversion`
takes as a token's embedding.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps


def preprocess(path: str, size: int) -> np.ndarray:
    """[1, 3, size, size] float32 in [-1, 1]: center crop, resized as e4t does (Lanczos)."""
    image = ImageOps.fit(Image.open(path).convert("RGB"), (size, size), method=Image.Resampling.LANCZOS)
    return (np.asarray(image, dtype=np.float32) / 127.5 - 1.0).transpose(2, 0, 1)[None]


def guess(session: ort.InferenceSession, pixels: np.ndarray, seed: int) -> np.ndarray:
    """The encoder's token embedding [D], averaged over the model's number of random draws."""
    info = json.loads(session.get_modelmeta().custom_metadata_map["e4t"])
    batch = info["batch"]
    rng = np.random.default_rng(seed)
    shape = (batch, *info["latent_shape"])
    feed = {
        "pixels": np.repeat(pixels, batch, axis=0),
        "latent_noise": rng.standard_normal(shape, dtype=np.float32),
        "noise": rng.standard_normal(shape, dtype=np.float32),
        "timesteps": rng.integers(0, info["num_train_timesteps"], size=batch, dtype=np.int64),
    }
    (embedding,) = session.run(["token_embedding"], feed)
    return embedding.mean(axis=0)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("model", help="encoder.onnx written by `e4t export onnx`")
    p.add_argument("image")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="embedding.npy", help="where to write the embedding (.npy)")
    args = p.parse_args(argv)

    session = ort.InferenceSession(args.model, providers=ort.get_available_providers())
    info = json.loads(session.get_modelmeta().custom_metadata_map["e4t"])
    embedding = guess(session, preprocess(args.image, info["resolution"]), args.seed)
    np.save(args.out, embedding)
    summary = {"domain": info["domain"], "dim": int(embedding.shape[0]), "norm": float(np.linalg.norm(embedding))}
    print(json.dumps({**summary, "out": args.out}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
