"""`e4t serve`: run the gRPC server.

    e4t serve                                    # embedded default: artifacts/base + artifacts/packs/*.safetensors
    e4t serve --base BASE_DIR --pack faces.safetensors [--pack cats.safetensors] --store DIR --port 50051
    e4t serve --max-batch 8 --batch-wait-ms 20 --concept-cache-mb 256 --threads auto

The server answers health checks (NOT_SERVING) while it loads the models, then
SERVING; SIGTERM or SIGINT stops it gracefully within `--grace` seconds.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from pathlib import Path


def default_paths() -> tuple[Path, list[Path]]:
    """The embedded default base and packs (`artifacts/` at the repository root, or $E4T_ARTIFACTS)."""
    from e4t.embedded import default_paths as embedded_paths
    from e4t.embedded import missing_artifacts

    missing = missing_artifacts()
    if missing:
        raise FileNotFoundError(
            f"The embedded default is not built: missing {' and '.join(missing)}. "
            "Build it (`e4t pretrain ...`, see the README), or pass --base and --pack."
        )
    return embedded_paths()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="e4t serve", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--base", type=Path, help="diffusers Stable Diffusion folder (default: the embedded base)")
    p.add_argument("--pack", type=Path, action="append", default=[], help="domain pack; repeat for more domains")
    p.add_argument("--store", type=Path, default=Path("runs/concepts"), help="concept store folder")
    p.add_argument("--host", default="[::]", help="address to bind (default: all interfaces)")
    p.add_argument("--port", type=int, default=50051)
    p.add_argument("--queue-size", type=int, default=16, help="requests waiting for the model worker")
    p.add_argument("--max-workers", type=int, default=8, help="gRPC threads")
    p.add_argument("--max-batch", type=int, default=8, help="most images denoised as one UNet batch, across concepts")
    p.add_argument(
        "--batch-wait-ms", type=float, default=20.0, help="how long a Generate waits for others to batch with"
    )
    p.add_argument("--concept-cache-mb", type=float, default=256.0, help="memory for hot concepts, LRU")
    p.add_argument(
        "--threads",
        default=None,
        help="torch intra-op threads: a number or 'auto' (default: $E4T_THREADS, else half the available CPUs)",
    )
    p.add_argument("--grace", type=float, default=10.0, help="seconds in-flight requests get on shutdown")
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: list[str]) -> int:
    from cli import prepare_process

    prepare_process()  # before torch is imported (`python -m serve.cli`; the `e4t` command did it already)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        from e4t.threads import parse_threads  # imports torch: after prepare_process

        parse_threads(args.threads, "--threads")
        check = [("--max-batch", args.max_batch, 1), ("--batch-wait-ms", args.batch_wait_ms, 0)]
        check.append(("--concept-cache-mb", args.concept_cache_mb, 0))
        for flag, value, least in check:
            if value < least:
                raise ValueError(f"{flag} has to be at least {least} but is {value:g}.")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if (args.base is None) != (not args.pack):
        print("error: give both --base and --pack, or neither for the embedded default.", file=sys.stderr)
        return 2
    if args.base is None:
        try:
            base, packs = default_paths()
        except FileNotFoundError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    else:
        base, packs = args.base, args.pack
    # imported here so `e4t serve --help` stays instant
    from e4t.threads import configure
    from serve.engine import Engine
    from serve.server import create_server, serve_until_signal

    threads = configure(args.threads)
    loader = functools.partial(
        Engine.load,
        base,
        packs,
        args.store,
        queue_size=args.queue_size,
        max_batch=args.max_batch,
        batch_wait_ms=args.batch_wait_ms,
        concept_cache_mb=args.concept_cache_mb,
    )
    server, port = create_server(loader, f"{args.host}:{args.port}", max_workers=args.max_workers)
    print(f"e4t server on port {port} (health NOT_SERVING until the models are loaded)", flush=True)
    print(threads.describe(), flush=True)
    return serve_until_signal(server, args.grace)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
