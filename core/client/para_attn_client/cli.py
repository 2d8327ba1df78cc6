"""The ``para-attn-client`` command: ``para-attn-client generate URL -p KEY=VALUE ...``
runs one job on a server (``generate``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from para_attn_client import generate

PROG = "para-attn-client"
USAGE = f"usage: {PROG} generate URL -p KEY=VALUE ... [-o FILE] [--json]  (see '{PROG} generate --help')"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["generate"]:
        return generate.main(args[1:], prog=f"{PROG} generate")
    if args[:1] in (["-h"], ["--help"]):
        print(f"{USAGE}\n\nRun one job on a para-attn-server and write its output.")
        return 0
    print(f"{USAGE}\n{PROG}: error: expected the command 'generate'", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
