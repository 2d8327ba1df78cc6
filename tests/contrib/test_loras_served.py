"""Adapters served: ``flux`` from a saved tiny directory on 2 ranks (``-o parallel_vae=0``)
with one LoRA registered by ``--lora`` and two found by ``--lora-dir``, two kept loaded. A
job that names them equals diffusers called directly in this process (``load_lora_weights``
+ ``set_adapters``); the next job without them is the base output, byte for byte; three
adapters in turn are evicted and loaded again (the metrics count it) and still equal their
direct runs; a name the server does not offer is a 400 naming the item; adapters added at
run time are checked against the model (a 400 saying why), used, and removed."""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from safetensors.numpy import save_file

from para_attn_server.testing import Server
from tests.contrib.support import apply_loras, assert_rejected, generate, make_lora, npy

pytestmark = pytest.mark.timeout(300)

REQUEST: dict[str, Any] = {"prompt": "a red cat", "width": 32, "height": 32, "num_inference_steps": 4, "seed": 3}
CALL = {**{k: v for k, v in REQUEST.items() if k != "seed"}, "guidance_scale": 3.5, "max_sequence_length": 64}


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("loras")
    lora_dir = root / "offered"
    lora_dir.mkdir()
    made = make_lora(root / "b-made", seed=2)
    shutil.copy(made / "pytorch_lora_weights.safetensors", lora_dir / "b.safetensors")
    make_lora(lora_dir / "c", seed=4)
    more = lora_dir / ".more"  # hidden: the scan skips it, POST /v1/loras reaches it
    more.mkdir()
    shutil.copy(lora_dir / "c" / "pytorch_lora_weights.safetensors", more / "d.safetensors")
    (more / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    module = "transformer.transformer_blocks.0.attn.to_q"
    wide = {f"{module}.lora_A.weight": np.zeros((4, 999), np.float32),
            f"{module}.lora_B.weight": np.zeros((32, 4), np.float32)}  # fmt: skip
    save_file(wide, str(more / "other-model.safetensors"))
    (root / "outside.safetensors").write_bytes((more / "d.safetensors").read_bytes())
    paths = {"a": make_lora(root / "a", seed=1), "b": lora_dir / "b.safetensors", "c": lora_dir / "c"}
    return paths | {"d": more / "d.safetensors", "dir": lora_dir, "more": more}


@pytest.fixture(scope="module")
def served(tiny_dirs: dict[str, Path], launch: Any, adapters: dict[str, Path]) -> Server:
    server: Server = launch(
        "--model", "flux", "--model-path", str(tiny_dirs["flux"]), "--num-devices", "2",
        "-o", "max_sequence_length=64", "-o", "parallel_vae=0",
        "--lora", f"a={adapters['a']}", "--lora-dir", str(adapters["dir"]),
        "--max-loaded-loras", "2", "--max-loras-per-request", "2",
    )  # fmt: skip
    return server


def direct(flux_dir: Path, adapters: dict[str, Path], applied: list[tuple[str, float]]) -> np.ndarray:
    """diffusers as it is: the saved pipeline, the adapters loaded and set, seed 3."""
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(str(flux_dir))
    pipe.set_progress_bar_config(disable=True)
    apply_loras(pipe, applied, adapters)
    result = pipe(**CALL, generator=torch.Generator("cpu").manual_seed(3), output_type="np")
    return np.asarray(result.images[0])


def loras(*applied: tuple[str, float]) -> list[dict[str, Any]]:
    return [{"name": name, "scale": scale} for name, scale in applied]


def test_adapters_on_two_ranks_are_diffusers_with_them_and_the_base_comes_back_exactly(
    served: Server, tiny_dirs: dict[str, Path], adapters: dict[str, Path]
) -> None:
    base = generate(served, **REQUEST, output_format="npy")  # before any adapter was applied
    assert np.abs(npy(base) - direct(tiny_dirs["flux"], adapters, [])).max() < 1e-4

    expected = direct(tiny_dirs["flux"], adapters, [("a", 0.8)])
    got = npy(generate(served, **REQUEST, output_format="npy", loras=loras(("a", 0.8))))
    assert np.abs(got - expected).max() < 1e-4
    assert np.abs(got - npy(base)).max() > 1e-2  # the adapter changes the picture
    png = Image.open(io.BytesIO(generate(served, **REQUEST, loras=loras(("a", 0.8)))))
    assert np.abs(np.asarray(png) / 255 - expected).max() <= 3 / 255
    assert generate(served, **REQUEST, output_format="npy") == base

    both = npy(generate(served, **REQUEST, output_format="npy", loras=loras(("a", 0.8), ("b", -0.5))))
    assert np.abs(both - direct(tiny_dirs["flux"], adapters, [("a", 0.8), ("b", -0.5)])).max() < 1e-4
    assert generate(served, **REQUEST, output_format="npy") == base


def test_an_unknown_adapter_or_too_many_are_400_and_the_server_keeps_serving(served: Server) -> None:
    assert_rejected(served, {"loras": loras(("a", 1.0), ("nope", 1.0))}, "loras[1].name")
    response = served.http.post("/v1/jobs", json={"prompt": "a cat", "loras": loras(("nope", 1.0))})
    assert "registered: a, b, c" in response.json()["error"]
    assert_rejected(served, {"loras": loras(*[("a", 1.0)] * 3)}, "loras")
    assert generate(served, **REQUEST, output_format="npy")


def test_the_schema_documents_the_loras_field(served: Server) -> None:
    text = served.http.get("/schema/openapi.json").text
    assert '"loras"' in text
    assert "registered adapter" in text


def adapter_metrics(served: Server) -> dict[str, float]:
    """Group 0's adapter series, read with Prometheus' own parser."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(served.http.get("/metrics").text):
        for sample in family.samples:
            if sample.name.startswith("para_attn_adapter") and sample.labels.get("group") == "0":
                found[sample.name + (f"{{le={sample.labels['le']}}}" if "le" in sample.labels else "")] = sample.value
    return found


def test_three_adapters_in_turn_with_two_kept_are_evicted_and_still_equal_their_direct_runs(
    served: Server, tiny_dirs: dict[str, Path], adapters: dict[str, Path]
) -> None:
    before = adapter_metrics(served)
    # Whatever the two kept before (none, or a and b from the tests above), each of these loads.
    for name, scale in (("c", 1.0), ("a", 0.8), ("b", 0.5), ("c", 0.6)):
        response = served.http.post("/v1/jobs", params={"wait": 60}, json={**REQUEST, "output_format": "npy",
                                                                           "loras": loras((name, scale))})  # fmt: skip
        view = response.json()
        assert view["state"] == "succeeded", view
        assert view["loras"] == [{"name": name, "scale": scale}]  # the job view says what ran
        expected = direct(tiny_dirs["flux"], adapters, [(name, scale)])
        assert np.abs(npy(served.output(view["id"])) - expected).max() < 1e-4, name
    after = adapter_metrics(served)
    assert after["para_attn_adapter_loads_total"] - before["para_attn_adapter_loads_total"] == 4
    assert after["para_attn_adapter_evictions_total"] - before["para_attn_adapter_evictions_total"] >= 2
    assert after["para_attn_adapters_loaded"] == 2
    assert after["para_attn_adapter_load_seconds_count"] == after["para_attn_adapter_loads_total"]
    assert after["para_attn_adapter_load_seconds_bucket{le=+Inf}"] == after["para_attn_adapter_loads_total"]
    group = served.http.get("/server_status").json()["groups"][0]
    assert group["adapters"]["loaded"] == ["b", "c"]  # least recently used first
    listed = {item["name"]: item for item in served.http.get("/v1/loras").json()["data"]}
    assert listed["c"]["loaded_by"] == [0]
    assert listed["a"]["loaded_by"] == []
    assert (listed["a"]["source"], listed["b"]["source"], listed["a"]["rank"]) == ("--lora", "--lora-dir", 4)


def test_adapters_added_at_run_time_are_checked_used_and_removed(served: Server) -> None:
    for path, reason in (
        ("../outside.safetensors", "must lie under --lora-dir"),
        (".more/corrupt.safetensors", "not a safetensors file"),
        (".more/other-model.safetensors", "another base model"),
        (".more/missing.safetensors", "does not exist"),
    ):
        response = served.http.post("/v1/loras", json={"name": "d", "path": path})
        assert response.status_code == 400, response.text
        assert response.json()["error"].startswith("path:"), response.text
        assert reason in response.json()["error"]
    response = served.http.post("/v1/loras", json={"name": "d", "path": ".more/d.safetensors"})
    assert response.status_code == 201, response.text
    assert response.json() == {"name": "d", "source": "api", "rank": 4, "loaded_by": []}
    assert served.http.post("/v1/loras", json={"name": "d", "path": ".more/d.safetensors"}).status_code == 400
    # d is c's file under another name: the same picture
    with_c = generate(served, **REQUEST, output_format="npy", loras=loras(("c", 0.7)))
    assert generate(served, **REQUEST, output_format="npy", loras=loras(("d", 0.7))) == with_c

    held = served.http.post("/v1/jobs", json={**REQUEST, "num_inference_steps": 100, "loras": loras(("d", 1.0))})
    job_id = held.json()["id"]
    assert served.http.delete("/v1/loras/d").status_code == 409  # a queued or running job applies it
    served.http.get(f"/v1/jobs/{job_id}", params={"wait": 120})
    assert served.http.delete("/v1/loras/d").status_code == 204
    assert served.http.delete("/v1/loras/d").status_code == 404
    assert_rejected(served, {"loras": loras(("d", 1.0))}, "loras[0].name")
    assert "d" not in [item["name"] for item in served.http.get("/v1/loras").json()["data"]]


def test_an_adapter_that_cannot_load_fails_the_start_naming_it(launch: Any, adapters: dict[str, Path]) -> None:
    server: Server = launch("--model", "tiny", "--lora", f"bad={adapters['more'] / 'other-model.safetensors'}",
                            wait_ready=False)  # fmt: skip
    code = server.process.wait(120)
    server.log.wait_closed(10)
    assert code != 0
    assert "--lora bad: cannot load it:" in server.log.text
    assert "another base model" in server.log.text
