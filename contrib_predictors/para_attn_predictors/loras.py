"""The adapters (LoRA) loaded into one pipeline's models, and applying a job's set.

One ``LoadedLoras`` per set of models: a pipeline built from another's components
(``FluxImg2ImgPipeline(**pipe.components)``) shares its transformer, so it shares this
bookkeeping too, and every call goes through the pipeline that loaded them.

``applied(loras)`` loads each adapter not loaded yet (evicting the least recently used
beyond ``capacity``), applies the job's set with its scales, takes them off afterwards,
whatever happened, and reports to the job what the cache holds and what this job loaded
(with the seconds each took) and evicted (``JobContext.report_adapters``). Every rank runs
the same jobs in the same order, so every rank loads, evicts and applies the same adapters.

Two ways, chosen at construction:

* Eager (``max_rank=None``): each adapter is its own peft adapter (``load_lora_weights``,
  ``delete_adapters`` on eviction), the job's set is activated with ``set_adapters``, and
  afterwards every adapter is disabled: a job without adapters then computes exactly what
  the base model does (peft's layers call their base layer alone).

* Hotswap (``max_rank=N``, for a ``torch.compile``'d model): any change to the set of peft
  adapters, to their active list or to a scale held as a Python float is a new graph to
  dynamo, a recompile. diffusers' LoRA hotswap (``enable_lora_hotswap``, then
  ``load_lora_weights(..., hotswap=True)``, built on peft's
  ``prepare_model_for_compiled_hotswap`` and ``hotswap_adapter_from_state_dict``) fixes one
  adapter's shapes (rank padded to N) and holds its scalings as tensors, then copies another
  adapter's weights into it in place. Here the cache is ``capacity`` such slots, created all
  at once on the first load (that adapter loaded into every slot: one recompile, once), all
  always active: a later adapter is hotswapped into a free or the least recently used
  slot, and a job's scales are written in place into the slots' scaling tensors, 0 for
  every slot the job does not name (``set_adapters`` would replace the tensors by floats).
  A job without adapters runs with every slot at scale 0: the base model's output up to
  adding exact zeros (``x + 0 * lora(x)``), by the compiled graph. Hotswapping needs every
  adapter to target the layers the first one targets (or fewer), with no text-encoder
  weights and a rank of at most N; one that does not is refused before the model is
  touched. A hotswap that fails anyway (peft also refuses differing ``alpha_pattern``,
  ``use_dora``, ``use_rslora``) drops every slot, since diffusers deletes the failed one:
  the next adapter creates them again, with one recompile.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

from para_attn_server import AdapterReport, Lora, current_job

log = logging.getLogger("para_attn_predictors.loras")

DOWN = (".lora_A.weight", ".lora_down.weight", ".lora.down.weight")  # rows: the adapter's rank


class LoadedLoras:
    def __init__(self, pipe: Any, capacity: int, *, max_rank: int | None = None) -> None:
        self.pipe = pipe  # the pipeline whose load_lora_weights loads into the shared models
        self.capacity = max(1, capacity)
        self.loaded: OrderedDict[str, str] = OrderedDict()  # name -> path, least recently used first
        self.loads = 0
        self.evictions = 0
        self.max_rank = max_rank  # None: eager; else hotswap slots padded to this rank
        self.slots: dict[str, str] = {}  # hotswap: adapter name -> the slot holding it
        # hotswap: slot -> each of its layers' scaling dict with the adapter's own scale there
        self._scalings: dict[str, list[tuple[dict[str, Any], float]]] = {}
        self._scales: dict[str, float | None] = {}  # hotswap: slot -> the job scale written (None: unknown)
        self._covered: frozenset[str] = frozenset()  # hotswap: the layers the slots adapt
        self._job_loads: list[tuple[str, float]] = []
        self._job_evicted: list[str] = []
        if max_rank is not None:
            self._arm_hotswap()

    @contextlib.contextmanager
    def applied(self, loras: Sequence[Lora]) -> Iterator[None]:
        """Run the body with ``loras`` applied at their scales; the base model afterwards."""
        self._job_loads, self._job_evicted = [], []
        try:
            try:
                self._load(loras)
            finally:
                self._report()
            if self.max_rank is not None:
                self._write_scales({self.slots[lora.name]: lora.scale for lora in loras})
            elif loras:
                self.pipe.enable_lora()
                self.pipe.set_adapters([lora.name for lora in loras], [lora.scale for lora in loras])
            yield
        finally:
            if self.max_rank is not None:
                self._write_scales({})  # every slot at 0
            elif loras and self.loaded:
                self.pipe.disable_lora()

    def targets(self) -> dict[str, tuple[int, int]]:
        """Every linear layer an adapter may target, named as a saved adapter's keys name it
        (``transformer.single_transformer_blocks.0.attn.to_q``), with its (in, out)
        features: the server checks an adapter against them before any rank loads it."""
        import torch

        found: dict[str, tuple[int, int]] = {}
        for component, model in self.pipe.components.items():
            if not isinstance(model, torch.nn.Module) or component == "vae":
                continue
            for name, module in model.named_modules():
                if isinstance(module, torch.nn.Linear):
                    found[f"{component}.{name}"] = (module.in_features, module.out_features)
        return found

    # ---- loading and evicting ---------------------------------------------------------------

    def _load(self, loras: Sequence[Lora]) -> None:
        wanted = {lora.name for lora in loras}
        if self.max_rank is not None and len(wanted) > self.capacity:
            raise ValueError(
                f"a job names {len(wanted)} adapters, more than the {self.capacity} hotswap slots "
                "of the compiled model (--max-loaded-loras)"
            )
        for lora in loras:
            if self.loaded.get(lora.name) == lora.path:
                self.loaded.move_to_end(lora.name)
                continue
            if self.max_rank is not None:
                self._swap_in(lora, wanted)
                continue
            if lora.name in self.loaded:  # registered again with other weights
                self._evict(lora.name)
            while len(self.loaded) >= self.capacity:
                victim = next((name for name in self.loaded if name not in wanted), None)
                if victim is None:
                    break  # the job's own set is larger than the cache: hold them all for now
                self._evict(victim)
            self._load_one(lora)

    def _load_one(self, lora: Lora) -> None:
        started = time.perf_counter()
        try:
            self._load_weights(lora, lora.name)
        except BaseException:
            # A half-loaded adapter must not stay behind in some layers.
            with contextlib.suppress(Exception):
                self.pipe.delete_adapters(lora.name)
            raise
        self._loaded(lora, started)

    def _load_weights(self, lora: Lora, adapter_name: str, *, hotswap: bool = False) -> None:
        path, weight_name = _split(lora.path)
        extra = {"hotswap": True} if hotswap else {}
        self.pipe.load_lora_weights(path, weight_name=weight_name, adapter_name=adapter_name, **extra)

    def _loaded(self, lora: Lora, started: float) -> None:
        seconds = time.perf_counter() - started
        self.loaded[lora.name] = lora.path
        self.loads += 1
        self._job_loads.append((lora.name, seconds))
        log.info("loaded adapter %r in %.2f s", lora.name, seconds)

    def _evict(self, name: str) -> None:
        if self.max_rank is None:
            self.pipe.delete_adapters(name)
        else:
            del self.slots[name]  # its slot keeps the weights until another adapter is swapped in
        del self.loaded[name]
        self.evictions += 1
        self._job_evicted.append(name)
        log.info("evicted adapter %r", name)

    def _report(self) -> None:
        try:
            job = current_job()
        except RuntimeError:  # outside any job: the warm-up, or a test calling the pipeline itself
            return
        job.report_adapters(
            AdapterReport(loaded=tuple(self.loaded), loads=tuple(self._job_loads), evicted=tuple(self._job_evicted))
        )

    # ---- hotswap slots --------------------------------------------------------------------

    def _arm_hotswap(self) -> None:
        # diffusers pads and tensorizes the next adapter loaded without hotswap=True. The
        # model is compiled by then (lazily: its graphs are made at its first call), so the
        # check that it is not compiled yet is off: creating the slots recompiles once.
        self.pipe.enable_lora_hotswap(target_rank=self.max_rank, check_compiled="ignore")

    def _swap_in(self, lora: Lora, wanted: set[str]) -> None:
        self._check_hotswappable(lora)
        if lora.name in self.loaded:  # registered again with other weights: its slot is free again
            self._evict(lora.name)
        if not self._scalings:
            self._make_slots(lora)
            return
        free = sorted(set(self._scalings) - set(self.slots.values()))
        if not free:
            victim = next(name for name in self.loaded if name not in wanted)  # the job fits (checked)
            free = [self.slots[victim]]
            self._evict(victim)
        slot = free[0]
        started = time.perf_counter()
        try:
            self._load_weights(lora, slot, hotswap=True)
        except BaseException:
            self._drop_slots()  # diffusers deleted the failed slot from the model: start again
            raise
        self._record(slot)
        self.slots[lora.name] = slot
        self._loaded(lora, started)

    def _make_slots(self, lora: Lora) -> None:
        """Load ``lora`` into every slot (each padded to ``max_rank``, scalings as tensors),
        activate them all, and keep ``lora`` in the first."""
        started = time.perf_counter()
        names = [f"slot{index}" for index in range(self.capacity)]
        try:
            for name in names:
                self._arm_hotswap()
                self._load_weights(lora, name)
                self._scalings[name] = []
        except BaseException:
            self._delete(names)
            self._scalings.clear()
            self._arm_hotswap()
            raise
        layers = list(self._layers())
        for _, layer in layers:
            layer.set_adapter(names, inference_mode=True)  # the active list never changes again
        self._covered = frozenset(name for name, layer in layers if names[0] in layer.scaling)
        for name in names:
            self._record(name)
        self.slots[lora.name] = names[0]
        self._loaded(lora, started)

    def _drop_slots(self) -> None:
        for name in list(self.loaded):
            self._evict(name)
        self._delete(list(self._scalings))
        self._scalings.clear()
        self._scales.clear()
        self._covered = frozenset()
        self._arm_hotswap()
        log.warning("dropped the hotswap slots after a failed hotswap: the next adapter recompiles the model")

    def _delete(self, names: list[str]) -> None:
        for name in names:  # each alone: diffusers may have deleted some already
            with contextlib.suppress(Exception):
                self.pipe.delete_adapters(name)

    def _record(self, slot: str) -> None:
        # Right after a load the slot's scalings hold the adapter's own alpha / rank.
        scalings = [layer.scaling for _, layer in self._layers() if slot in layer.scaling]
        self._scalings[slot] = [(scaling, float(scaling[slot])) for scaling in scalings]
        self._scales[slot] = None

    def _write_scales(self, scales: dict[str, float]) -> None:
        """Each slot at its job scale (0: not in the job), written in place: a new float or
        tensor object would be a new graph to dynamo."""
        for slot, layers in self._scalings.items():
            scale = scales.get(slot, 0.0)
            if self._scales.get(slot) == scale:
                continue
            for scaling, own in layers:
                scaling[slot].fill_(own * scale)
            self._scales[slot] = scale

    def _layers(self) -> Iterator[tuple[str, Any]]:
        """Every peft LoRA layer in the pipeline's models, named as adapter keys name it."""
        import torch
        from peft.tuners.lora import LoraLayer

        for component, model in self.pipe.components.items():
            if isinstance(model, torch.nn.Module) and component != "vae":
                for name, module in model.named_modules():
                    if isinstance(module, LoraLayer):
                        yield f"{component}.{name}", module

    def _check_hotswappable(self, lora: Lora) -> None:
        """Refuse, before the model is touched, an adapter that cannot be hotswapped."""
        path, weight_name = _split(lora.path)
        state = self.pipe.lora_state_dict(path, weight_name=weight_name)
        state = state[0] if isinstance(state, tuple) else state
        rank = max((value.shape[0] for key, value in state.items() if key.endswith(DOWN)), default=0)
        assert self.max_rank is not None
        if rank > self.max_rank:
            raise ValueError(
                f"adapter {lora.name!r} has rank {rank}, above --max-lora-rank {self.max_rank} (the rank "
                "the compiled model's hotswap slots reserve): start the server with a larger --max-lora-rank"
            )
        if any(key.startswith("text_encoder") for key in state):
            raise ValueError(
                f"adapter {lora.name!r} has text-encoder weights: a compiled model hotswaps transformer adapters only"
            )
        modules = {key.partition(".lora")[0] for key in state if key.startswith("transformer.")}
        outside = sorted(modules - self._covered) if self._covered else []
        if outside:
            raise ValueError(
                f"adapter {lora.name!r} adapts layers the compiled model's hotswap slots lack (made for the "
                f"adapters loaded first): {', '.join(outside[:3])}{', ...' if len(outside) > 3 else ''}"
            )


def _split(path: str) -> tuple[str, str | None]:
    """``load_lora_weights``' arguments for ``path``: a directory, or a file's folder and name."""
    if os.path.isfile(path):
        folder, name = os.path.split(path)
        return folder, name
    return path, None
