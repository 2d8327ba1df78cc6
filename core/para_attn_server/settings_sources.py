"""Where settings come from besides flags and keywords: the environment and a config file,
and how a bad value from any of them is told.

Strongest first: a flag (or ``ParaAttentionServer`` keyword), its variable, the config file,
the default. ``settings.build`` layers them; this module reads the two sources:

- **Variables.** Every flag reads ``$PARA_ATTN_SERVER_<FLAG>`` (``--max-queue``:
  ``$PARA_ATTN_SERVER_MAX_QUEUE``, ``--option``: ``$PARA_ATTN_SERVER_OPTION``) unless its
  field names another (``env``); the older ``$PARA_ATTN_<FLAG>`` (or the field's
  ``old_env``) is still read, with a deprecation warning. A repeatable flag's variable holds
  the list comma-separated (``a,b``), a KEY=VALUE flag's holds ``K=V,K=V``; either may be
  JSON instead (a value starting with ``[`` or ``{``), for items holding commas.
- **Config file** (``--config FILE``, TOML): every setting by its field name (``max_queue =
  8``), at the top or in its section's table (``[jobs]``, ``[http]``, a plugin's section),
  plus ``[[models]]`` tables. An unknown key is an error naming it and the file.
"""

from __future__ import annotations

import difflib
import json
import logging
import tomllib
from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING, Any

import msgspec

from para_attn_server.errors import ConfigurationError

if TYPE_CHECKING:
    from para_attn_server.settings import Field

ENV_PREFIX = "PARA_ATTN_SERVER_"
OLD_ENV_PREFIX = "PARA_ATTN_"
CONFIG_ENV = ENV_PREFIX + "CONFIG"
log = logging.getLogger("para_attn_server")


def layered(
    values: dict[str, Any], config: dict[str, Any], config_path: str, fields: dict[str, Field], environ: dict[str, str]
) -> tuple[dict[str, Any], dict[str, str]]:
    """``values`` over the variables over ``config``, and for each value not from ``values``
    where it came from (``$VARIABLE`` or ``FILE: name``), for errors to say."""
    if unknown := sorted(set(config) - set(fields)):
        raise ConfigurationError(f"{config_path}: unknown setting(s): {', '.join(unknown)}")
    # A value given as None (a keyword's default: num_devices=None) yields to the others.
    unset = [field for name, field in fields.items() if values.get(name) is None]
    found = from_environ(unset, environ)
    labels = {name: f"{config_path}: {name}" for name in config} | {name: label for name, (_, label) in found.items()}
    merged = {**config, **{name: value for name, (value, _) in found.items()}}
    for name, value in values.items():
        if value is not None or name not in merged:
            merged[name] = value
            labels.pop(name, None)
    return merged, labels


# ---- the environment ----------------------------------------------------------------------


def env_names(field: Field) -> tuple[str, str] | None:
    """The field's variable and its older name; None for a field without a flag."""
    if field.extra.get("cli") is False:
        return None
    stem = field.flags[0].lstrip("-").upper().replace("-", "_")
    return field.extra.get("env") or ENV_PREFIX + stem, field.extra.get("old_env") or OLD_ENV_PREFIX + stem


def from_environ(fields: Iterable[Field], environ: dict[str, str]) -> dict[str, tuple[Any, str]]:
    """Each field set by a variable: its value (lists and dicts parsed) and ``$VARIABLE``."""
    found: dict[str, tuple[Any, str]] = {}
    for field in fields:
        names = env_names(field)
        if names is None:
            continue
        variable, old = names
        if not (text := environ.get(variable)) and (text := environ.get(old)):
            log.warning("$%s is deprecated: set $%s instead", old, variable)
            variable = old
        if text:
            found[field.name] = (_parse_env(text, _container(field.info.type), variable), "$" + variable)
    return found


def _container(kind: Any) -> Any:
    """The list or dict type under a field's metadata and ``| None``, else None."""
    if isinstance(kind, msgspec.inspect.Metadata):
        kind = kind.type
    if isinstance(kind, msgspec.inspect.UnionType):
        kind = next((t for t in kind.types if not isinstance(t, msgspec.inspect.NoneType)), kind)
    return kind if isinstance(kind, msgspec.inspect.ListType | msgspec.inspect.DictType) else None


