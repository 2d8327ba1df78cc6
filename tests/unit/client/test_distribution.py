"""The client is a distribution of its own (core/client): what pip would install for it has
no torch, diffusers, transformers, litestar or pluggy; importing it loads none of the
server; ``para_attn_server.client`` still hands out the same classes. Installed into an
empty venv and run against a server: tests/integration/test_client_distribution.py."""

from __future__ import annotations

import json
import subprocess
import sys

import para_attn_client
import para_attn_server.client
from tests import REPO

CLIENT = REPO / "core" / "client"
SERVER_ONLY = {"torch", "diffusers", "transformers", "litestar", "pluggy"}


def test_pip_would_install_the_client_without_torch_or_the_server() -> None:
    report = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--report", "-",
         str(CLIENT)],
        check=True, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    names = {item["metadata"]["name"].lower().replace("_", "-") for item in json.loads(report.stdout)["install"]}

    assert names & SERVER_ONLY == set()
    assert {"para-attn-client", "httpx", "httpx-sse", "msgspec", "tqdm"} <= names
    assert "para-attn-server" not in names


def test_importing_the_client_loads_nothing_of_the_server() -> None:
    # Here, where the server and torch are installed: they could be imported, and are not.
    code = (
        "import json, sys\n"
        "import para_attn_client, para_attn_client.cli, para_attn_client.generate, para_attn_client.media\n"
        "print(json.dumps(sorted({name.split('.')[0] for name in sys.modules})))\n"
    )
    loaded = set(json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                           text=True, timeout=60).stdout))  # fmt: skip

    assert loaded & (SERVER_ONLY | {"para_attn_server", "para_attn_plugins", "para_attn_predictors"}) == set()
    assert "PIL" not in loaded  # pictures are sent as bytes; a PIL image only needs its own save()


def test_para_attn_server_client_is_the_same_client() -> None:
    assert para_attn_server.client.__all__ == para_attn_client.client.__all__
    for name in para_attn_server.client.__all__:
        assert getattr(para_attn_server.client, name) is getattr(para_attn_client, name), name
