"""Pictures in, through every way a client sends one, on 2 real ranks (``tests.predictors:Pictures``
answers what ``predict`` received on each rank): data URLs, bare base64, multipart file parts,
allowed URLs and ``job:<id>``; the refusals (each a 400 naming the field, nothing queued); and a
queued job's picture surviving a SIGKILL of the server."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import signal
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from PIL import Image as PILImage
from pytest_httpserver import HTTPServer
from werkzeug import Response

from para_attn_server.testing import Server, pid_gone
from tests.reliability.support import until

PICTURES = ["--model", "tests.predictors:Pictures"]
MAX_PIXELS = 512 * 512
MAX_BYTES = 1024 * 1024


def png(width: int = 24, height: int = 16, color: str = "orange") -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", (width, height), color).save(buffer, "PNG")
    return buffer.getvalue()


def pixels(picture: bytes, mode: str = "RGB") -> str:
    with PILImage.open(io.BytesIO(picture)) as opened:
        return hashlib.sha256(opened.convert(mode).tobytes()).hexdigest()


def data_url(data: bytes, kind: str = "image/png") -> str:
    return f"data:{kind};base64," + base64.b64encode(data).decode()


def bomb() -> bytes:
    """A PNG of a few hundred bytes whose header claims 100000 x 100000 pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def elsewhere() -> Iterator[HTTPServer]:
    """A host the server is not allowed to fetch from (another port on 127.0.0.1)."""
    server = HTTPServer(host="127.0.0.1")
    server.expect_request("/secret.png").respond_with_data(png(color="black"), content_type="image/png")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def origin(elsewhere: HTTPServer) -> Iterator[HTTPServer]:
    """The allowed host: serves a picture, and redirects to ``elsewhere``."""
    server = HTTPServer(host="127.0.0.1")
    server.expect_request("/cat.png").respond_with_data(png(color="purple"), content_type="image/png")
    away = Response(status=302, headers={"Location": elsewhere.url_for("/secret.png")})
    server.expect_request("/away.png").respond_with_response(away)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def server(launch: Callable[..., Server], origin: HTTPServer) -> Server:
    limits = ["--max-input-pixels", str(MAX_PIXELS), "--max-input-bytes", str(MAX_BYTES)]
    return launch(*PICTURES, "--num-devices", "2", "--input-allow-host", f"127.0.0.1:{origin.port}", *limits)


def answer(server: Server, job_id: str) -> dict[str, Any]:
    view = server.wait(job_id)
    assert view["state"] == "succeeded", view
    result: dict[str, Any] = json.loads(server.output(job_id))
    assert result["ranks_agree"], result
    return result


def submitted(server: Server) -> int:
    return len(server.http.get("/v1/jobs", params={"limit": 100}).json()["data"])


# ---- every way in ----------------------------------------------------------------------------------


def test_a_data_url_bare_base64_and_a_multipart_file_give_the_same_picture_on_every_rank(server: Server) -> None:
    picture = png()
    by_url = server.submit(image=data_url(picture))
    bare = {"image": base64.b64encode(picture).decode()}
    by_base64 = server.http.put("/v1/jobs/2a7e8f4c-1111-4d2a-9b3c-000000000001", json=bare)
    assert by_base64.status_code == 201, by_base64.text
    by_form = server.http.post("/v1/jobs", files={"image": ("cat.png", picture, "image/png")}, data={"answer": "json"})
    assert by_form.status_code == 201, by_form.text

    seen = answer(server, by_url)
    assert answer(server, by_base64.json()["id"]) == answer(server, by_form.json()["id"]) == seen
    outputs = {server.output(job_id) for job_id in (by_url, by_base64.json()["id"], by_form.json()["id"])}
    assert len(outputs) == 1  # byte-identical
    assert seen["image"] == {"mode": "RGB", "size": [24, 16], "pixels": pixels(picture)}


def test_a_mask_arrives_in_mode_l_and_a_list_field_takes_several_files(server: Server) -> None:
    red, mask = png(color="red"), png(color="white")
    form = [("image", ("a.png", red, "image/png")), ("mask_image", ("m.png", mask, "image/png"))]
    form += [("extra", (f"{i}.png", png(color=color), "image/png")) for i, color in enumerate(["blue", "green"])]
    response = server.http.post("/v1/jobs", files=form)
    assert response.status_code == 201, response.text

    seen = answer(server, response.json()["id"])
    assert seen["mask_image"] == {"mode": "L", "size": [24, 16], "pixels": pixels(mask, "L")}
    assert [item["pixels"] for item in seen["extra"]] == [pixels(png(color="blue")), pixels(png(color="green"))]


