"""The ``para-attn-server`` command.

``para-attn-server --model module:Class --host H --port P --num-devices N`` starts the
server exactly as the original did (the model defaults to the embedded ``tiny`` predictor);
``para-attn-server plugins`` prints the installed plugins as JSON;
``para-attn-server generate URL -p KEY=VALUE ...`` runs one job on a server (generate_cli.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import fields

from .errors import ConfigurationError, SetupError
from .server import ParaAttentionServer, ServerConfig


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _seconds_or_none(text: str) -> float | None:
    value = float(text)
    return None if value <= 0 else value


def serve_parser() -> argparse.ArgumentParser:
    d = ServerConfig()
    p = argparse.ArgumentParser(
        prog="para-attn-server",
        description="Serve a diffusers pipeline split across worker ranks over HTTP. "
        "Run 'para-attn-server plugins' to list installed predictors and executors, "
        "'para-attn-server generate URL -p KEY=VALUE' to run a job on a server.",
    )
    p.add_argument(
        "--model", default=d.model, help="predictor: entry-point name or module:Class (default: %(default)s)"
    )
    p.add_argument("--host", default=d.host, help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=d.port, help="port to listen on, 0 for any (default: %(default)s)")
    p.add_argument("--num-devices", type=int, default=None, help="ranks to start (default: CUDA devices, or 1)")
    p.add_argument("--executor", default=d.executor, help="how ranks are started (default: %(default)s)")
    p.add_argument("--backend", default=None, help="torch.distributed backend (default: nccl on CUDA, else gloo)")
    p.add_argument("--output-dir", default=d.output_dir, help="where outputs are written (default: %(default)s)")
    p.add_argument("--max-queue", type=int, default=d.max_queue, help="jobs that may wait (default: %(default)s)")
    p.add_argument(
        "--job-timeout",
        type=_seconds_or_none,
        default=d.job_timeout,
        help="seconds a job may run before its ranks are restarted; 0: no limit (default: %(default)s)",
    )
    p.add_argument(
        "--result-ttl", type=float, default=d.result_ttl, help="seconds results are kept (default: %(default)s)"
    )
    p.add_argument(
        "--setup-timeout", type=float, default=d.setup_timeout, help="seconds setup may take (default: %(default)s)"
    )
    p.add_argument(
        "--heartbeat-timeout",
        type=float,
        default=d.heartbeat_timeout,
        help="seconds of rank silence before a restart (default: %(default)s)",
    )
    p.add_argument(
        "--keepalive-interval",
        type=float,
        default=d.keepalive_interval,
        help="idle keep-alive period of the ranks (default: %(default)s)",
    )
    p.add_argument(
        "--collective-timeout",
        type=float,
        default=d.collective_timeout,
        help="torch.distributed timeout in seconds (default: %(default)s)",
    )
    p.add_argument(
        "--cancel-grace",
        type=float,
        default=d.cancel_grace,
        help="seconds a cancelled job may take to stop before its ranks are restarted (default: %(default)s)",
    )
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=d.drain_timeout,
        help="seconds SIGTERM waits for the running job (default: %(default)s)",
    )
    p.add_argument(
        "--max-output-bytes",
        type=int,
        default=d.max_output_bytes,
        help="largest output accepted from a job (default: %(default)s)",
    )
    p.add_argument(
        "--output-memory-bytes",
        type=int,
        default=d.output_memory_bytes,
        help="recent outputs kept in memory for fast download, in all (default: %(default)s)",
    )
    p.add_argument(
        "--api-key",
        default=None,
        help="require this key on every endpoint but /health/live (or $PARA_ATTN_SERVER_API_KEY)",
    )
    p.add_argument(
        "--max-body-bytes", type=int, default=d.max_body_bytes, help="largest request body (default: %(default)s)"
    )
    p.add_argument(
        "--model-path", default=None, help="weights directory or hub id for the predictor (or $PARA_ATTN_MODEL_PATH)"
    )
    p.add_argument(
        "--option",
        "-o",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="predictor option, repeatable",
    )
    p.add_argument(
        "--executor-option",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="executor option, repeatable (torchrun: rdzv_endpoint=HOST:PORT)",
    )
    p.add_argument(
        "--plugin", action="append", default=[], metavar="MODULE", help="extra plugin module to load, repeatable"
    )
    p.add_argument("--log-level", default=d.log_level, help="(default: %(default)s)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["plugins"]:
        return plugins_command()
    if args_list[:1] == ["generate"]:
        from .generate_cli import main as generate

        return generate(args_list[1:])
    args = serve_parser().parse_args(args_list)
    settings = {f.name: getattr(args, f.name) for f in fields(ServerConfig) if hasattr(args, f.name)}
    settings.pop("model")
    for name in ("host", "port", "num_devices", "log_level"):
        settings.pop(name)
    settings["options"] = dict(args.option)
    settings["plugins"] = list(args.plugin)
    settings["executor_options"] = dict(args.executor_option)
    server = ParaAttentionServer(args.model, args.host, args.port, args.num_devices, args.log_level, **settings)
    try:
        server.run()
    except ConfigurationError as exc:
        print(f"para-attn-server: error: {exc}", file=sys.stderr)
        return 2
    except SetupError as exc:
        print(f"para-attn-server: setup failed: {exc}", file=sys.stderr)
        return 1
    return 0


def plugins_command() -> int:
    from .plugins import Plugins

    print(json.dumps(Plugins.load().describe(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
