"""Adapters (LoRA) as the clients see them, against one real server: the tiny Flux pipeline on
2 ranks with two adapters (``--lora a=... --lora b=...``, rank-4 LoRAs of its transformer), an
empty ``--lora-dir`` to add one at run time, behind an API key. The official ``openai`` SDK
(``/v1/models`` lists each adapter with the served model as its parent; ``model="a"`` is
the job ``loras=[{"name": "a", "scale": 1}]``, byte for byte), ``para_attn_client``
(``loras=`` in three shapes, ``loras()``) and its ``generate`` command (``-p loras=JSON``).
The web page's adapters: tests/integration/test_webui.py."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import openai
import pytest
from PIL import Image

from para_attn_client import API_KEY_ENV, Adapter, AppliedLora, AsyncClient, Client, InputRejected
from para_attn_server.testing import CLI, Server, server_env

pytestmark = pytest.mark.timeout(240)

KEY = "adapters-test-key"
FIELDS: dict[str, Any] = {"prompt": "a red cat", "width": 32, "height": 32, "num_inference_steps": 2, "seed": 3}
SDK_FIELDS: dict[str, Any] = {
    "prompt": "a red cat",
    "size": "32x32",
    "extra_body": {"num_inference_steps": 2, "seed": 3},
}


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tests.contrib.support import make_lora  # torch and diffusers, for this fixture only

    root = tmp_path_factory.mktemp("loras")
    (root / "offered").mkdir()
    return {"a": make_lora(root / "a", seed=1), "b": make_lora(root / "b", seed=2), "dir": root / "offered"}


@pytest.fixture(scope="module")
def served(launch: Any, adapters: dict[str, Path]) -> Server:
    server: Server = launch(
        "--model", "tiny", "--num-devices", "2", "--api-key", KEY,
        "--lora", f"a={adapters['a']}", "--lora", f"b={adapters['b']}", "--lora-dir", str(adapters["dir"]),
    )  # fmt: skip
    server.http.headers["Authorization"] = f"Bearer {KEY}"
    return server


def sdk(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)


def job_output(server: Server, **fields: Any) -> bytes:
    """The output of a job of ``/v1/jobs`` with ``fields``, once it succeeded."""
    view = server.run(**fields)
    assert view["state"] == "succeeded", view
    return server.output(view["id"])


def url_job(server: Server, answer: Any) -> tuple[dict[str, Any], bytes]:
    """The job view and output behind an SDK answer given with ``response_format="url"``."""
    url = answer.data[0].url
    assert url is not None
    job_id = url.rsplit("/", 2)[-2]
    return server.http.get(f"/v1/jobs/{job_id}").json(), server.output(job_id)


# ---- the openai SDK -------------------------------------------------------------------------


def test_models_lists_each_adapter_with_the_served_model_as_parent_as_offered_now(
    served: Server, adapters: dict[str, Path]
) -> None:
    client = sdk(served)
    assert [(model.id, model.owned_by, getattr(model, "parent", None)) for model in client.models.list()] == [
        ("tiny", "para-attn-server", None), ("a", "para-attn-server", "tiny"), ("b", "para-attn-server", "tiny"),
    ]  # fmt: skip
    assert getattr(client.models.retrieve("b"), "parent", None) == "tiny"

    shutil.copytree(adapters["a"], adapters["dir"] / "c")  # offered at run time, from --lora-dir
    assert served.http.post("/v1/loras", json={"name": "c", "path": "c"}).status_code == 201
    assert [model.id for model in client.models.list()] == ["tiny", "a", "b", "c"]
    assert served.http.delete("/v1/loras/c").status_code == 204
    assert [model.id for model in client.models.list()] == ["tiny", "a", "b"]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("c")


def test_model_a_generates_what_a_job_with_loras_a_at_scale_1_does(served: Server) -> None:
    client = sdk(served)
    view, output = url_job(served, client.images.generate(model="a", response_format="url", **SDK_FIELDS))
    assert view["loras"] == [{"name": "a", "scale": 1.0}]
    assert output == job_output(served, **FIELDS, loras=[{"name": "a", "scale": 1}])

    answer = client.images.generate(model="a", **SDK_FIELDS)  # as b64_json, the same bytes
    assert base64.b64decode(answer.data[0].b64_json or "") == output
    base_view, base = url_job(served, client.images.generate(model="tiny", response_format="url", **SDK_FIELDS))
    assert "loras" not in base_view
    assert base == job_output(served, **FIELDS)
    assert base != output


def test_an_edit_with_model_b_is_the_job_with_loras_b(served: Server, tmp_path: Path) -> None:
    picture = tmp_path / "cat.png"
    Image.new("RGB", (32, 32), (220, 40, 40)).save(picture)
    extra = {"strength": 0.6, "seed": 3, "num_inference_steps": 2}
    client = sdk(served)
    with open(picture, "rb") as file:
        answer = client.images.edit(model="b", image=file, prompt="a cat", size="32x32", extra_body=extra)
    with open(picture, "rb") as file:
        base = client.images.edit(image=file, prompt="a cat", size="32x32", extra_body=extra)

    edited = base64.b64decode(answer.data[0].b64_json or "")
    data = "data:image/png;base64," + base64.b64encode(picture.read_bytes()).decode()
    same = {"prompt": "a cat", "width": 32, "height": 32, "image": data, **extra}
    assert edited == job_output(served, **same, loras=[{"name": "b", "scale": 1.0}])
    assert edited != base64.b64decode(base.data[0].b64_json or "")


def test_a_model_that_is_neither_the_served_one_nor_an_adapter_is_a_400_naming_model(served: Server) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(served).images.generate(model="dall-e-3", prompt="a cat")
    assert caught.value.param == "model"
    assert "serves 'tiny' and its adapters a, b" in caught.value.message


# ---- para_attn_client and its generate command ------------------------------------------------


def test_the_client_lists_the_offered_adapters(served: Server) -> None:
    with Client(served.url, api_key=KEY) as client:
        listed = client.loras()
    assert all(isinstance(item, Adapter) for item in listed)
    assert [(item.name, item.source, item.rank) for item in listed] == [("a", "--lora", 4), ("b", "--lora", 4)]

    async def listing() -> list[Adapter]:
        async with AsyncClient(served.url, api_key=KEY) as client:
            return await client.loras()

    assert [item.name for item in asyncio.run(listing())] == ["a", "b"]


def test_the_client_applies_loras_given_as_a_dict_pairs_or_the_servers_shape(served: Server) -> None:
    expected = job_output(served, **FIELDS, loras=[{"name": "a", "scale": 0.8}, {"name": "b", "scale": -0.5}])
    with Client(served.url, api_key=KEY) as client:
        result = client.generate(**FIELDS, loras={"a": 0.8, "b": -0.5})
        assert result.job.loras == [AppliedLora("a", 0.8), AppliedLora("b", -0.5)]
        assert result.output == expected
        assert client.generate(FIELDS, loras=[("a", 0.8), ("b", -0.5)]).output == expected
        assert client.generate(**FIELDS).output != expected
        with pytest.raises(InputRejected) as caught:
            client.generate(**FIELDS, loras={"nope": 1.0})
        assert caught.value.field == "loras[0].name"

    async def again() -> bytes:  # a job's own adapters, applied again
        async with AsyncClient(served.url, api_key=KEY) as client:
            return (await client.generate(**FIELDS, loras=result.job.loras)).output

    assert asyncio.run(again()) == expected


def test_the_generate_command_takes_loras_as_json(served: Server, tmp_path: Path) -> None:
    expected = job_output(served, **FIELDS, loras=[{"name": "a", "scale": 0.8}])
    params = [arg for name, value in FIELDS.items() for arg in ("-p", f"{name}={value}")]
    command = [str(CLI.with_name("para-attn-client")), "generate", served.url, *params, "--json", "-q"]
    for index, loras in enumerate(('[{"name": "a", "scale": 0.8}]', '{"a": 0.8}')):
        target = tmp_path / f"out-{index}.png"
        done = subprocess.run(
            [*command, "-p", f"loras={loras}", "-o", str(target)],
            check=False, capture_output=True, text=True, timeout=120, env=server_env(**{API_KEY_ENV: KEY}),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["job"]["loras"] == [{"name": "a", "scale": 0.8}]
        assert target.read_bytes() == expected
