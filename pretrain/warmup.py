"""Compile DeepSpeed's CPU shared-memory communication op once, at setup time.

DeepSpeed builds it with gcc on first use (about a minute); doing it here keeps that
minute out of the first training run and out of the tests.
"""

import sys
import time


def main() -> int:
    started = time.time()
    from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder

    ShareMemCommBuilder().load(verbose=False)
    print(f"DeepSpeed CPU op ready ({time.time() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
