"""The ``para-attn-server`` command.

``para-attn-server --model module:Class --host H --port P --num-devices N`` starts the
server exactly as the original did (the model defaults to the embedded ``tiny`` predictor);
every other flag is generated from the settings tree (``settings.py``), plugin sections
included; ``--config FILE`` (TOML) and ``$PARA_ATTN_SERVER_<FLAG>`` variables set them
too (``settings_sources``). ``para-attn-server plugins`` prints the installed plugins as a
table (``--json``: JSON); ``para-attn-server generate URL -p KEY=VALUE ...`` runs one job on
a server (the client distribution's ``para-attn-client generate``). Usage errors are one
line naming the flag.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import msgspec

from para_attn_server import settings as settings_tree
from para_attn_server import settings_sources as sources
from para_attn_server.errors import ConfigurationError, SetupError
from para_attn_server.plugin.manager import Plugins, version
from para_attn_server.server import ParaAttentionServer
from para_attn_server.settings import Settings

PROG = "para-attn-server"
DESCRIPTION = (
    "Serve a diffusers pipeline split across worker ranks over HTTP. "
    "Run 'para-attn-server plugins' to list installed predictors and executors, "
    "'para-attn-server generate URL -p KEY=VALUE' to run a job on a server, "
    "'para-attn-server join URL --token T' to run this host's node of a server's group (--nnodes)."
)
EPILOG = (
    "Every flag also reads $PARA_ATTN_SERVER_<FLAG> (--max-queue: $PARA_ATTN_SERVER_MAX_QUEUE; a repeatable "
    "flag's variable holds a,b or K=V,K=V, or JSON); a flag wins over its variable, which wins over --config."
)


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, naming the flag (``--help`` has the full usage)."""

    def error(self, message: str) -> NoReturn:
        # argparse says "argument --option/-o: ..."; the flag's first name is enough.
        message = re.sub(r"^argument (-[^/: ]+)(?:/[^:]+)?: ", r"\1: ", message)
        self.exit(2, f"{self.prog}: error: {message}\n")

    def parse_flags(self, argv: Sequence[str]) -> dict[str, Any]:
        """The flags of ``argv``; an unknown one is an error with the closest known flag."""
        namespace, extras = self.parse_known_args(argv)
        if extras:
            self.error(_unrecognized(extras[0], self))
        return vars(namespace)


def _unrecognized(arg: str, parser: argparse.ArgumentParser) -> str:
    if not arg.startswith("-"):
        return f"unexpected argument {arg!r} (every setting is a --flag VALUE; see --help)"
    flag = arg.partition("=")[0]
    known = [option for action in parser._actions for option in action.option_strings]
    close = difflib.get_close_matches(flag, known, n=1)
    return f"unrecognized flag {flag}" + (f" (did you mean {close[0]}?)" if close else " (see --help)")


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def serve_parser(sections: dict[str, type[msgspec.Struct]]) -> _Parser:
    """One flag per setting of the tree, grouped by section, with its help and default."""
    # No abbreviations: a prefix of two flags (--max-queu) is a typo to point out, not a guess.
    parser = _Parser(prog=PROG, description=DESCRIPTION, epilog=EPILOG, allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"{PROG} {version()}")
    parser.add_argument(
        "--config",
        metavar="FILE",
        help=f"TOML file of settings, by field name, and [[models]]; also ${sources.CONFIG_ENV}",
    )
    titled = {**settings_tree.CORE_SECTIONS, **sections}
    groups: dict[str, Any] = {}
    for field in settings_tree.fields(sections):
        if field.extra.get("cli") is False:
            continue
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
    pre = _Parser(prog=PROG, add_help=False, allow_abbrev=False)
    pre.add_argument("--plugin", action="append", default=[])
    pre.add_argument("--config", default=os.environ.get(sources.CONFIG_ENV) or None)
    pre.add_argument("--version", action="version", version=f"{PROG} {version()}")  # before plugins load
    early = pre.parse_known_args(argv)[0]
    try:
        document = sources.load_config(early.config) if early.config else {}
        modules = early.plugin or _plugins_elsewhere(document)
        plugins = Plugins.load(modules)
        sections = plugins.settings_sections()
        config = settings_tree.read_config_file(early.config, sections) if early.config else {}
    except ConfigurationError as exc:
        pre.error(str(exc))
    parser = serve_parser(sections)
    values = parser.parse_flags(argv)
    values.pop("config", None)
    values["plugins"] = modules  # those loaded, from wherever they came (build reads no variable again)
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
        return settings_tree.build(values, sections, config=config, config_path=early.config or ""), plugins
    except ConfigurationError as exc:
        parser.error(_with_flag(str(exc), sections))


def _plugins_elsewhere(document: dict[str, Any]) -> list[str]:
    """The plugin modules to load when no --plugin is given: its variable's, else the config
    file's (top level or [model])."""
    plugins = next(field for field in settings_tree.fields() if field.name == "plugins")
    if found := sources.from_environ([plugins], dict(os.environ)):
        return list(found["plugins"][0])
    model = document.get("model")
    listed = document.get("plugins", model.get("plugins", []) if isinstance(model, dict) else [])
    return [str(module) for module in listed] if isinstance(listed, list) else []


def _with_flag(message: str, sections: dict[str, type[msgspec.Struct]]) -> str:
    """``max_queue: expected ...`` as ``--max-queue: expected ...`` (and ``log_level must
    ...`` as ``--log-level must ...``)."""
    if (match := re.match(r"(\w+)(:? )", message)) is None:
        return message
    for field in settings_tree.fields(sections):
        if field.name == match[1]:
            return field.flags[0] + message[len(match[1]) :]
    return message


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["plugins"]:
        return plugins_command(args[1:])
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


def plugins_command(argv: Sequence[str] = ()) -> int:
    parser = _Parser(prog=f"{PROG} plugins", description="List the installed plugins.", allow_abbrev=False)
    parser.add_argument("--json", action="store_true", help="print them as JSON (one object per plugin)")
    rows = Plugins.load().describe()
    if parser.parse_flags(argv)["json"]:
        print(json.dumps(rows, indent=2))
    else:
        print(plugins_table(rows))
    return 0


def plugins_table(rows: list[dict[str, Any]]) -> str:
    """``describe()``'s rows as an aligned table: name, distribution, version, what each
    registers and how many hooks it implements."""
    header = ("NAME", "DISTRIBUTION", "VERSION", "PREDICTORS", "EXECUTORS", "HOOKS")
    cells = [
        (
            row["name"],
            row["distribution"] or "-",
            row["version"] or "-",
            ", ".join(row["predictors"]) or "-",
            ", ".join(row["executors"]) or "-",
            str(len(row["hooks"])),
        )
        for row in rows
    ]
    widths = [max(len(line[column]) for line in [header, *cells]) for column in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in [header, *cells]
    )


if __name__ == "__main__":
    sys.exit(main())
