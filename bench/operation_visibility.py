"""How soon another connection sees a tuning step of an operation; the last line printed is one JSON object.

A real `e4t serve` (subprocess, embedded default) runs slow Personalize calls started with
`StartPersonalize`; `--watchers` other clients, each on its own channel, `WatchOperation` it.
The server stamps `updated_unix` inside the step's progress callback (on the model worker's
thread, as the tuner reports the step), so on one host `received - updated_unix` is the time from
the step's progress callback to a watcher holding it, across processes and the loopback network.

Printed per method: `visibility_ms` (p50, p95, max over every step and watcher), `step_ms` (median
time between steps), `visibility_vs_step` (p95 visibility / median step: below 1, a watcher sees a
step before the next is done), `visibility_vs_budget` (max visibility / the 1 s budget), and
`start_vs_job` (the StartPersonalize call / the whole job: how "at once" it returns). With
`--replica`, a second `e4t serve` on the same store and one watcher on it: that server follows the
record as the first writes it (at most every 0.5 s), so `replica_visibility_ms` is the same
measure through the store, over the steps it saw (`replica_steps_seen` of them).

    python bench/operation_visibility.py                         # ~1 min on 2 cores
    python bench/operation_visibility.py --competitor            # beside a CPU-bound PyTorch process
    python bench/operation_visibility.py --replica               # plus a watcher on another replica
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

from serve_load import COMPETITOR  # noqa: E402  (bench/ is on sys.path when run as a script)


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


def percentiles(latencies: list[float]) -> dict[str, float]:
    latencies = sorted(latencies)
    p95 = latencies[int(0.95 * (len(latencies) - 1))]
    return {"p50": round(statistics.median(latencies), 2), "p95": round(p95, 2), "max": round(latencies[-1], 2)}


def measure(address: str, method: str, steps: int, watchers: int, replica: str | None) -> dict:
    from serve.client import E4TClient

    image = subject_png()
    with E4TClient(address) as client:
        # a blocker keeps the worker busy until every watcher has its first snapshot: no step is missed
        blocker = client.start_personalize(image, "faces", method="textual_inversion", steps=3000)
        began = time.perf_counter()
        op = client.start_personalize(image, "faces", method=method, steps=steps, seed=0)
        start_s = time.perf_counter() - began
        addresses = [address] * watchers + ([replica] if replica else [])
        seen: list[list[tuple[int, float, float]]] = [[] for _ in addresses]
        ready = [threading.Event() for _ in addresses]
        threads = [
            threading.Thread(target=watch, args=(at, op["id"], seen[i], ready[i]), daemon=True)
            for i, at in enumerate(addresses)
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
    local, remote = seen[:watchers], seen[watchers:]
    latencies = [1000 * (received - updated) for s in local for _, updated, received in s]
    stamps = sorted({step: updated for step, updated, _ in local[0]}.items())
    step_ms = statistics.median(1000 * (b[1] - a[1]) for a, b in zip(stamps, stamps[1:]))
    visibility = percentiles(latencies)
    result = {
        "steps": steps,
        "watchers": watchers,
        "every_step_seen": all([step for step, _, _ in s] == list(range(1, steps + 1)) for s in local),
        "visibility_ms": visibility,
        "step_ms": round(step_ms, 1),
        "visibility_vs_step": round(visibility["p95"] / step_ms, 4),
        "visibility_vs_budget": round(visibility["max"] / 1000, 4),
        "start_ms": round(1000 * start_s, 1),
        "start_vs_job": round(start_s / job_s, 4),
    }
    if remote:
        result["replica_visibility_ms"] = percentiles([1000 * (r - u) for _, u, r in remote[0]])
        result["replica_steps_seen"] = len(remote[0])
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--watchers", type=int, default=2)
    p.add_argument("--dreambooth-steps", type=int, default=40)
    p.add_argument("--textual-inversion-steps", type=int, default=200)
    p.add_argument("--competitor", action="store_true", help="run a CPU-bound PyTorch process beside the server")
    p.add_argument("--replica", action="store_true", help="a second server on the same store, one watcher on it")
    args = p.parse_args()
    from serve.client import E4TClient

    competitor = subprocess.Popen([sys.executable, "-c", COMPETITOR]) if args.competitor else None
    with tempfile.TemporaryDirectory() as tmp:
        servers = [start_server(Path(tmp) / "store") for _ in range(2 if args.replica else 1)]
        address, replica = servers[0][1], servers[1][1] if args.replica else None
        try:
            for _, at in servers:
                with E4TClient(at) as client:
                    client.wait_ready(300)
            results = {
                method: measure(address, method, steps, args.watchers, replica)
                for method, steps in (("dreambooth", args.dreambooth_steps),
                                      ("textual_inversion", args.textual_inversion_steps))
            }  # fmt: skip
        finally:
            for proc, _ in servers:
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
            f"StartPersonalize {r['start_ms']} ms"
            + (f"; replica p50 {r['replica_visibility_ms']['p50']} ms, max {r['replica_visibility_ms']['max']} ms "
               f"over {r['replica_steps_seen']} steps" if "replica_visibility_ms" in r else ""),
            file=sys.stderr,
        )  # fmt: skip
    print(json.dumps({"competitor": args.competitor, "replica": args.replica, **results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
