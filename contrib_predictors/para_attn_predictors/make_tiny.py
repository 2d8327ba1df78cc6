"""Save a tiny random-weight pipeline to try the ``flux`` or ``wan`` predictor without a download.

    python -m para_attn_predictors.make_tiny flux /tmp/tiny-flux
    para-attn-server --model flux --model-path /tmp/tiny-flux --num-devices 2 \\
        -o max_sequence_length=64 -o warmup='{"width": 32, "height": 32}'

Its outputs are noise; it runs the same loading, parallel and serving code as the real models.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any


def build(kind: str, seed: int = 0) -> Any:
    """The tiny pipeline of ``kind`` (``flux`` or ``wan``), float32, eval mode."""
    if kind == "flux":
        from .tiny_flux import build_tiny_flux_pipeline

        return build_tiny_flux_pipeline(seed)
    if kind == "wan":
        from .tiny_wan import build_tiny_wan_pipeline

        return build_tiny_wan_pipeline(seed)
    raise ValueError(f"unknown kind {kind!r}: expected flux or wan")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m para_attn_predictors.make_tiny", description="Save a tiny random-weight pipeline."
    )
    parser.add_argument("kind", choices=["flux", "wan"])
    parser.add_argument("directory", help="where to save it (created; existing files are overwritten)")
    parser.add_argument("--seed", type=int, default=0, help="weights seed (default: %(default)s)")
    args = parser.parse_args(argv)
    build(args.kind, args.seed).save_pretrained(args.directory)
    print(args.directory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
