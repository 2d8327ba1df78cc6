"""Save a tiny random-weight pipeline to try the ``flux`` or ``wan`` predictor without a download.

    python -m para_attn_predictors.make_tiny flux /tmp/tiny-flux
    para-attn-server --model flux --model-path /tmp/tiny-flux --num-devices 2 \\
        -o max_sequence_length=64 -o warmup='{"width": 32, "height": 32}'

Kinds: ``flux`` (FluxPipeline: text to image; the ``flux`` predictor also runs image to image
and inpainting from it), ``flux-kontext`` (FluxKontextPipeline: image editing), ``wan``
(WanPipeline: text to video) and ``wan-i2v`` (WanImageToVideoPipeline: image to video).
Its outputs are noise; it runs the same loading, parallel and serving code as the real models.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

KINDS = ("flux", "flux-kontext", "wan", "wan-i2v")


def build(kind: str, seed: int = 0) -> Any:
    """The tiny pipeline of ``kind`` (one of ``KINDS``), float32, eval mode."""
    if kind == "flux":
        from .tiny_flux import build_tiny_flux_pipeline

        return build_tiny_flux_pipeline(seed)
    if kind == "flux-kontext":
        from .tiny_flux import build_tiny_flux_kontext_pipeline

        return build_tiny_flux_kontext_pipeline(seed)
    if kind == "wan":
        from .tiny_wan import build_tiny_wan_pipeline

        return build_tiny_wan_pipeline(seed)
    if kind == "wan-i2v":
        from .tiny_wan import build_tiny_wan_i2v_pipeline

        return build_tiny_wan_i2v_pipeline(seed)
    raise ValueError(f"unknown kind {kind!r}: expected one of {', '.join(KINDS)}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m para_attn_predictors.make_tiny", description="Save a tiny random-weight pipeline."
    )
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("directory", help="where to save it (created; existing files are overwritten)")
    parser.add_argument("--seed", type=int, default=0, help="weights seed (default: %(default)s)")
    args = parser.parse_args(argv)
    build(args.kind, args.seed).save_pretrained(args.directory)
    print(args.directory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
