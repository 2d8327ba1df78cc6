"""``--only loras``: what an adapter (LoRA) adds to a job.

The tiny model on 2 ranks (1 group), 32x32, 4 steps, three jobs per round on the same
server: (a) without adapters, the base; (b) with an adapter already loaded (``hot``): what
applying one costs (``enable_lora`` and ``set_adapters`` before, ``disable_lora`` after);
(c) with an adapter that must be loaded first. The server keeps ``--max-loaded-loras 2`` and
offers three adapters of rank 4 (the tiny transformer's attention projections, saved as
diffusers saves one); each round's (c) names ``cold-a`` and ``cold-b`` in turn, so that it
finds the cache holding ``hot`` and the other cold one, evicts the latter (the least
recently used, as ``hot`` ran just before) and loads its own: a load from disk plus an
eviction, every time. Two warm-up rounds first (the first loads ``hot``, and checks that
each adapter changes the picture). Rounds are interleaved; ratios are of the medians, over
the base. The group's own count of loads (``GET /server_status``) is checked against the
cold jobs, and rank 0's timing of each load is reported beside it.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .harness import Client, Report, Stat, client, server, timed

SUITE = "loras"
ADAPTER_SEEDS = {"hot": 1, "cold-a": 2, "cold-b": 3}
CACHE = ["--max-loaded-loras", "2", "--max-loras-per-request", "1"]
FIELDS: dict[str, Any] = {"prompt": "a cat", "width": 32, "height": 32, "num_inference_steps": 4, "seed": 1}
WARMUP_ROUNDS = 2


def make_loras(directory: Path, seeds: dict[str, int]) -> dict[str, Path]:
    """A LoRA of rank 4 per name for the tiny Flux transformer (the ``tiny`` predictor's),
    weights drawn from its seed, each saved as diffusers saves one (a directory): the
    recipe of the tests' ``make_lora``."""
    import torch
    from diffusers import FluxPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from para_attn_predictors.tiny_flux import build_tiny_flux_pipeline

    transformer = build_tiny_flux_pipeline(seed=0).transformer
    transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    paths = {}
    for name, seed in seeds.items():
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for parameter_name, parameter in transformer.named_parameters():
                if "lora_" in parameter_name:
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
        paths[name] = directory / name
        FluxPipeline.save_lora_weights(str(paths[name]), transformer_lora_layers=get_peft_model_state_dict(transformer))
    return paths


def adapter_stats(c: Client) -> dict[str, Any]:
    """The group's adapter cache as its rank 0 reported it (``GET /server_status``)."""
    groups = c.json("GET", "/server_status", expect=200)["groups"]
    assert len(groups) == 1, groups
    stats: dict[str, Any] = groups[0]["adapters"]
    return stats


def loras(report: Report, quick: bool) -> None:
    rounds = 4 if quick else 20
    with tempfile.TemporaryDirectory(prefix="para-attn-bench-loras-") as tmp:
        paths = make_loras(Path(tmp), ADAPTER_SEEDS)
        flags = [arg for name, path in paths.items() for arg in ("--lora", f"{name}={path}")]
        with server("tiny", 2, *CACHE, *flags) as srv:
            c = client(srv)
            samples, loads, load_seconds = _rounds(c, rounds)
    _rows(report, samples, rounds, loads, load_seconds)


def _rounds(c: Client, rounds: int) -> tuple[dict[str, list[float]], int, float]:
    """Every case's samples over ``rounds`` timed rounds (after the warm-up rounds), and
    the loads the group counted meanwhile, with the seconds rank 0 timed them at."""

    def job(*adapters: str) -> Callable[[], bytes]:
        body = json.dumps({**FIELDS, "loras": [{"name": name, "scale": 0.8} for name in adapters]}).encode()

        def run() -> bytes:
            status, data = c.request("POST", "/v1/jobs?wait=120", body, {"accept": "application/octet-stream"})
            assert status == 201, (status, data[:300])
            return data

        return run

    cases = {"base": job(), "cached": job("hot"), "load": job("cold-a")}
    colds = [job("cold-a"), job("cold-b")]
    samples: dict[str, list[float]] = {case: [] for case in cases}
    pictures = {case: fn() for case, fn in cases.items()}  # the first warm-up round
    assert len(set(pictures.values())) == len(pictures), "an adapter did not change the picture"
    before: dict[str, Any] = {}
    for index in range(1, WARMUP_ROUNDS + rounds):
        if index == WARMUP_ROUNDS:
            before = adapter_stats(c)
        cases["load"] = colds[index % 2]
        for case, fn in cases.items():
            seconds = timed(fn, 1, warmup=0)
            if index >= WARMUP_ROUNDS:
                samples[case] += seconds
    after = adapter_stats(c)
    return samples, after["loads"] - before["loads"], after["load_seconds_sum"] - before["load_seconds_sum"]


def _rows(report: Report, samples: dict[str, list[float]], rounds: int, loads: int, load_seconds: float) -> None:
    base = Stat.of(samples["base"])
    report.add(SUITE, "tiny 32x32, 4 steps, 2 ranks: no adapter", base.median, "s",
               f"{base.ms()}  {rounds} interleaved rounds", stat=vars(base))  # fmt: skip
    labels = {
        "cached": "tiny: an adapter already loaded (b)",
        "load": "tiny: an adapter loaded first (c)",
    }
    for case, label in labels.items():
        stat = Stat.of(samples[case])
        ratio = stat.median / base.median
        added = stat.median - base.median
        detail = f"{stat.ms()}  {added * 1e3:+.1f} ms per job, x{ratio:.3f} the base"
        report.add(SUITE, label, stat.median, "s", detail, stat=vars(stat), ratio=ratio, added_s=added)
    mean = load_seconds / loads if loads else 0.0
    detail = f"the group counted, {rounds} cold and {rounds} cached jobs; rank 0 timed one at {mean * 1e3:.1f} ms"
    report.add(SUITE, "adapter loads during the timed rounds", loads, "loads", detail,
               expected=rounds, passed=loads == rounds, load_seconds_mean=mean)  # fmt: skip
    if loads != rounds:
        print(f"  {SUITE}: expected {rounds} loads (one per cold job), the group counted {loads}", flush=True)
