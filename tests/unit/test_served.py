"""What a server serves, planned from its settings: ``--model-path`` alone finds its
predictor, the served name, typed ``-o`` options, ``-o defaults`` and a model card's
defaults; every refusal is one line at exit 2, before any rank starts."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from huggingface_hub import constants

from para_attn_predictors.flux import FluxPredictor
from para_attn_predictors.tiny import TinyFluxPredictor
from para_attn_server import cli, served
from para_attn_server.options import configure
from para_attn_server.plugin.manager import AUTOLOAD_ENV, Plugins
from para_attn_server.settings import build


@pytest.fixture(autouse=True)
def entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)  # the installed predictors, as a user has them


def start(tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """The command line's exit code and its stderr's last line."""
    code = cli.main(["--port", "0", "--output-dir", str(tmp_path / "out"), *args])
    lines = capsys.readouterr().err.strip().splitlines()
    return code, lines[-1] if lines else ""


def test_a_model_path_alone_picks_its_predictor_and_is_served_by_its_name(
    tiny_pipeline: Callable[[str], Path], tmp_path: Path
) -> None:
    link = tmp_path / "my-flux"
    link.symlink_to(tiny_pipeline("flux"))
    plugins = Plugins.load()

    (plan,) = served.plan(build({"model_path": str(link)}), plugins)
    (named,) = served.plan(build({"model_path": str(link), "served_model_name": "x"}), plugins)

    assert (plan.name, plan.spec, type(plan.predictor)) == ("my-flux", "flux", FluxPredictor)
    assert plan.options["model_path"] == str(link)
    assert named.name == "x"


class Mine(TinyFluxPredictor):
    pass


def test_an_instance_is_served_by_its_registered_name_or_its_class() -> None:
    plugins = Plugins.load()
    assert served.plan(build({}), plugins, TinyFluxPredictor())[0].name == "tiny"
    assert served.plan(build({}), plugins, Mine())[0].name == "Mine"
    assert served.plan(build({}), plugins)[0].name == "tiny"  # nothing given: the tiny CPU model


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--model", "wan"], "--model wan serves WanPipeline, WanImageToVideoPipeline; --model-path {flux} holds a"),
        (["--model", "tiny"], "--model-path: TinyFluxPredictor loads no model directory"),
        (["--model", "noop"], "--model-path: NoopPredictor loads no model directory"),
    ],
)
def test_a_model_that_does_not_fit_the_directory_is_one_line_at_exit_2(
    tiny_pipeline: Callable[[str], Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    reason: str,
) -> None:
    flux = tiny_pipeline("flux")
    code, line = start(tmp_path, capsys, "--model-path", str(flux), *args)

    assert code == 2
    assert reason.format(flux=flux) in line


def test_missing_foreign_and_offline_model_paths_each_say_which(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    foreign = tmp_path / "sd"
    foreign.mkdir()
    (foreign / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))

    assert start(tmp_path, capsys, "--model-path", str(tmp_path / "nowhere")) == (
        2,
        f"para-attn-server: error: --model-path {tmp_path / 'nowhere'}: no such directory",
    )
    code, line = start(tmp_path, capsys, "--model-path", str(foreign))
    assert code == 2
    assert "holds a StableDiffusionPipeline, which no installed predictor serves (flux: FluxPipeline" in line
    code, line = start(tmp_path, capsys, "--model-path", "black-forest-labs/FLUX.1-schnell")
    assert code == 2
    assert "a hub id that is not in the local cache" in line
    assert "the hub is off (HF_HUB_OFFLINE)" in line


@pytest.mark.parametrize(
    ("option", "reason"),
    [
        (
            "colour=red",
            "-o colour: not an option of TinyFluxPredictor "
            "(its options: cfg, preview_vae, ring, ulysses, weights_seed)",
        ),
        ("weights_seed=abc", "-o weights_seed: Expected `int`, got `str` (got 'abc')"),
        ("defaults=[4]", '-o defaults: expected a JSON object such as {"num_inference_steps": 4}'),
        ('defaults={"num_inference_steps": 0}', "-o defaults: num_inference_steps: Expected `int` >= 1"),
    ],
)
def test_every_option_is_checked_at_start_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, reason: str
) -> None:
    code, line = start(tmp_path, capsys, "--model", "tiny", "-o", option)

    assert code == 2
    assert reason in line
    assert not (tmp_path / "out" / ".jobs" / "jobs.sqlite3").exists()  # refused before the journal


def test_defaults_are_the_model_cards_then_the_operators(tiny_pipeline: Callable[[str], Path], tmp_path: Path) -> None:
    schnell, dev_like = tmp_path / "schnell", tmp_path / "dev"
    for path, guided in ((schnell, False), (dev_like, True)):  # a transformer with or without guidance embedding
        shutil.copytree(tiny_pipeline("flux"), path)
        config = path / "transformer" / "config.json"
        config.write_text(json.dumps({**json.loads(config.read_text()), "guidance_embeds": guided}))

    dev = configure(FluxPredictor(), 1, {"model_path": str(dev_like)})
    card = configure(FluxPredictor(), 1, {"model_path": str(schnell)})
    mine = configure(FluxPredictor(), 1, {"model_path": str(schnell), "defaults": '{"num_inference_steps": 8}'})

    assert dev == {}
    assert card == {"num_inference_steps": 4, "guidance_scale": 0.0}  # FLUX.1-schnell's card
    assert mine == {"num_inference_steps": 8, "guidance_scale": 0.0}
