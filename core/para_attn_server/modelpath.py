"""What ``--model-path`` holds: a pipeline directory or a hub id, and the pipeline class its
``model_index.json`` names, which is how ``--model-path`` alone finds its predictor.

Decisions: a hub id is ``owner/name`` (one ``/``); anything else (``./x``, ``/x``, ``a/b/c``,
a bare ``name``) is a local directory. A hub id is read from the local Hugging Face cache
first; when it is not there, from the hub, unless the hub is off (``HF_HUB_OFFLINE``).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from para_attn_server.errors import ConfigurationError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
INDEX = "model_index.json"


@dataclass(frozen=True)
class ModelSource:
    path: str  # as given
    hub: bool  # a hub id, not a directory
    pipeline: str  # model_index.json's _class_name

    @property
    def name(self) -> str:
        """The name it is served under by default: the hub id, or the directory's name."""
        return self.path if self.hub else Path(os.path.abspath(self.path)).name  # a symlink's own name


def inspect(path: str) -> ModelSource:
    """The model at ``path``; ``ConfigurationError`` says which of: no such directory, not a
    pipeline directory, a hub id the cache lacks while offline, a hub that cannot be reached."""
    flag = f"--model-path {path}"
    if os.path.isdir(path):
        index = Path(path, INDEX)
        if not index.is_file():
            raise ConfigurationError(f"{flag}: not a diffusers pipeline directory (it has no {INDEX})")
        return ModelSource(path, False, _pipeline(index, flag))
    if os.path.exists(path):
        raise ConfigurationError(f"{flag}: a file, not a pipeline directory")
    if not HUB_ID.match(path):
        raise ConfigurationError(f"{flag}: no such directory")
    return ModelSource(path, True, _pipeline(_hub_index(path, flag), flag))


def _hub_index(repo: str, flag: str) -> Path:
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache

    cached = try_to_load_from_cache(repo, INDEX)
    if isinstance(cached, str):
        return Path(cached)
    if constants.HF_HUB_OFFLINE:
        raise ConfigurationError(
            f"{flag}: a hub id that is not in the local cache ({constants.HF_HUB_CACHE}) and the hub is off "
            f"(HF_HUB_OFFLINE): download it where the hub is reachable (huggingface-cli download {repo}) "
            "or give its directory"
        )
    try:
        return Path(hf_hub_download(repo, INDEX))
    except Exception as exc:  # no network, no such repository, gated: the hub's own words
        raise ConfigurationError(f"{flag}: cannot read {INDEX} from the hub: {type(exc).__name__}: {exc}") from None


def _pipeline(index: Path, flag: str) -> str:
    try:
        found: Any = json.loads(index.read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError) as exc:
        raise ConfigurationError(f"{flag}: cannot read its {INDEX} ({exc})") from None
    if not isinstance(found, str):
        raise ConfigurationError(f"{flag}: its {INDEX} names no pipeline class (_class_name)")
    return found


def predictor_for(source: ModelSource, predictors: dict[str, type[Any]]) -> str:
    """The installed predictor serving the model's pipeline class, by name."""
    serving = [name for name, cls in sorted(predictors.items()) if source.pipeline in _serves(cls)]
    if not serving:
        known = "; ".join(
            f"{name}: {', '.join(_serves(cls))}" for name, cls in sorted(predictors.items()) if _serves(cls)
        )
        raise ConfigurationError(
            f"--model-path {source.path} holds a {source.pipeline}, which no installed predictor serves "
            f"({known or 'none serves a pipeline directory'})"
        )
    return serving[0]


def check_fits(spec: str, predictor: object, source: ModelSource) -> None:
    """Refuse a ``--model`` that cannot load the directory, naming both (a predictor that
    names no pipeline classes is trusted)."""
    names = _serves(type(getattr(predictor, "inner", predictor)))
    if names and source.pipeline not in names:
        raise ConfigurationError(
            f"--model {spec} serves {', '.join(names)}; --model-path {source.path} holds a {source.pipeline}"
        )


def _serves(cls: type[Any]) -> tuple[str, ...]:
    return tuple(getattr(cls, "pipeline_names", ()) or ())