def test_a_video_arrives_as_its_frames(server: Server) -> None:
    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=4)
        stream.width, stream.height, stream.pix_fmt = 32, 16, "yuv420p"
        for color in ("red", "green", "blue"):
            frame = av.VideoFrame.from_image(PILImage.new("RGB", (32, 16), color))
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    response = server.http.post(
        "/v1/jobs", files={"image": ("a.png", png(), "image/png"), "clip": ("c.mp4", buffer.getvalue(), "video/mp4")}
    )
    assert response.status_code == 201, response.text

    seen = answer(server, response.json()["id"])
    assert [(frame["mode"], frame["size"]) for frame in seen["clip"]] == [("RGB", [32, 16])] * 3


def test_the_job_view_never_carries_the_picture(server: Server) -> None:
    picture = data_url(png(color="gold"))
    job_id = server.submit(image=picture)
    server.wait(job_id)
    for text in (server.http.get(f"/v1/jobs/{job_id}").text, server.http.get("/v1/jobs").text):
        assert picture.split(",", 1)[1][:40] not in text


def test_the_exif_orientation_is_applied(server: Server) -> None:
    buffer = io.BytesIO()
    exif = PILImage.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": a 40x20 JPEG shows as 20x40
    PILImage.new("RGB", (40, 20), "yellow").save(buffer, "JPEG", exif=exif)

    seen = answer(server, server.submit(image=data_url(buffer.getvalue(), "image/jpeg")))
    assert seen["image"]["size"] == [20, 40]


def test_an_earlier_jobs_output_is_a_picture_for_the_next(server: Server) -> None:
    first = server.submit(image=data_url(png(color="teal")), answer="png")
    assert server.wait(first)["state"] == "succeeded"

    seen = answer(server, server.submit(image=f"job:{first}"))
    assert seen["image"]["pixels"] == pixels(server.output(first))


def test_the_original_generate_takes_a_picture_too(server: Server) -> None:
    response = server.http.post("/generate", json={"image": data_url(png(color="navy"))})
    assert response.status_code == 202, response.text
    request_id = response.json()["request_id"]
    server.wait(request_id)
    result = server.http.post(f"/get_output/{request_id}")
    assert result.status_code == 200, result.text
    seen = json.loads(base64.b64decode(result.json()["output"]))
    assert seen["image"]["pixels"] == pixels(png(color="navy"))


def test_a_multipart_file_and_a_data_url_give_the_tiny_model_the_same_output(tiny_server: Server) -> None:
    picture = png(40, 40, "orange")
    fields = {"prompt": "a cat in a hat", "strength": "0.7", "seed": "7"}
    by_form = tiny_server.http.post("/v1/jobs", files={"image": ("cat.png", picture, "image/png")}, data=fields)
    assert by_form.status_code == 201, by_form.text
    by_url = tiny_server.submit(prompt="a cat in a hat", image=data_url(picture), strength=0.7, seed=7)
    plain = tiny_server.submit(prompt="a cat in a hat", seed=7)

    jobs = (by_form.json()["id"], by_url, plain)
    assert [tiny_server.wait(job)["state"] for job in jobs] == ["succeeded"] * 3
    outputs = [tiny_server.output(job) for job in jobs]
    assert outputs[0] == outputs[1]
    assert outputs[0] != outputs[2]  # the picture did something


def test_a_url_from_an_allowed_host_is_fetched(server: Server, origin: HTTPServer) -> None:
    seen = answer(server, server.submit(image=origin.url_for("/cat.png")))
    assert seen["image"]["pixels"] == pixels(png(color="purple"))


