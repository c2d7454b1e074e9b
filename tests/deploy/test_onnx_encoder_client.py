"""deploy/examples/onnx_encoder_client.py: a backend with onnxruntime and numpy, torch unimportable,
gets the embedding that PyTorch computes from the same image and random draws."""

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from e4t import load_base, load_pack
from e4t.images import to_tensor
from e4t.onnx_encoder import MODEL_FILE, EncoderGuess, latent_shape, pack_offsets_active

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "onnx_encoder_client.py"

# `import torch` anywhere in the example (or in what it imports) raises ImportError
WITHOUT_TORCH = "; ".join(
    [
        "import runpy, sys",
        "sys.modules['torch'] = None",
        "sys.argv = sys.argv[1:]",
        "runpy.run_path(sys.argv[0], run_name='__main__')",
    ]
)


def test_example_client_runs_without_torch_and_matches_pytorch(tiny_base_dir, tiny_tuned_pack_path, tiny_onnx_dir,
                                                                tmp_path):  # fmt: skip
    from shards.synth import render_sample

    _, png, _ = render_sample("faces", 11, 0, 64, 0)
    image = tmp_path / "face.png"
    image.write_bytes(png)
    out = tmp_path / "embedding.npy"
    args = [str(EXAMPLE), str(tiny_onnx_dir / MODEL_FILE), str(image), "--seed", "5", "--out", str(out)]
    done = subprocess.run([sys.executable, "-c", WITHOUT_TORCH, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.splitlines()[-1])
    got = np.load(out)

    # the same computation in PyTorch, fed the example's draws (numpy's generator, in its order)
    base = load_base(tiny_base_dir)
    pack = load_pack(tiny_tuned_pack_path, base)

    batch, steps = pack.tune.batch, base.scheduler.config.num_train_timesteps
    pixels = to_tensor(Image.open(io.BytesIO(png)), base.resolution).expand(batch, -1, -1, -1)
    rng = np.random.default_rng(5)
    shape = (batch, *latent_shape(base))
    latent_noise = torch.from_numpy(rng.standard_normal(shape, dtype=np.float32))
    noise = torch.from_numpy(rng.standard_normal(shape, dtype=np.float32))
    timesteps = torch.from_numpy(rng.integers(0, steps, size=batch, dtype=np.int64))
    with torch.no_grad(), pack_offsets_active(base, pack):
        _, embeddings = EncoderGuess(base, pack)(pixels, latent_noise, noise, timesteps)
    expected = embeddings.mean(0).numpy()

    assert summary["dim"] == expected.shape[0] and summary["domain"] == pack.domain
    error = float(np.abs(got - expected).max())
    print(f"example client vs PyTorch: max abs error {error:.2e}")
    assert error <= 1e-4
