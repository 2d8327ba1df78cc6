"""``para-attn-client generate URL -p prompt="a cat" -p seed=7 -o cat.png`` (also
``para-attn-server generate``): run one job on a server through ``para_attn_client.Client``,
show its progress, write its output. ``-p image=@cat.png`` sends a file (as a ``data:``
URL); ``-p image=job:<id>`` an earlier job's output; ``-p loras='{"a": 0.8}'`` applies
adapter ``a`` at scale 0.8 (as ``Client.submit`` takes ``loras``).

Exit status: 0 the output was written; 1 the job failed or was cancelled elsewhere, or the
server could not be reached; 2 bad input (the command line, or inputs the server refused,
named in a one-line error); 130 interrupted by Ctrl-C, after the job was cancelled on the
server.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import msgspec
from tqdm import tqdm

from para_attn_client.client import (
    API_KEY_ENV,
    Client,
    ClientError,
    Conflict,
    Event,
    InputRejected,
    Job,
    JobFailed,
    NotFound,
    Progress,
    Result,
    Unauthorized,
)

PROG = "para-attn-client generate"
CANCEL_WAIT = 3.0  # seconds to wait after Ctrl-C for the server to say the job stopped


class UsageError(Exception):
    """A bad command line: one line on stderr and status 2, not argparse's usage block."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


@dataclass(frozen=True)
class Param:
    """One ``-p``: its field, its value, and whether it adds an item to a list (``+=``)."""

    key: str
    value: Any
    append: bool = False


def parse_param(text: str) -> Param:
    """``KEY=VALUE``: the value as JSON when it is JSON (``seed=7``, ``tags=["a"]``), else
    the text itself (``prompt=a cat``). ``KEY=@FILE``: the file (a ``Path``, read before
    the job is sent; ``@@`` for text that starts with ``@``). ``KEY+=VALUE``: VALUE added
    to the list KEY (``-p images+=@a.png -p images+=@b.png``)."""
    key, sep, value = text.partition("=")
    append = key.endswith("+")
    key = key.removesuffix("+").strip()
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    if value.startswith("@@"):
        return Param(key, value[1:], append)
    if value.startswith("@"):
        if not value[1:]:
            raise argparse.ArgumentTypeError(f"{key}: expected @FILE, got '@' alone (a literal '@' is '@@')")
        return Param(key, Path(value[1:]).expanduser(), append)

    def not_a_number(constant: str) -> Any:
        raise ValueError(constant)  # NaN and Infinity are words here, not floats

    try:
        return Param(key, json.loads(value, parse_constant=not_a_number), append)
    except ValueError:
        return Param(key, value, append)


