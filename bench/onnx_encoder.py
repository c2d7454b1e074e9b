"""Latency of the E4T encoder's guess on ONNX Runtime over PyTorch's, measured in one run.

Two layouts of the exported encoder are compared, each against the same computation in PyTorch:
- `graph`: what `e4t export onnx` writes, the UNet branch inside the graph (VAE encoder,
  noising, UNet down and mid blocks, encoder); a backend needs onnxruntime only;
- `inputs`: the encoder alone, fed UNet feature maps that something else (PyTorch) computes.
Calls are interleaved so that both runtimes see the same machine load, and both use the same
number of threads. Uses the embedded base and faces pack unless --base/--pack (an untrained pack
of the same shape when the embedded one was trained for another base). Last line: JSON.

    python bench/onnx_encoder.py [--base DIR --pack FILE] [--batch 4] [--repeats 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

from e4t import load_base, load_pack  # noqa: E402
from e4t.embedded import default_paths  # noqa: E402
from e4t.errors import InvalidInput  # noqa: E402
from e4t.onnx_encoder import (  # noqa: E402
    MODEL_FILE,
    EncoderGuess,
    draw_inputs,
    export_encoder_only,
    export_onnx,
    pack_offsets_active,
)
from e4t.pack import DomainPack  # noqa: E402


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def interleaved(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each call, the calls taking turns."""
    for call in calls.values():  # warm-up: first runs allocate
        call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            t = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path)
    parser.add_argument("--pack", type=Path)
    parser.add_argument("--batch", type=int, default=4, help="draws per guess (the packs' default: 4)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, help="intra-op threads of both runtimes (default: torch's)")
    args = parser.parse_args()
    base_dir, packs = default_paths()
    base = load_base(args.base or base_dir)
    try:
        pack = load_pack(args.pack or next(p for p in packs if p.stem == "faces"), base)
    except InvalidInput as e:  # the embedded pack mid-rebuild, behind its base: latency needs shapes, not weights
        print(f"{e}; timing an untrained pack of the same shape instead")
        pack = DomainPack.initial(base, "faces", "face")
        pack.hash = "untrained"
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)

    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand(args.batch, 3, base.resolution, base.resolution, generator=generator) * 2 - 1
    inputs = draw_inputs(base, pixels, generator)
    feed = {k: v.numpy() for k, v in inputs.items()}
    with tempfile.TemporaryDirectory() as tmp:
        export_onnx(base, pack, Path(tmp) / "graph")
        names = export_encoder_only(base, pack, Path(tmp) / "encoder_only.onnx")
        full = session(Path(tmp) / "graph" / MODEL_FILE, threads)
        encoder_only = session(Path(tmp) / "encoder_only.onnx", threads)
    # PyTorch as `personalize` runs the guess: the pack's offsets active, the whole UNet called
    # (`unet_features` hooks its down and mid blocks); the ONNX graph keeps only those blocks
    with torch.no_grad(), pack_offsets_active(base, pack):
        guess = EncoderGuess(base, pack).eval()
        noisy = guess.noisy(*inputs.values())
        features = guess.features(noisy, inputs["timesteps"])
        feature_feed = dict(zip(names, [feed["pixels"], *(f.contiguous().numpy() for f in features)]))

        error = max(
            float(np.abs(full.run(["offset"], feed)[0] - guess(*inputs.values())[0].numpy()).max()),
            float(np.abs(encoder_only.run(["offset"], feature_feed)[0] - pack.encoder(pixels, features).numpy()).max()),
        )
        t = interleaved(
            {
                "torch_guess": lambda: guess(*inputs.values()),
                "onnx_graph": lambda: full.run(["offset"], feed),
                "torch_features": lambda: guess.features(guess.noisy(*inputs.values()), inputs["timesteps"]),
                "torch_encoder": lambda: pack.encoder(pixels, features),
                "onnx_encoder": lambda: encoder_only.run(["offset"], feature_feed),
            },
            args.repeats,
        )

    result = {
        "batch": args.batch,
        "threads": threads,
        "onnx_over_torch": t["onnx_graph"] / t["torch_guess"],
        "encoder_only_onnx_over_torch": t["onnx_encoder"] / t["torch_encoder"],
        # the `inputs` layout as a backend runs it: PyTorch for the UNet branch, ONNX Runtime for the rest
        "inputs_layout_over_graph_layout": (t["torch_features"] + t["onnx_encoder"]) / t["onnx_graph"],
        "max_abs_error": error,
        "torch_guess_ms": 1e3 * t["torch_guess"],
        "onnx_graph_ms": 1e3 * t["onnx_graph"],
    }
    print(f"guess, UNet branch in the graph: ONNX Runtime / PyTorch = {result['onnx_over_torch']:.3f}")
    print(f"encoder alone (features as inputs): ONNX Runtime / PyTorch = {result['encoder_only_onnx_over_torch']:.3f}")
    print(f"features-as-inputs layout / graph layout = {result['inputs_layout_over_graph_layout']:.3f}")
    print(f"max abs error ONNX Runtime vs PyTorch: {error:.2e}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
