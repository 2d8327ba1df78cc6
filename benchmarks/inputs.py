"""``--only inputs``: what a picture in the request adds to a job.

The tiny model on 2 ranks, 32x32, 4 steps: the same job without a picture, with a 4 MiB PNG
as a data URL in JSON, and with it as a multipart file part (image-to-image at strength 1, so
the same number of denoising steps runs). Rounds are interleaved; the added time is the
median's difference, and the ratio is over the job without a picture.
"""

from __future__ import annotations

import base64
import io
import json
import os
import uuid
from collections.abc import Callable

from .harness import Report, Stat, client, server, timed

TARGET_BYTES = 4 * 1024 * 1024


def four_mib_png() -> bytes:
    """A PNG of about 4 MiB (random pixels do not compress)."""
    from PIL import Image

    side = int((TARGET_BYTES / 3) ** 0.5)
    buffer = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def multipart(fields: dict[str, object], picture: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\ncontent-disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    head = f'--{boundary}\r\ncontent-disposition: form-data; name="image"; filename="in.png"\r\n'
    parts.append(head.encode() + b"content-type: image/png\r\n\r\n" + picture + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def inputs(report: Report, quick: bool) -> None:
    rounds = 5 if quick else 20
    picture = four_mib_png()
    fields = {"prompt": "a cat", "width": 32, "height": 32, "num_inference_steps": 4, "strength": 1.0, "seed": 1}
    plain = json.dumps(fields).encode()
    with_url = json.dumps({**fields, "image": "data:image/png;base64," + base64.b64encode(picture).decode()}).encode()
    form, form_type = multipart(fields, picture)
    with server("tiny", 2) as srv:
        c = client(srv)

        def job(body: bytes, content_type: str = "application/json") -> None:
            status, _ = c.request(
                "POST", "/v1/jobs?wait=120", body, {"accept": "application/octet-stream", "content-type": content_type}
            )
            assert status == 201, status

        cases: dict[str, Callable[[], None]] = {
            "no picture": lambda: job(plain),
            "4 MiB PNG, JSON data URL": lambda: job(with_url),
            "4 MiB PNG, multipart file": lambda: job(form, form_type),
        }
        samples: dict[str, list[float]] = {case: [] for case in cases}
        for fn in cases.values():
            fn()  # warm-up
        for _ in range(rounds):
            for case, fn in cases.items():
                samples[case] += timed(fn, 1, warmup=0)
        base = Stat.of(samples["no picture"])
        report.add(
            "inputs", f"tiny 32x32, 4 steps, 2 ranks: no picture ({len(picture)} B below)", base.median, "s", base.ms()
        )
        for case in list(cases)[1:]:
            stat = Stat.of(samples[case])
            added = (
                f"+{(stat.median - base.median) * 1e3:.1f} ms per job, x{stat.median / base.median:.2f} the job without"
            )
            report.add("inputs", f"tiny: {case}", stat.median, "s", f"{stat.ms()}  {added}", stat=vars(stat))