def _uuid(text: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a UUID, got {text!r}") from None


def parser(prog: str = PROG) -> argparse.ArgumentParser:
    p = _Parser(
        prog=prog,
        description="Run one job on a para-attn-server and write its output.",
        epilog="Exit status: 0 written, 1 the job failed, 2 bad input, 130 interrupted (the job is cancelled).",
    )
    p.add_argument("url", metavar="URL", help="the server, as http://HOST:PORT")
    p.add_argument(
        "-p",
        "--param",
        type=parse_param,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a request field, repeatable; VALUE is read as JSON when it is JSON, else as text; "
        "@FILE sends the file (a picture: -p image=@cat.png; @@ for a leading @); KEY+=VALUE adds to the list KEY; "
        """adapters (LoRA): -p loras='{"a": 0.8}' or -p loras='[{"name": "a", "scale": 0.8}]'""",
    )
    p.add_argument(
        "-o", "--output", type=Path, help="where to write the output (a directory: named after the job there)"
    )
    p.add_argument("--json", action="store_true", help="print the job and where its output went as JSON on stdout")
    p.add_argument("--api-key", help=f"the server's API key (default: ${API_KEY_ENV})")
    p.add_argument("--id", dest="job_id", type=_uuid, help="the job's UUID: the same command again never runs it twice")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


class ProgressBar:
    """The job on stderr: its state, steps done of total, elapsed time and rate (tqdm).
    It appears with the job's first event: a refused request draws no bar."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.running = False
        self.bar: tqdm[Any] | None = None

    def __call__(self, event: Event) -> None:
        if isinstance(event, Progress):
            if self.bar is not None:  # always: the job itself is the first event
                self._move(event.step, event.total)
            return
        state = event.state
        if state == "queued" and event.queue_position is not None:
            state = f"queued ({event.queue_position} ahead)"
        if self.bar is None:
            self.bar = tqdm(
                desc=state, total=event.total, unit=" steps", disable=not self.enabled, file=sys.stderr,
                dynamic_ncols=True,
            )  # fmt: skip
            self.running = event.state != "queued"
        else:
            self.bar.set_description_str(state)
        if event.state == "running" and not self.running:
            self.running = True
            self.bar.reset(total=event.total)  # elapsed and rate count from the start
        if event.step is not None:
            self._move(event.step, event.total)

    def _move(self, step: int, total: int | None) -> None:
        assert self.bar is not None
        if total is not None and self.bar.total != total:
            self.bar.total = total
        self.bar.update(step - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def main(argv: Sequence[str], prog: str = PROG) -> int:
    """Run the command; ``prog`` names it in its messages (``para-attn-server generate``
    when the server's command runs it)."""
    if threading.current_thread() is threading.main_thread():
        # Ctrl-C must reach generate (which cancels the job) even where SIGINT was left
        # ignored, as a non-interactive shell does for the commands it starts with '&'.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        args = parser(prog).parse_args(argv)
        inputs = _inputs(args.param)
        url = _url(args.url)
        target = _target(args.output)
    except UsageError as exc:
        return _fail(prog, str(exc), 2)
    job_id = args.job_id or str(uuid.uuid4())
    progress = ProgressBar(enabled=not args.quiet)
    with Client(url, api_key=args.api_key) as client:
        try:
            result = client.generate(inputs, job_id=job_id, on_event=progress)
        except KeyboardInterrupt:
            progress.close()
            return _interrupted(prog, client, job_id)
        except ClientError as exc:
            progress.close()
            return _failed(prog, exc, args.json)
        progress.close()
    return _written(prog, result, target, args.json)


def _inputs(params: list[Param]) -> dict[str, Any]:
    """The request's fields; each ``@FILE`` read here, so a missing file is a usage error
    before anything is sent (the client sends the bytes as a ``data:`` URL)."""
    inputs: dict[str, Any] = {}
    for param in params:
        value = _read(param.key, param.value) if isinstance(param.value, Path) else param.value
        if param.append:
            items = inputs.setdefault(param.key, [])
            if not isinstance(items, list):
                raise UsageError(f"-p {param.key}+=: {param.key} is not a list")
            items.append(value)
        elif param.key in inputs:
            raise UsageError(f"-p {param.key}: given twice (to send a list: -p {param.key}+=VALUE, repeated)")
        else:
            inputs[param.key] = value
    return inputs


def _read(key: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"-p {key}: cannot read {str(path)!r}: {exc.strerror or exc}") from None


def _url(text: str) -> str:
    url = text if "://" in text else f"http://{text}"
    if not url.startswith(("http://", "https://")) or len(url.split("://", 1)[1]) == 0:
        raise UsageError(f"URL: expected http://HOST:PORT, got {text!r}")
    return url


def _target(path: Path | None) -> Path | None:
    """Refuse an output path that cannot be written before the job runs."""
    if path is not None and not path.is_dir() and not path.parent.is_dir():
        raise UsageError(f"-o: directory {str(path.parent)!r} does not exist")
    return path


def _written(prog: str, result: Result, target: Path | None, as_json: bool) -> int:
    try:
        path = result.save(target if target is not None else Path.cwd())
    except OSError as exc:
        return _fail(prog, f"-o: cannot write {str(target)!r}: {exc.strerror or exc}", 1)
    if as_json:
        _print_json(result.job, path, result.content_type, len(result.output))
    else:
        job = result.job
        took = (job.finished_at or job.created_at) - job.created_at
        print(f"{path} ({result.content_type}, {len(result.output)} bytes): job {job.id} succeeded in {took:.2f} s")
    return 0


def _failed(prog: str, exc: ClientError, as_json: bool) -> int:
    if isinstance(exc, JobFailed):
        if as_json:
            _print_json(exc.job, None, None, None)
        return _fail(prog, exc.message, 1)
    if isinstance(exc, InputRejected):
        return _fail(prog, f"{exc.field}: {exc.reason}" if exc.field else exc.reason, 2)
    if isinstance(exc, Unauthorized):
        return _fail(prog, f"--api-key: {exc.message} (give --api-key or set ${API_KEY_ENV})", 2)
    if isinstance(exc, Conflict):
        # The id is taken by a job with other inputs; the server names the field "id".
        return _fail(prog, f"--id: {exc.message.removeprefix('id: ')}", 2)
    return _fail(prog, exc.message, 1)


def _interrupted(prog: str, client: Client, job_id: str) -> int:
    """After Ctrl-C (``generate`` already asked the server to cancel): say how it ended."""
    state = "cancel requested"
    try:
        job = client.get(job_id, wait=CANCEL_WAIT)
        state = job.state if job.done else f"{job.state}, cancel requested"
        if job.step is not None:
            state += f" at step {job.step} of {job.total or '?'}"
    except NotFound:
        state = "not submitted"  # interrupted before the server took it
    except (ClientError, KeyboardInterrupt):
        pass
    print(f"{prog}: interrupted: job {job_id} {state}", file=sys.stderr)
    return 130


def _print_json(job: Job, path: Path | None, content_type: str | None, size: int | None) -> None:
    output = None if path is None else {"file": str(path), "content_type": content_type, "bytes": size}
    print(json.dumps({"job": msgspec.to_builtins(job), "output": output}))


def _fail(prog: str, message: str, status: int) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return status
