"""Wheels for a GPU machine that has torch but no network: ``benchmarks/gpu.sh --fetch-wheels``.

    python -m benchmarks.gpu_wheels .whl [--python-version 3.12] [--also torchao==X]

Run where pip reaches the package index: it saves, for that Python on manylinux x86-64, the
versions installed here of what the server needs (its dependencies, walked from this
environment's metadata), less the torch stack the machine brings, PyAV (video only) and what
a CUDA PyTorch image ships anyway (``IMAGE``); para-attn (an sdist) and this project's two
distributions built as wheels. ``--also`` adds more (gpu.sh: torchao, for the fp8 row).
``benchmarks/gpu.sh`` installs them there.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
OWN = {"para-attn-server": ROOT, "para-attn-client": ROOT / "core" / "client"}
# The torch stack the machine brings (torch and what it needs), and PyAV (video only, 40 MB).
TORCH_STACK = {"torch", "triton", "numpy", "sympy", "mpmath", "networkx", "jinja2", "markupsafe", "filelock", "fsspec",
               "typing-extensions", "setuptools", "av"}  # fmt: skip
# What a CUDA PyTorch image ships besides (one such image's package list had them all), where
# this project needs no particular version: left out, the wheels fit in what travels (64 MiB).
# gpu.sh runs `pip check` after installing: one missing there is named.
IMAGE = {
    "pillow", "pyyaml", "regex", "requests", "urllib3", "idna", "certifi", "charset-normalizer", "psutil", "uvloop",
    "hf-xet", "rich", "pygments", "markdown-it-py", "mdurl", "click", "typer", "shellingham", "tqdm", "packaging",
    "anyio", "sniffio", "h11", "httpx", "httpcore", "multidict", "prometheus-client", "zipp", "safetensors",
    "tokenizers",
}  # fmt: skip
BUILT = {"para-attn"}  # sdists only on the index: built here
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")  # fmt: skip


def closure(root: str, python_version: str) -> dict[str, str]:
    """Every distribution ``root`` needs, with the version installed here, by canonical name."""
    environment = {"extra": "", "python_version": python_version, "python_full_version": f"{python_version}.0"}
    found: dict[str, str] = {}
    todo = [root]
    while todo:
        name = canonicalize_name(todo.pop())
        if name in found:
            continue
        dist = md.distribution(name)
        found[name] = dist.version
        for text in dist.requires or ():
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate(environment):
                todo.append(requirement.name)
    return found


def skipped(name: str) -> bool:
    return name in TORCH_STACK or name in IMAGE or name.startswith(("nvidia-", "cuda-"))


def fetch(directory: Path, python_version: str, also: Sequence[str]) -> None:
    pip = [sys.executable, "-m", "pip", "-q"]
    directory.mkdir(parents=True, exist_ok=True)
    wanted = closure("para-attn-server", python_version)
    binary = [f"{n}=={v}" for n, v in sorted(wanted.items()) if not skipped(n) and n not in OWN and n not in BUILT]
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    subprocess.run([*pip, "download", "--no-deps", "--only-binary=:all:", "--implementation", "cp",
                    "--python-version", python_version, *platforms, "-d", str(directory), *binary, *also],
                   check=True)  # fmt: skip
    built = [f"{name}=={wanted[name]}" for name in sorted(BUILT)]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(directory), *built], check=True)
    own = [str(path) for path in OWN.values()]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(directory), *own], check=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_wheels", description=__doc__)
    parser.add_argument("directory", type=Path)
    parser.add_argument("--python-version", default="3.12", help="the GPU machine's Python (default: %(default)s)")
    parser.add_argument("--also", action="append", default=[], help="another requirement, e.g. torchao==0.15.0")
    args = parser.parse_args(argv)
    fetch(args.directory, args.python_version, args.also)
    wheels = sorted(args.directory.glob("*.whl"))
    size = sum(path.stat().st_size for path in wheels)
    print(f"{len(wheels)} wheels, {size / 2**20:.1f} MiB in {args.directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
