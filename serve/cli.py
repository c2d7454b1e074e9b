"""`e4t serve`: run the gRPC server; `e4t serve token add`: make a bearer token.

    e4t serve                                    # embedded default, open, on 127.0.0.1 only
    e4t serve --base BASE_DIR --pack faces.safetensors [--pack cats.safetensors] --store DIR --port 50051
    e4t serve --max-batch 8 --batch-wait-ms 20 --concept-cache-mb 256 --threads auto
    e4t serve --host 0.0.0.0 --tokens tokens.json --tls-cert server.pem --tls-key server.key --metrics-port 9100
    e4t serve --store s3://bucket/concepts --store-option endpoint_url=http://minio:9000
    e4t serve token add --tenant acme --tokens-file tokens.json   # prints the token once

The server answers health checks (NOT_SERVING) while it loads the models, then
SERVING while its concept store answers; SIGTERM or SIGINT stops it gracefully
within `--grace` seconds. Without tokens or client certificates it is open, so it
binds a loopback address only, unless `--insecure-open`.
"""

from __future__ import annotations

import argparse
import functools
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


def _option(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"a store option has to be KEY=VALUE but is {text!r}")
    return key, value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="e4t serve", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--base", type=Path, help="diffusers Stable Diffusion folder (default: the embedded base)")
    p.add_argument("--pack", type=Path, action="append", default=[], help="domain pack; repeat for more domains")
    p.add_argument(
        "--store", default="runs/concepts", help="concept store: a folder, or a URL such as s3://bucket/prefix"
    )
    p.add_argument(
        "--store-option", type=_option, action="append", default=[], metavar="KEY=VALUE",
        help="option of an object store (s3: endpoint_url, region, key, secret, anon); repeat for more",
    )  # fmt: skip
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=50051)
    p.add_argument("--tokens", type=Path, help="tokens file (`e4t serve token add`); else $E4T_TOKENS if set")
    p.add_argument("--tls-cert", type=Path, help="server certificate chain (PEM); with --tls-key, serve TLS")
    p.add_argument("--tls-key", type=Path, help="server private key (PEM)")
    p.add_argument("--tls-client-ca", type=Path, help="CA (PEM) that signs client certificates: require them (mTLS)")
    p.add_argument(
        "--insecure-open", action="store_true", help="serve a non-loopback address with no tokens and no client certs"
    )
    p.add_argument("--rate", type=float, default=0.0, help="requests per second per tenant (0: unlimited)")
    p.add_argument("--burst", type=int, default=10, help="requests a tenant may make at once (with --rate)")
    p.add_argument("--quota-concepts", type=int, default=0, help="stored concepts per tenant (0: unlimited)")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port (e.g. 9100)")
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
    p.add_argument("--health-interval", type=float, default=5.0, help="seconds between concept store checks")
    p.add_argument(
        "--operation-retention", default="7d", metavar="DURATION",
        help="how long records of finished operations are kept (90s, 30m, 12h, 7d; default 7d)",
    )  # fmt: skip
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--log-format", default="json", choices=("json", "text"), help="json: one object a line")
    return p


def token_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="e4t serve token", description="bearer tokens of the server's tenants")
    sub = p.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", help="make a token for a tenant; prints it once, stores only its hash")
    add.add_argument("--tenant", required=True)
    add.add_argument("--tokens-file", type=Path, required=True)
    args = p.parse_args(argv)
    from serve.auth import add_token

    try:
        token = add_token(args.tokens_file, args.tenant)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"token for tenant {args.tenant} added to {args.tokens_file}; it is shown only now:", file=sys.stderr)
    print(token)
    return 0


def main(argv: list[str]) -> int:
    from cli import prepare_process

    prepare_process()  # before torch is imported (`python -m serve.cli`; the `e4t` command did it already)
    if argv[:1] == ["token"]:
        return token_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        from e4t.threads import parse_threads  # imports torch: after prepare_process

        parse_threads(args.threads, "--threads")
        check = [("--max-batch", args.max_batch, 1), ("--batch-wait-ms", args.batch_wait_ms, 0)]
        check.append(("--concept-cache-mb", args.concept_cache_mb, 0))
        for flag, value, least in check:
            if value < least:
                raise ValueError(f"{flag} has to be at least {least} but is {value:g}.")
        from serve.operations import OperationOptions, parse_duration

        retention = parse_duration(args.operation_retention, "--operation-retention")
        operation_options = OperationOptions(retention_s=retention)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from serve.logs import configure

    configure(args.log_level, args.log_format)
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
    if (args.tls_cert is None) != (args.tls_key is None) or (args.tls_client_ca and not args.tls_cert):
        print("error: give --tls-cert and --tls-key together (and --tls-client-ca only with them).", file=sys.stderr)
        return 2
    # imported here so `e4t serve --help` stays instant
    from e4t.threads import configure as configure_threads
    from serve.auth import TlsConfig, TokenAuth
    from serve.engine import Engine
    from serve.limits import TenantLimits
    from serve.server import create_server, is_loopback, serve_until_signal
    from serve.store import ConceptStore

    threads = configure_threads(args.threads)
    try:
        auth = TokenAuth(args.tokens) if args.tokens else TokenAuth.from_env()
        tls = TlsConfig(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert else None
        tenant_limits = TenantLimits(rate=args.rate, burst=args.burst, max_concepts=args.quota_concepts)
        store = ConceptStore(args.store, storage_options=dict(args.store_option))
        loader = functools.partial(
            Engine.load,
            base,
            packs,
            store,
            queue_size=args.queue_size,
            max_batch=args.max_batch,
            batch_wait_ms=args.batch_wait_ms,
            concept_cache_mb=args.concept_cache_mb,
        )
        server, port = create_server(
            loader, f"{args.host}:{args.port}", max_workers=args.max_workers, auth=auth, tls=tls,
            tenant_limits=tenant_limits, insecure_open=args.insecure_open, health_interval=args.health_interval,
            operation_options=operation_options,
        )  # fmt: skip
    except Exception as e:  # a bad flag, file or store: say which, exit 2, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    security = "TLS" if tls else "plaintext"
    security += ", bearer tokens" if auth else ", client certificates" if tls and tls.client_ca else ", OPEN (no auth)"
    print(f"e4t server on port {port} ({security}; health NOT_SERVING until the models are loaded)", flush=True)
    print(threads.describe(), flush=True)
    if args.metrics_port is not None:
        from serve.metrics import start_metrics_server

        try:
            metrics_port = start_metrics_server(args.metrics_port, args.host if is_loopback(args.host) else "0.0.0.0")
        except OSError as e:
            print(f"error: cannot serve metrics on port {args.metrics_port}: {e}", file=sys.stderr)
            server.stop(0)
            return 2
        print(f"metrics on port {metrics_port} (/metrics)", flush=True)
    return serve_until_signal(server, args.grace)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
