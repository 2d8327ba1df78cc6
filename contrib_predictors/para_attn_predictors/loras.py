"""The adapters (LoRA) loaded into one pipeline's models, and applying a job's set.

One ``LoadedLoras`` per set of models: a pipeline built from another's components
(``FluxImg2ImgPipeline(**pipe.components)``) shares its transformer, so it shares this
bookkeeping too, and every call goes through the pipeline that loaded them.

``applied(loras)`` loads each adapter not loaded yet (evicting the least recently used
beyond ``capacity``), activates the job's set with its scales, and afterwards, whatever
happened, disables every adapter: a job without adapters then computes exactly what the
base model does (peft's layers call their base layer alone). Every rank runs the same jobs
in the same order, so every rank loads, evicts and applies the same adapters.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

from para_attn_server import Lora

log = logging.getLogger("para_attn_predictors.loras")


class LoadedLoras:
    def __init__(self, pipe: Any, capacity: int) -> None:
        self.pipe = pipe  # the pipeline whose load_lora_weights loads into the shared models
        self.capacity = max(1, capacity)
        self.loaded: OrderedDict[str, str] = OrderedDict()  # name -> path, least recently used first
        self.loads = 0
        self.evictions = 0

    @contextlib.contextmanager
    def applied(self, loras: Sequence[Lora]) -> Iterator[None]:
        """Run the body with ``loras`` applied at their scales; the base model afterwards."""
        if not loras:
            yield
            return
        try:
            self._load(loras)
            self.pipe.enable_lora()
            self.pipe.set_adapters([lora.name for lora in loras], [lora.scale for lora in loras])
            yield
        finally:
            if self.loaded:
                self.pipe.disable_lora()

    def _load(self, loras: Sequence[Lora]) -> None:
        wanted = {lora.name for lora in loras}
        for lora in loras:
            if self.loaded.get(lora.name) == lora.path:
                self.loaded.move_to_end(lora.name)
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
        path, weight_name = lora.path, None
        if os.path.isfile(path):
            path, weight_name = os.path.split(path)
        try:
            self.pipe.load_lora_weights(path, weight_name=weight_name, adapter_name=lora.name)
        except BaseException:
            # A half-loaded adapter must not stay behind in some layers.
            with contextlib.suppress(Exception):
                self.pipe.delete_adapters(lora.name)
            raise
        self.loaded[lora.name] = lora.path
        self.loads += 1
        log.info("loaded adapter %r in %.2f s", lora.name, time.perf_counter() - started)

    def _evict(self, name: str) -> None:
        self.pipe.delete_adapters(name)
        del self.loaded[name]
        self.evictions += 1
        log.info("evicted adapter %r", name)