def test_the_schema_documents_pictures_and_the_multipart_form(server: Server) -> None:
    document = server.http.get("/schema/openapi.json").json()
    body = document["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data"}
    name = body["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    fields = document["components"]["schemas"][name]["properties"]
    assert (fields["image"]["format"], fields["image"]["contentMediaType"]) == ("image", "image/*")
    assert [member.get("format") for member in fields["mask_image"]["oneOf"]] == ["mask", None]
    assert fields["extra"]["oneOf"][0]["items"]["format"] == "image"


# ---- refusals --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "reason"),
    [
        (base64.b64encode(b"GIF89a but not really").decode(), "not a picture this server can read"),
        (data_url(png(300, 300)[:-30]), "not a readable picture"),
        (data_url(png(600, 600)), "600x600 pixels, more than the 262144"),
        (data_url(os.urandom(MAX_BYTES + 10)), "--max-input-bytes"),
        ("http://127.0.0.2:9/cat.png", "not an allowed"),
        ("job:5b0c4ad4-0000-4000-8000-000000000000", "names no job"),
        ("cat.png", "not base64"),
    ],
    ids=["not-a-picture", "truncated", "too-many-pixels", "too-many-bytes", "host-not-allowed", "unknown-job", "name"],
)
def test_a_bad_picture_is_a_400_naming_the_field_and_nothing_is_queued(server: Server, image: str, reason: str) -> None:
    before = submitted(server)
    response = server.http.post("/v1/jobs", json={"image": image})

    assert response.status_code == 400, response.text
    assert response.json()["field"] == "image"
    assert reason in response.json()["error"]
    assert submitted(server) == before


def test_a_redirect_from_an_allowed_host_to_another_is_refused(
    server: Server, origin: HTTPServer, elsewhere: HTTPServer
) -> None:
    response = server.http.post("/v1/jobs", json={"image": origin.url_for("/away.png")})

    assert response.status_code == 400, response.text
    assert response.json()["field"] == "image"
    assert elsewhere.log == []  # never asked


def test_a_decompression_bomb_is_refused_before_its_pixels_exist(server: Server) -> None:
    process = psutil.Process(server.process.pid)
    before = process.memory_info().rss
    for _ in range(5):
        response = server.http.post("/v1/jobs", files={"image": ("bomb.png", bomb(), "image/png")})
        assert response.status_code == 400, response.text
        assert response.json()["field"] == "image"
    assert process.memory_info().rss - before < 50 * 1024 * 1024


def test_an_unknown_charset_is_a_400_and_an_empty_file_input_is_no_picture(server: Server) -> None:
    boundary = "b0undary"
    head = f'--{boundary}\r\ncontent-disposition: form-data; name="{{}}"{{}}\r\n'
    body = (
        (head.format("image", '; filename="a.png"') + "content-type: image/png\r\n\r\n").encode()
        + png()
        + (
            "\r\n"
            + head.format("mask_image", "")
            + "\r\n\r\n"  # a browser's empty file input
            + head.format("answer", "")
            + "content-type: text/plain; charset=bogus\r\n\r\njson\r\n"
            + f"--{boundary}--\r\n"
        ).encode()
    )
    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    refused = server.http.post("/v1/jobs", content=body, headers=headers)
    assert refused.status_code == 400, refused.text
    assert "charset" in refused.json()["error"]

    accepted = server.http.post("/v1/jobs", content=body.replace(b"; charset=bogus", b""), headers=headers)
    assert accepted.status_code == 201, accepted.text
    assert answer(server, accepted.json()["id"])["mask_image"] is None


def test_a_file_for_a_field_that_is_not_a_picture_is_refused(server: Server) -> None:
    response = server.http.post("/v1/jobs", files={"image": ("a.png", png(), "image/png"), "answer": ("x", b"json")})
    assert response.status_code == 400, response.text
    assert response.json()["field"] == "answer"


# ---- nothing acknowledged is lost ----------------------------------------------------------------


def test_a_queued_jobs_picture_survives_a_sigkill_and_runs_after_the_restart(tmp_path: Path) -> None:
    picture = png(32, 20, "crimson")
    hold = tmp_path / "hold"
    first = Server([*PICTURES, "--num-devices", "1"], tmp_path)
    try:
        running = first.submit(image=data_url(png()), hold=str(hold))
        first.wait_running(running)
        queued = first.submit(image=data_url(picture), answer="png")
        ranks = first.rank_pids()
        os.kill(first.process.pid, signal.SIGKILL)
        first.process.wait(30)
        until(lambda: all(pid_gone(pid) for pid in ranks), 30, "ranks exit once the server is gone")
    finally:
        first.close()

    hold.touch()
    with Server([*PICTURES, "--num-devices", "1"], tmp_path) as second:
        assert second.wait(queued)["state"] == "succeeded"
        fresh = second.submit(image=data_url(picture), answer="png")
        assert second.wait(fresh)["state"] == "succeeded"
        assert second.output(queued) == second.output(fresh)
