"""``--only micro``: the costs that design decisions in the code rest on, measured in-process.

Each row names the module whose comment points here: the base64 codec (``b64.py``, and the
strict check of a predictor's base64 in ``predictor.py``) and what importing a package costs
a fresh interpreter (why the server loads Litestar lazily and plugins import httpx late).
"""

from __future__ import annotations

import base64
import binascii
import os
import subprocess
import sys
import time

from para_attn_server import b64

from .harness import Report, Stat, timed

MIB16 = 16 * 1024 * 1024
_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="


def codecs(report: Report, quick: bool) -> None:
    data = os.urandom(MIB16)
    text = b64.encode(data)
    n = 5 if quick else 20
    rows = [
        ("b64.py: encode 16 MiB (pybase64)", lambda: b64.encode(data)),
        ("b64.py: encode 16 MiB (binascii)", lambda: base64.b64encode(data)),
        ("b64.py: strict decode 16 MiB (pybase64)", lambda: b64.decode(text)),
        ("b64.py: strict decode 16 MiB (binascii)", lambda: binascii.a2b_base64(text, strict_mode=True)),
        ("predictor.py: alphabet scan of 16 MiB (the old check)", lambda: text.translate(None, _ALPHABET)),
    ]
    for case, fn in rows:
        stat = Stat.of(timed(fn, n, warmup=1))
        report.add("micro", case, stat.median, "s", stat.ms())


def imports(report: Report, quick: bool) -> None:
    """Seconds a fresh interpreter spends importing a module, beyond starting itself."""
    n = 3 if quick else 7

    def cost(module: str) -> float:
        samples = []
        for _ in range(n):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", f"import {module}"], check=True)
            samples.append(time.perf_counter() - start)
        return Stat.of(samples).median

    base = cost("sys")
    for module, why in [
        ("litestar", "__init__.py: the server loads on first use"),
        ("httpx", "webhooks.py: imported where it is used"),
        ("para_attn_server", "what a rank and a predictor import"),
        ("para_attn_server.server", "the whole HTTP side"),
    ]:
        report.add("micro", f"import {module}", cost(module) - base, "s", why)


def micro(report: Report, quick: bool) -> None:
    codecs(report, quick)
    imports(report, quick)
