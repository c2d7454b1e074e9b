"""Time and peak resident memory of one domain step, one tuning step and one generation step at real shapes.

Stable Diffusion 1.5 (UNet 860M, VAE 84M, CLIP ViT-L/14 text encoder 123M parameters) with a
CLIP ViT-L/14 vision tower (303M, frozen) in the encoder: random weights from
`pretrain.sd15_shaped`, float32 on CPU, batch 1, 512x512 px.

- domain: one step of domain pretraining (the trainer's `DomainModel`, forward + backward + AdamW);
- tune: `personalize(..., steps=1)` with tuning batch 1 (the encoder's guess, then one step);
- generate: `generate(..., num_images=1, steps=1)`, guidance 7.5 (one UNet call on batch 2, VAE decode).

Each phase runs in a child process of its own, one after the other, so that each peak is that
phase's alone (ru_maxrss is per process and never goes down): the child loads the folders, then
samples its resident set every 5 ms while the phase runs. Memory is reported as the peak over the
phase (models included: what a worker needs) and as that peak less the resident set before it,
with every weight read once beforehand (safetensors are memory-mapped: unread pages are not yet
resident and would otherwise count as the phase's).
Time is wall clock and, robust to other load on a shared machine, the process's CPU time
(user + system) over the phase. Ratios tuning / generation are measured in this one run.

    python bench/real_shapes.py [--dir DIR]   # DIR keeps the ~5 GB of built folders for the next run

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PHASES = ("domain", "tune", "generate")


class PeakRSS:
    """Peak resident set size of this process while the `with` block runs, sampled every `interval` s."""

    def __init__(self, interval: float = 0.005):
        import psutil

        self._process, self._interval = psutil.Process(), interval
        self.before = self.peak = 0
        self.cpu_s = 0.0
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __enter__(self) -> PeakRSS:
        self.before = self.peak = self._process.memory_info().rss
        self._cpu = self._process.cpu_times()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)
        cpu = self._process.cpu_times()
        self.cpu_s = (cpu.user - self._cpu.user) + (cpu.system - self._cpu.system)


def make_resident(*modules) -> None:
    import torch

    with torch.no_grad():
        for module in modules:
            for tensor in [*module.parameters(), *module.buffers()]:
                tensor.sum()


def run_phase(phase: str, work: Path) -> dict:
    """One phase, in this (child) process: load, then measure the phase alone."""
    import torch
    from PIL import Image

    from e4t import generate, load_base, load_pack, personalize
    from e4t.concept import Concept

    started = time.perf_counter()
    base = load_base(work / "base")
    if phase == "domain":
        from e4t.objective import E4TObjective
        from e4t.offsets import TUNE, activate, get_offsets, offset_parameters
        from e4t.pack import DomainPack, TuneConfig
        from pretrain.domain import DomainModel

        pack = DomainPack.initial(base, "faces", "face", vision=work / "vision")
        activate(base.unet, TUNE)
        model = DomainModel(E4TObjective(base, "face"), pack.encoder.train().requires_grad_(True))
        offsets = offset_parameters(base.unet, TUNE)
        for p in offsets:
            p.requires_grad_(True)
        encoder_params = [p for p in model.encoder.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW([{"params": encoder_params, "lr": 3e-4}, {"params": offsets, "lr": 1e-4}])
        pixels = torch.rand(1, 3, 512, 512, generator=torch.Generator().manual_seed(0)) * 2 - 1
        make_resident(base.unet, base.vae, base.text_encoder, pack.encoder)
        load_s = time.perf_counter() - started
        with PeakRSS() as rss:
            t = time.perf_counter()
            loss, _ = model(pixels, ["a photo of a face on the beach"])
            loss.backward()
            optimizer.step()
            seconds = time.perf_counter() - t
        pack.offsets = get_offsets(base.unet, TUNE)
        pack.encoder.eval()
        pack.tune = TuneConfig(steps=1, batch=1)
        pack.save(work / "pack.safetensors")
    else:
        pack = load_pack(work / "pack.safetensors", base)
        make_resident(base.unet, base.vae, base.text_encoder, pack.encoder)
        if phase == "tune":
            from shards.synth import render_sample

            image = Image.open(io.BytesIO(render_sample("faces", 7, 0, 128, 0)[1]))
            load_s = time.perf_counter() - started
            with PeakRSS() as rss:
                t = time.perf_counter()
                concept = personalize(base, pack, image, steps=1)
                seconds = time.perf_counter() - t
            concept.save(work / "concept.safetensors")
        else:
            concept = Concept.load(work / "concept.safetensors")
            load_s = time.perf_counter() - started
            with PeakRSS() as rss:
                t = time.perf_counter()
                images = generate(
                    base, {"faces": pack}, {concept.id: concept}, f"a photo of {{{concept.id}}}", num_images=1, steps=1
                )
                seconds = time.perf_counter() - t
            assert images[0].size == (512, 512)
    return {
        "seconds": round(seconds, 2),
        "cpu_s": round(rss.cpu_s, 2),
        "peak_rss_gib": round(rss.peak / 2**30, 2),
        "loaded_rss_gib": round(rss.before / 2**30, 2),
        "phase_added_gib": round((rss.peak - rss.before) / 2**30, 2),
        "load_s": round(load_s, 1),
        "threads": torch.get_num_threads(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="folder for the built base, tower, pack and concept (default: temp)")
    parser.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)  # a child's one phase
    args = parser.parse_args()
    if args.phase:
        print("RESULT " + json.dumps(run_phase(args.phase, args.dir)), flush=True)
        return 0

    work = args.dir or Path(tempfile.mkdtemp(prefix="e4t-real-shapes-"))
    if not (work / "vision" / "config.json").is_file():
        t = time.perf_counter()
        build = "from pretrain.sd15_shaped import build_sd15_shaped; import sys; build_sd15_shaped(sys.argv[1])"
        subprocess.run([sys.executable, "-c", build, str(work)], check=True, cwd=Path(__file__).resolve().parent.parent)
        print(f"built SD 1.5 / ViT-L/14-shaped folders in {work} ({time.perf_counter() - t:.0f} s)", flush=True)
    results = {}
    for phase in PHASES:
        run = subprocess.run(
            [sys.executable, __file__, "--phase", phase, "--dir", str(work)], capture_output=True, text=True
        )
        lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
        if run.returncode != 0 or not lines:
            print(run.stdout[-3000:] + run.stderr[-3000:], file=sys.stderr)
            return 1
        results[phase] = json.loads(lines[-1][len("RESULT ") :])
        r = results[phase]
        print(
            f"{phase:<9} {r['seconds']:7.1f} s (CPU {r['cpu_s']:.1f} s)   peak RSS {r['peak_rss_gib']:5.2f} GiB "
            f"(+{r['phase_added_gib']:.2f} GiB over the loaded models)",
            flush=True,
        )
    tune, gen = results["tune"], results["generate"]
    summary = {
        "shapes": "SD 1.5 + CLIP ViT-L/14 vision tower (frozen), float32, CPU, batch 1, 512x512",
        **results,
        "tune_over_generate_time": round(tune["seconds"] / gen["seconds"], 3),
        "tune_over_generate_cpu_time": round(tune["cpu_s"] / gen["cpu_s"], 3),
        "tune_over_generate_peak_rss": round(tune["peak_rss_gib"] / gen["peak_rss_gib"], 3),
        "tune_over_generate_added_memory": round(tune["phase_added_gib"] / max(gen["phase_added_gib"], 1e-3), 3),
    }
    print(
        f"tuning / generation: time {summary['tune_over_generate_time']} "
        f"(CPU time {summary['tune_over_generate_cpu_time']}), peak memory "
        f"{summary['tune_over_generate_peak_rss']} (added memory {summary['tune_over_generate_added_memory']})"
    )
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
