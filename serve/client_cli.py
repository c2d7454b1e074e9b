"""`e4t client`: talk to a running e4t server.

e4t client domains
e4t client personalize me.png --domain faces [--method e4t|textual_inversion|dreambooth|two_stage] [--steps N]
    [--mask mask.png]
e4t client personalize scene.png --domain faces --method break_a_scene --mask a.png --mask b.png
e4t client personalize scene.png --method break_a_scene --mask a.png --mask b.png --mask-domain faces --mask-domain cats
e4t client generate --prompt "a photo of {c_0123456789ab} on the beach" --out out/ [--num-images 4]
e4t client list [--domain faces] | get ID | delete ID
e4t client personalize me.png --domain faces --method dreambooth --detach   # prints the operation id, returns
e4t client operations watch OP_ID      # progress bar until done, then the concept id(s)
e4t client operations get OP_ID | cancel OP_ID | list

A server with tokens: --token TOKEN or $E4T_TOKEN; with TLS: --tls-ca ca.pem (and
--tls-cert/--tls-key for a client certificate).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm import tqdm

# as the server's ListDomains reports them
METHODS = ("e4t", "textual_inversion", "dreambooth", "two_stage", "break_a_scene")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="e4t client", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--address", default="localhost:50051", help="server host:port")
    p.add_argument("--timeout", type=float, default=300.0, help="deadline of each call, seconds")
    p.add_argument("--token", help="bearer token (default: $E4T_TOKEN)")
    p.add_argument("--tls-ca", type=Path, help="CA certificate (PEM) of the server: connect with TLS")
    p.add_argument("--tls-cert", type=Path, help="client certificate (PEM), for servers that require one")
    p.add_argument("--tls-key", type=Path, help="client private key (PEM)")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("domains", help="list the domains the server can personalize")

    pers = sub.add_parser("personalize", help="tune a concept from one image; prints its metadata as JSON")
    pers.add_argument("image", type=Path)
    pers.add_argument("--domain", default="", help="the subject's domain (break_a_scene: of every mask)")
    pers.add_argument(
        "--mask", type=Path, action="append", default=[], help="subject mask; break_a_scene: one per subject, repeated"
    )
    pers.add_argument(
        "--mask-domain", action="append", default=[], help="break_a_scene: each mask's domain, in mask order"
    )
    pers.add_argument(
        "--steps",
        type=int,
        help="tuning steps; default: the method's (e4t 5, textual_inversion 1000, dreambooth 400, two_stage 200)",
    )
    pers.add_argument("--seed", type=int, default=0)
    pers.add_argument("--method", default="e4t", choices=METHODS, help="personalization method (default: e4t)")
    pers.add_argument("--owner", default="")
    pers.add_argument(
        "--detach", action="store_true", help="start it as an operation: print its id and return (see `operations`)"
    )

    gen = sub.add_parser("generate", help="generate images; writes PNGs into --out")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--negative-prompt", default="")
    gen.add_argument("--out", type=Path, required=True)
    gen.add_argument("--num-images", type=int, default=4)
    gen.add_argument("--steps", type=int, default=25)
    gen.add_argument("--guidance", type=float, default=None, help="default: the server's base's (3 embedded, 7.5 SD)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--identity-guidance", type=float, default=None, help="identity guidance scale (default: off)")

    lst = sub.add_parser("list", help="list stored concepts as JSON lines")
    lst.add_argument("--domain", default="")
    for name, help_ in (("get", "print one concept's metadata"), ("delete", "delete a concept")):
        sub.add_parser(name, help=help_).add_argument("id")

    ops = sub.add_parser("operations", help="long jobs started with `personalize --detach`").add_subparsers(
        dest="op_command", required=True
    )
    for name, help_ in (
        ("get", "print an operation as JSON"),
        ("watch", "show its progress until it is done, then print the concept id(s)"),
        ("cancel", "stop it at its next tuning step; prints it as JSON"),
    ):
        ops.add_parser(name, help=help_).add_argument("id")
    ops.add_parser("list", help="your operations as JSON lines, newest first")
    return p


def _single_mask(args: argparse.Namespace) -> Path | None:
    """The one optional --mask of a method other than break_a_scene."""
    if len(args.mask) > 1 or args.mask_domain:
        raise ValueError(f"--method {args.method} takes at most one --mask and no --mask-domain")
    return args.mask[0] if args.mask else None


def _watch(client, operation_id: str) -> int:
    """A progress bar (step/total, loss, stage) until the operation is done; 0 only if it SUCCEEDED."""
    with tqdm(desc=operation_id, unit="step", file=sys.stderr) as bar:

        def on_update(op: dict) -> None:
            progress = op["progress"]
            bar.total = progress["total"]
            bar.n = progress["step"]
            bar.set_postfix(state=op["state"], stage=progress["stage"], loss=f"{progress['loss']:.4f}")

        op = client.wait_operation(operation_id, on_update)
    if op["state"] != "SUCCEEDED":
        error = op["error"] or {"code": "CANCELLED", "message": "cancelled"}
        print(f"error: operation {operation_id} {op['state']}: {error['code']}: {error['message']}", file=sys.stderr)
        return 1
    for concept in op["concepts"]:
        print(concept["id"])
    return 0


def _operations(client, args: argparse.Namespace) -> int:
    if args.op_command == "watch":
        return _watch(client, args.id)
    if args.op_command == "get":
        print(json.dumps(client.get_operation(args.id), indent=2))
    elif args.op_command == "cancel":
        print(json.dumps(client.cancel_operation(args.id), indent=2))
    elif args.op_command == "list":
        for op in client.list_operations():
            print(json.dumps(op))
    return 0


def _run(args: argparse.Namespace) -> int:
    from serve.client import E4TClient

    client = E4TClient(
        args.address, timeout=args.timeout, token=args.token, tls_ca=args.tls_ca, tls_cert=args.tls_cert,
        tls_key=args.tls_key,
    )  # fmt: skip
    with client:
        if args.command == "domains":
            print(json.dumps(client.list_domains(), indent=2))
        elif args.command == "personalize" and args.detach:
            scene = args.method == "break_a_scene"
            op = client.start_personalize(
                args.image, args.domain, steps=args.steps, seed=args.seed, method=args.method, owner=args.owner,
                mask=None if scene else _single_mask(args), masks=args.mask if scene else (),
                mask_domains=args.mask_domain if scene else (),
            )  # fmt: skip
            print(op["id"])
        elif args.command == "operations":
            return _operations(client, args)
        elif args.command == "personalize":
            with tqdm(desc="personalize", unit="step", file=sys.stderr) as bar:

                def on_progress(step: int, total: int, loss: float, stage: str) -> None:
                    bar.total = total
                    bar.n = step
                    bar.set_postfix(stage=stage, loss=f"{loss:.4f}")

                if args.method == "break_a_scene":  # one concept per mask, each printed
                    concepts = client.personalize_scene(
                        args.image,
                        args.mask,
                        args.domain,
                        mask_domains=args.mask_domain,
                        steps=args.steps,
                        seed=args.seed,
                        owner=args.owner,
                        on_progress=on_progress,
                    )
                else:
                    concepts = [
                        client.personalize(
                            args.image,
                            args.domain,
                            steps=args.steps,
                            seed=args.seed,
                            mask=_single_mask(args),
                            method=args.method,
                            owner=args.owner,
                            on_progress=on_progress,
                        )
                    ]
            if args.method == "break_a_scene":  # JSON lines, one concept per mask
                for concept in concepts:
                    print(json.dumps(concept))
            else:
                print(json.dumps(concepts[0], indent=2))
        elif args.command == "generate":
            args.out.mkdir(parents=True, exist_ok=True)
            images = client.generate(
                args.prompt,
                negative_prompt=args.negative_prompt,
                num_images=args.num_images,
                steps=args.steps,
                guidance=args.guidance,
                seed=args.seed,
                identity_guidance=args.identity_guidance,
            )
            for index, seed, image in tqdm(images, total=args.num_images, desc="generate", unit="image"):
                path = args.out / f"{index:02d}-seed{seed}.png"
                image.save(path)
                print(path)
        elif args.command == "list":
            for concept in client.list_concepts(args.domain):
                print(json.dumps(concept))
        elif args.command == "get":
            print(json.dumps(client.get_concept(args.id), indent=2))
        elif args.command == "delete":
            client.delete_concept(args.id)
            print(f"deleted {args.id}")
    return 0


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "personalize" and not (args.domain or args.mask_domain):
        parser.error("personalize needs --domain (or, with --method break_a_scene, one --mask-domain per --mask)")
    import grpc

    try:
        return _run(args)
    except grpc.RpcError as e:
        print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as e:  # unreadable image or certificate, unwritable output folder
        print(f"error: {e}", file=sys.stderr)
        return 1