def _parse_env(text: str, kind: Any, variable: str) -> Any:
    if kind is None:
        return text
    if text.lstrip()[:1] in ("[", "{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigurationError(f"${variable}: not valid JSON: {exc}") from None
    items = [item.strip() for item in text.split(",") if item.strip()]
    if isinstance(kind, msgspec.inspect.ListType):
        return items
    pairs = [item.partition("=") for item in items]
    if bad := [key for key, sep, _ in pairs if not sep or not key]:
        raise ConfigurationError(f"${variable}: expected KEY=VALUE,KEY=VALUE (or a JSON object), got {bad[0]!r}")
    return {key.strip(): value.strip() for key, _, value in pairs}


# ---- the config file ----------------------------------------------------------------------


def load_config(path: str) -> dict[str, Any]:
    """The TOML document of ``path``, as it is written."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigurationError(f"--config {path}: cannot read it: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"--config {path}: not valid TOML: {exc}") from None


def config_values(document: dict[str, Any], path: str, fields: Collection[Field]) -> dict[str, Any]:
    """A config file's settings, flat (``{"port": 5001, "models": [...]}``): the section
    tables' keys lifted to the top. An unknown key is a ``ConfigurationError`` naming it
    and the file, with the closest known name."""
    by_name = {field.name: field for field in fields}
    sections = {field.section for field in fields if field.section}
    flat: dict[str, Any] = {}
    for key, value in document.items():
        if key in sections and isinstance(value, dict):  # a section's table ([model] too: that field is a str)
            own = {field.name for field in fields if field.section == key}
            for name, item in value.items():
                if name not in own:
                    raise ConfigurationError(_unknown(f"[{key}] {name}", name, own, path, by_name))
                flat[name] = item
        elif key in by_name:
            _check_tables(key, value, by_name[key], path)
            flat[key] = value
        else:
            raise ConfigurationError(_unknown(key, key, [*by_name, *sections], path, by_name))
    return {name: _as_flag_values(value, by_name[name]) for name, value in flat.items()}


def _as_flag_values(value: Any, field: Field) -> Any:
    """A TOML table for a KEY=VALUE flag's setting (``options = {steps = 4}``) with its
    values as the flag would give them: text, JSON for tables and arrays."""
    kind = _container(field.info.type)
    texts = isinstance(kind, msgspec.inspect.DictType) and isinstance(kind.value_type, msgspec.inspect.StrType)
    if not (texts and isinstance(value, dict)):
        return value
    return {key: item if isinstance(item, str) else json.dumps(item) for key, item in value.items()}


def _unknown(shown: str, key: str, candidates: Iterable[str], path: str, by_name: dict[str, Field]) -> str:
    message = f"{path}: unknown setting {shown!r}"
    if key in by_name:  # a known setting in another section's table
        return f"{message} ({key} belongs to [{by_name[key].section}] or the top of the file)"
    close = difflib.get_close_matches(key, list(candidates), n=1)
    return f"{message} (did you mean {close[0]}?)" if close else message


def _check_tables(key: str, value: Any, field: Field, path: str) -> None:
    """Unknown keys of ``[[models]]``-like tables (a list of Structs), with did-you-mean."""
    kind = _container(field.info.type)
    item = getattr(kind, "item_type", None)
    if not isinstance(item, msgspec.inspect.StructType) or not isinstance(value, list):
        return
    own = [f.name for f in item.fields]
    for number, table in enumerate(value, start=1):
        for name in table if isinstance(table, dict) else ():
            if name not in own:
                close = difflib.get_close_matches(name, own, n=1)
                hint = f" (did you mean {close[0]}?)" if close else f" (known: {', '.join(own)})"
                raise ConfigurationError(f"{path}: unknown key {name!r} in [[{key}]] table {number}{hint}")


# ---- errors -------------------------------------------------------------------------------


def explain(
    exc: msgspec.ValidationError, values: dict[str, Any], fields: dict[str, Field], labels: dict[str, str]
) -> str:
    """msgspec's ``Expected `int` >= 0 - at `$.num_devices``` as ``num_devices: expected an
    integer >= 0, got 'two'``, named as ``labels`` say where each value came from (a field
    name, ``$VARIABLE``, ``FILE: name``)."""
    message, _, where = str(exc).partition(" - at `$.")
    where = where.rstrip("`")
    section, dot, rest = where.partition(".")
    if dot and section in {field.section for field in fields.values()}:
        where = rest  # a setting's name is unique: its section says nothing more
    top = where.split(".", 1)[0].split("[", 1)[0]
    if top not in fields:
        return f"{where}: {message}" if where else message
    label = labels.get(top, top)
    if where == top and top in values and message.startswith(("Expected", "Invalid enum")):
        return f"{label}: expected {expected(fields[top].info.type)}, got {values[top]!r}"
    return f"{label}{where[len(top) :]}: {message}"


def expected(kind: Any) -> str:
    """What a value of ``kind`` (msgspec's type info) must be, in words."""
    inspect = msgspec.inspect
    if isinstance(kind, inspect.Metadata):
        return expected(kind.type)
    if isinstance(kind, inspect.UnionType):
        return " or ".join(expected(t) for t in kind.types if not isinstance(t, inspect.NoneType))
    if isinstance(kind, inspect.IntType | inspect.FloatType):
        noun = "an integer" if isinstance(kind, inspect.IntType) else "a number"
        if kind.ge is not None and kind.le is not None:
            return f"{noun} from {kind.ge} to {kind.le}"
        limits = ((">", kind.gt), (">=", kind.ge), ("<", kind.lt), ("<=", kind.le))
        return " ".join([noun, *(f"{sign} {bound}" for sign, bound in limits if bound is not None)])
    if isinstance(kind, inspect.LiteralType):
        return "one of " + ", ".join(str(value) for value in kind.values)
    if isinstance(kind, inspect.BoolType):
        return "true or false"
    if isinstance(kind, inspect.ListType):
        return f"a list of {expected(kind.item_type)}"
    if isinstance(kind, inspect.DictType):
        return "KEY=VALUE pairs"
    if isinstance(kind, inspect.StrType):
        return "a string"
    return type(kind).__name__.removesuffix("Type").lower()
