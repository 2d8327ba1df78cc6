"""The ``para-attn-server`` command.

``para-attn-server --model module:Class --host H --port P --num-devices N`` starts the
server exactly as the original did (the model defaults to the embedded ``tiny`` predictor);
every other flag is generated from the settings tree (``settings.py``), plugin sections
included. ``para-attn-server plugins`` prints the installed plugins as JSON;
``para-attn-server generate URL -p KEY=VALUE ...`` runs one job on a server (the client
distribution's ``para-attn-client generate``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

import msgspec

from para_attn_server import settings as settings_tree
from para_attn_server.errors import ConfigurationError, SetupError
from para_attn_server.plugin.manager import Plugins
from para_attn_server.server import ParaAttentionServer
from para_attn_server.settings import Settings

PROG = "para-attn-server"
DESCRIPTION = (
    "Serve a diffusers pipeline split across worker ranks over HTTP. "
    "Run 'para-attn-server plugins' to list installed predictors and executors, "
    "'para-attn-server generate URL -p KEY=VALUE' to run a job on a server, "
    "'para-attn-server join URL --token T' to run this host's node of a server's group (--nnodes)."
)


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def serve_parser(sections: dict[str, type[msgspec.Struct]]) -> argparse.ArgumentParser:
    """One flag per setting of the tree, grouped by section, with its help and default."""
    parser = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION)
    titled = {**settings_tree.CORE_SECTIONS, **sections}
    groups: dict[str, Any] = {}
    for field in settings_tree.fields(sections):
        if field.section not in groups:
            doc = (titled[field.section].__doc__ or "").strip() if field.section else "General."
            groups[field.section] = parser.add_argument_group(field.section or "general", doc.splitlines()[0])
        _add(groups[field.section], field)
    return parser


def _kind(field: settings_tree.Field) -> Any:
    info = field.info.type
    return info.type if isinstance(info, msgspec.inspect.Metadata) else info


def _add(group: Any, field: settings_tree.Field) -> None:
    kind = _kind(field)
    help_text = field.help
    if field.info.default not in (msgspec.NODEFAULT, None):
        help_text += f" (default: {field.info.default})"
    if "env" in field.extra:
        help_text += f"; also ${field.extra['env']}"
    options: dict[str, Any] = {"dest": field.name, "help": help_text, "default": argparse.SUPPRESS}
    if isinstance(kind, msgspec.inspect.DictType):
        options.update(action="append", type=_key_value, metavar=field.extra.get("metavar", "KEY=VALUE"))
    elif isinstance(kind, msgspec.inspect.ListType):
        options.update(action="append", metavar=field.extra.get("metavar", "VALUE"))
    else:
        options.update(metavar=field.extra.get("metavar", field.name.upper()))
    group.add_argument(*field.flags, **options)


def parse(argv: Sequence[str]) -> Settings:
    """The settings a command line asks for; exits with a usage error (code 2) naming the
    flag for an unknown flag or a bad value."""
    return configure(argv)[0]


def configure(argv: Sequence[str]) -> tuple[Settings, Plugins]:
    """``parse``, with the plugins loaded to find the settings' sections: the server runs
    with them, so a start loads (and imports) the plugins once."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--plugin", action="append", default=[])
    modules = pre.parse_known_args(argv)[0].plugin
    plugins = Plugins.load(modules)
    sections = plugins.settings_sections()
    parser = serve_parser(sections)
    values = vars(parser.parse_args(argv))
    if "api_key" in values:
        print(
            f"{PROG}: warning: --api-key shows the key to every user of this machine (ps, /proc/PID/cmdline); "
            f"use --api-key-file or ${settings_tree.API_KEY_ENV}",
            file=sys.stderr,
        )
    for field in settings_tree.fields(sections):
        if field.name in values and isinstance(_kind(field), msgspec.inspect.DictType):
            values[field.name] = dict(values[field.name])  # repeated KEY=VALUE: the last one wins
    try:
        return settings_tree.build(values, sections), plugins
    except ConfigurationError as exc:
        parser.error(_with_flag(str(exc), sections))


def _with_flag(message: str, sections: dict[str, type[msgspec.Struct]]) -> str:
    """``max_queue: Expected ...`` as ``--max-queue: Expected ...``."""
    name, sep, rest = message.partition(": ")
    for field in settings_tree.fields(sections):
        if sep and field.name == name:
            return f"{field.flags[0]}: {rest}"
    return message


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["plugins"]:
        return plugins_command()
    if args[:1] == ["join"]:
        from para_attn_server.cluster.join import main as join

        return join(args[1:])
    if args[:1] == ["generate"]:
        from para_attn_client.generate import main as generate

        return generate(args[1:], prog=f"{PROG} generate")
    try:
        ParaAttentionServer.from_settings(*configure(args)).run()
    except ConfigurationError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except SetupError as exc:
        print(f"{PROG}: setup failed: {exc}", file=sys.stderr)
        return 1
    return 0


def plugins_command() -> int:
    print(json.dumps(Plugins.load().describe(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
