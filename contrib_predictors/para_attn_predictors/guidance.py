"""CFG-parallel: a guided pipeline's two transformer passes per step, run at once on two halves
of the ranks (``-o cfg=2``).

diffusers' guided pipelines (Wan; Flux with ``true_cfg_scale``) call the transformer twice per
step, on the same latents and timestep: with the prompt, then with the negative prompt, and
combine the two. Here the second half of the ranks runs the pipeline with the two prompts
swapped (``swap_prompts``), so at each step's first call the first half computes the guided
pass while the second half computes the unguided one. The two results are exchanged
(an all-gather between the halves) and every rank answers the first call with the guided
result and the second call, without computing it, with the unguided one: every rank then
combines the same two tensors into the same latents, as one process would.

Whether a run is guided is the pipeline's own rule, which the predictor states per call
(``guided``); an unguided run calls the transformer once per step and is left alone.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist


class CfgSplit:
    """The guided and unguided passes of this rank's pipeline, split between the two halves
    of the ranks (``group``: this rank and its peer in the other half; ``index``: this rank's half)."""

    def __init__(self, group: dist.ProcessGroup, index: int) -> None:
        self.group, self.index = group, index
        self.guided = False
        self._unguided: torch.Tensor | None = None  # the pending second call's answer

    @contextmanager
    def run(self, guided: bool) -> Iterator[None]:
        """One pipeline call: ``guided`` when it makes two passes per step."""
        self.guided, self._unguided = guided, None
        try:
            yield
        finally:
            self.guided, self._unguided = False, None

    def swap_prompts(self, call: dict[str, Any]) -> dict[str, Any]:
        """The pipeline's keyword arguments for this half: the second half of a guided run
        encodes the negative prompt as its first pass's text."""
        if not self.guided or self.index == 0:
            return call
        return {**call, "prompt": call["negative_prompt"], "negative_prompt": call["prompt"]}

    def wrap(self, forward: Callable[..., Any]) -> Callable[..., Any]:
        """``forward`` (a transformer's), answering a guided run's calls from both halves."""

        @functools.wraps(forward)
        def split_forward(*args: Any, **kwargs: Any) -> Any:
            if not self.guided:
                return forward(*args, **kwargs)
            if self._unguided is not None:  # the step's second call: computed by the other half
                sample, self._unguided = self._unguided, None
                return _with_sample(None, sample, kwargs)
            output = forward(*args, **kwargs)
            mine = _sample_of(output)
            both = [torch.empty_like(mine) for _ in range(2)]
            dist.all_gather(both, mine.contiguous(), group=self.group)
            self._unguided = both[1]
            return _with_sample(output, both[0], kwargs)

        return split_forward


def _sample_of(output: Any) -> torch.Tensor:
    sample: torch.Tensor = output[0] if isinstance(output, tuple) else output.sample
    return sample


def _with_sample(output: Any, sample: torch.Tensor, kwargs: dict[str, Any]) -> Any:
    """The transformer's output with ``sample`` in it, shaped as the pipeline asked
    (``return_dict=False``: a tuple, as diffusers' pipelines ask)."""
    if output is None:
        if kwargs.get("return_dict", True):
            from diffusers.models.modeling_outputs import Transformer2DModelOutput

            return Transformer2DModelOutput(sample=sample)
        return (sample,)
    if isinstance(output, tuple):
        return (sample, *output[1:])
    return type(output)(sample=sample)
