"""How soon another connection sees a tuning step of an operation; the last line printed is one JSON object.

A real `e4t serve` (subprocess, embedded default) runs slow Personalize calls started with
`StartPersonalize`; `--watchers` other clients, each on its own channel, `WatchOperation` it.
The server stamps `updated_unix` inside the step's progress callback (on the model worker's
thread, as the tuner reports the step), so on one host `received - updated_unix` is the time from
the step's progress callback to a watcher holding it, across processes and the loopback network.

Printed per method: `visibility_ms` (p50, p95, max over every step and watcher), `step_ms` (median
time between steps), `visibility_vs_step` (p95 visibility / median step: below 1, a watcher sees a
step before the next is done), `visibility_vs_budget` (max visibility / the 1 s budget), and
`start_vs_job` (the StartPersonalize call / the whole job: how "at once" it returns).

    python bench/operation_visibility.py                         # ~1 min on 2 cores
    python bench/operation_visibility.py --competitor            # beside a CPU-bound PyTorch process
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

COMPETITOR = """
import torch
a = torch.randn(256, 256)
while True:
    b = torch.relu(a @ a) + 1
"""


def start_server(store: Path) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "cli", "serve", "--host", "127.0.0.1", "--port", "0", "--store", str(store),
           "--log-level", "WARNING"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if "e4t server on port" not in line:
        proc.kill()
        raise RuntimeError(f"the server did not start: {line}{proc.stderr.read()}")
    for stream in (proc.stdout, proc.stderr):  # drained, so a chatty server never blocks on a full pipe
        threading.Thread(target=stream.read, daemon=True).start()
    return proc, f"127.0.0.1:{int(line.split('port')[1].split()[0])}"


def subject_png() -> bytes:
    from shards.synth import render_sample

    return render_sample("faces", 7, 0, 64, 0)[1]


def watch(address: str, operation_id: str, seen: list[tuple[int, float, float]], ready: threading.Event) -> None:
    """Records (step, updated_unix, received) for every tuning step the watch delivers."""
    from serve.client import E4TClient

    with E4TClient(address) as client:
        for op in client.watch_operation(operation_id):
            received = time.time()
            ready.set()
            progress = op["progress"]
            if op["state"] == "RUNNING" and progress["stage"] == "tuning" and progress["step"] > 0:
                seen.append((progress["step"], op["updated_unix"], received))


def measure(address: str, method: str, steps: int, watchers: int) -> dict:
    from serve.client import E4TClient

    image = subject_png()
    with E4TClient(address) as client:
        # a blocker keeps the worker busy until every watcher has its first snapshot: no step is missed
        blocker = client.start_personalize(image, "faces", method="textual_inversion", steps=3000)
        began = time.perf_counter()
        op = client.start_personalize(image, "faces", method=method, steps=steps, seed=0)
        start_s = time.perf_counter() - began
        seen: list[list[tuple[int, float, float]]] = [[] for _ in range(watchers)]
        ready = [threading.Event() for _ in range(watchers)]
        threads = [
            threading.Thread(target=watch, args=(address, op["id"], seen[i], ready[i]), daemon=True)
            for i in range(watchers)
        ]
        for thread in threads:
            thread.start()
        for event in ready:
            event.wait(60)
        client.cancel_operation(blocker["id"])
        began = time.perf_counter()
        for thread in threads:
            thread.join()
        job_s = time.perf_counter() - began
        final = client.get_operation(op["id"])
    if final["state"] != "SUCCEEDED":
        raise RuntimeError(f"{method}: the operation ended {final['state']}: {final['error']}")
    latencies = sorted(1000 * (received - updated) for s in seen for _, updated, received in s)
    stamps = sorted({step: updated for step, updated, _ in seen[0]}.items())
    step_ms = statistics.median(1000 * (b[1] - a[1]) for a, b in zip(stamps, stamps[1:]))
    every_step = all([step for step, _, _ in s] == list(range(1, steps + 1)) for s in seen)
    p95 = latencies[int(0.95 * (len(latencies) - 1))]
    return {
        "steps": steps,
        "watchers": watchers,
        "every_step_seen": every_step,
        "visibility_ms": {
            "p50": round(statistics.median(latencies), 2),
            "p95": round(p95, 2),
            "max": round(latencies[-1], 2),
        },  # fmt: skip
        "step_ms": round(step_ms, 1),
        "visibility_vs_step": round(p95 / step_ms, 4),
        "visibility_vs_budget": round(latencies[-1] / 1000, 4),
        "start_ms": round(1000 * start_s, 1),
        "start_vs_job": round(start_s / job_s, 4),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--watchers", type=int, default=2)
    p.add_argument("--dreambooth-steps", type=int, default=40)
    p.add_argument("--textual-inversion-steps", type=int, default=200)
    p.add_argument("--competitor", action="store_true", help="run a CPU-bound PyTorch process beside the server")
    args = p.parse_args()
    from serve.client import E4TClient

    competitor = subprocess.Popen([sys.executable, "-c", COMPETITOR]) if args.competitor else None
    with tempfile.TemporaryDirectory() as tmp:
        proc, address = start_server(Path(tmp) / "store")
        try:
            with E4TClient(address) as client:
                client.wait_ready(300)
            results = {
                "dreambooth": measure(address, "dreambooth", args.dreambooth_steps, args.watchers),
                "textual_inversion": measure(address, "textual_inversion", args.textual_inversion_steps, args.watchers),
            }
        finally:
            proc.terminate()
            proc.wait(30)
            if competitor is not None:
                competitor.kill()
                competitor.wait()
    for method, r in results.items():
        v = r["visibility_ms"]
        print(
            f"{method}: {r['steps']} steps, {r['watchers']} watchers, every step seen: {r['every_step_seen']}; "
            f"visibility p50 {v['p50']} ms, p95 {v['p95']} ms, max {v['max']} ms; step {r['step_ms']} ms; "
            f"StartPersonalize {r['start_ms']} ms",
            file=sys.stderr,
        )
    print(json.dumps({"competitor": args.competitor, **results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
