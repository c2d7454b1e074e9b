"""The `e4t` command: a thin dispatcher that imports each subcommand's package only when used."""

from __future__ import annotations

import importlib
import os
import sys

# group -> (module with main(argv) -> int, one-line help)
COMMANDS = {
    "shards": ("shards.cli", "build, synthesize and check WebDataset shards"),
    "pretrain": ("pretrain.cli", "train the embedded base or a domain pack (DeepSpeed)"),
    "serve": ("serve.cli", "run the gRPC server"),
    "client": ("serve.client_cli", "call a running server: personalize, operations, generate, list, get, delete"),
    "demo": ("cli.demo", "the whole flow on the embedded default, writing a grid of results"),
    "eval": ("evaluation.cli", "measure personalization: identity, context fidelity, diversity"),
    "personalize": ("cli.personalize", "one image to a concept file, locally: PyTorch or ONNX Runtime"),
    "export": ("cli.export", "a concept to diffusers (embedding + LoRA), or a pack's encoder to ONNX"),
}


def usage() -> str:
    lines = ["usage: e4t <command> [options]", "", "commands:"]
    lines += [f"  {name:<12} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "e4t <command> --help for the options of one command"]
    return "\n".join(lines)


def prepare_process() -> None:
    """OpenMP threads sleep instead of spinning while they wait (unless the environment says otherwise).

    Must run before torch is imported: libgomp reads OMP_WAIT_POLICY once, when it loads. Spinning
    threads on a machine shared with another busy process made generation 30-50x slower
    (README, "Sharing the CPU"); `e4t.threads.configure` then picks the thread counts.
    """
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in {"-h", "--help"}:
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"e4t: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    prepare_process()
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)
