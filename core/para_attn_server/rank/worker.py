"""The rank process: set up the predictor, then run jobs in lockstep with the other ranks.

Every rank receives each job from the server over its own control connection, in the same
order; no collective carries it (one collective less per job), and an idle rank waits on
its socket, never inside a collective, so it cannot die of a collective timeout however
long it idles (a known way for other multi-GPU servers to die after ~10 idle minutes).
Rank 0 is the leader of each job: at every step boundary it decides continue/stop and sends
that to every rank (``decisions``; never over the model's own group, which may be NCCL),
and it alone reports progress and the output.
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import pickle
import queue
import select
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from datetime import timedelta

import msgspec
import torch
import torch.distributed as dist

from para_attn_server.adapters import LORAS, Lora
from para_attn_server.errors import JobCancelled
from para_attn_server.legacy import as_predictor
from para_attn_server.media import decode_inputs
from para_attn_server.plugin.manager import Plugins
from para_attn_server.predictor import JobContext, Output, RankContext, running
from para_attn_server.protocol import (
    CancelJob,
    Heartbeat,
    Hello,
    JobEnded,
    Progress,
    RankMessage,
    RunJob,
    ServerMessage,
    SetupDone,
    SetupFailed,
    Shutdown,
    recv_server_message,
    wire,
)
from para_attn_server.rank.decisions import DecisionChannel, open_channel
from para_attn_server.rank.previews import PreviewSender
from para_attn_server.schema import InputSchema
from para_attn_server.workers.executor import RANK_SPEC_ENV, RankSpec, die_with_parent

log = logging.getLogger("para_attn_server.rank")

LOOPBACK = ("127.0.0.1", "localhost", "::1")
PROGRESS_INTERVAL = 0.005  # seconds between progress reports (200 a second at most)


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class ControlLink:
    """This rank's connection to the server: sends reports, receives jobs and cancels.

    A rank reads its connection on its main thread: while idle it waits on the socket
    itself, and rank 0 polls for a cancel at each step boundary without blocking, so a job
    reaches a rank without a thread hand-off. Only a predictor that is cancelled by
    interrupt (``Predictor.cancel_by_interrupt``) needs the background reader, which
    applies a cancel the moment it arrives, on every rank.
    """

    def __init__(self, spec: RankSpec, rank: int) -> None:
        self.rank = rank
        self.cancelled: set[str] = set()
        self._pending: collections.deque[RunJob | Shutdown] = collections.deque()
        self._inbox: queue.Queue[RunJob | Shutdown] | None = None  # set in threaded mode
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.sock = socket.create_connection((spec.control_host, spec.control_port), timeout=60)
        self.sock.settimeout(None)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pid, host = os.getpid(), socket.gethostname()
        self.send(Hello(rank, spec.world_size, spec.token, spec.generation, pid, host, spec.node, spec.join_token))
        beat = threading.Thread(target=self._beat, args=(spec.settings.heartbeat_interval,), daemon=True)
        beat.start()

    def send(self, message: RankMessage) -> None:
        frame, output = wire(message)
        try:
            with self._lock:
                self.sock.sendall(frame)
                if output is not None:
                    self.sock.sendall(output)
        except OSError:
            self._server_gone()

    def start_reader(self, on_cancel: Callable[[str], None]) -> None:
        """Read in a background thread and call ``on_cancel`` as soon as a cancel arrives."""
        inbox: queue.Queue[RunJob | Shutdown] = queue.Queue()
        self._inbox = inbox

        def read() -> None:
            while True:
                message = self._recv()
                if isinstance(message, CancelJob):
                    self.cancelled.add(message.job_id)
                    on_cancel(message.job_id)
                else:
                    inbox.put(message)

        threading.Thread(target=read, name="control-reader", daemon=True).start()

    def receive(self) -> RunJob | Shutdown:
        """The next job or shutdown (cancels that arrive first are taken on the way)."""
        if self._inbox is not None:
            return self._inbox.get()
        while not self._pending:
            self._take(self._recv())
        return self._pending.popleft()

    def poll_cancels(self) -> None:
        """Take whatever the server sent, without waiting (a step boundary on rank 0)."""
        if self._inbox is None:
            while select.select([self.sock], [], [], 0)[0]:
                self._take(self._recv())

    def _take(self, message: ServerMessage) -> None:
        if isinstance(message, CancelJob):
            self.cancelled.add(message.job_id)
        else:
            self._pending.append(message)

    def _recv(self) -> ServerMessage:
        try:
            message = recv_server_message(self.sock)
        except (OSError, msgspec.DecodeError):
            message = None
        if message is None:
            self._server_gone()
            raise SystemExit(3)
        return message

    def _beat(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.send(Heartbeat(self.rank))

    def _server_gone(self) -> None:
        if self._stop.is_set():
            return
        # Nobody is left to report to: exit at once rather than linger as an orphan.
        log.error("rank %d: lost the connection to the server, exiting", self.rank)
        os._exit(3)

    def close(self) -> None:
        self._stop.set()
        self.sock.close()


class RankWorker:
    def __init__(self, spec: RankSpec, rank: int, local_rank: int, link: ControlLink) -> None:
        self.spec = spec
        self.rank = rank
        self.local_rank = local_rank
        self.world_size = spec.world_size
        self.link = link
        self.plugins = Plugins.load(spec.plugins, autoload=False)
        if spec.predictor_pickle is not None:
            self.predictor = as_predictor(pickle.loads(spec.predictor_pickle))
        else:
            assert spec.predictor is not None
            self.predictor = self.plugins.resolve_predictor(spec.predictor)
        self.schema = InputSchema(self.predictor)
        self.predictor.configure(spec.world_size, dict(spec.options))
        self.decisions = DecisionChannel()
        self.previews = PreviewSender(link.send)  # used on rank 0 only

    # ---- setup ------------------------------------------------------------------------

    def setup(self) -> None:
        if torch.cuda.is_available():
            index = (self.spec.device_offset + self.local_rank) % torch.cuda.device_count()
            device = torch.device("cuda", index)
            torch.cuda.set_device(device)
        else:
            device = torch.device("cpu")
            if "OMP_NUM_THREADS" not in os.environ:
                # Ranks share the host's cores; oversubscribing them slows every rank.
                local = int(os.environ.get("LOCAL_WORLD_SIZE", self.world_size))
                torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local)))
        os.environ.update(RANK=str(self.rank), WORLD_SIZE=str(self.world_size), LOCAL_RANK=str(self.local_rank))
        if self.spec.master_addr is not None:
            os.environ["MASTER_ADDR"] = self.spec.master_addr
            os.environ["MASTER_PORT"] = str(self.spec.master_port)
        if self.spec.external_store:
            # torch's own switch for "the agent hosts the store": rank 0 then hosts none
            # (it would listen on every interface), whoever calls init_process_group.
            os.environ["TORCHELASTIC_USE_AGENT_STORE"] = "True"
            if self.spec.master_addr in LOOPBACK:
                os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        if not self.predictor.initializes_process_group:
            self._init_process_group(device)
        context = RankContext(
            self.rank,
            self.world_size,
            self.local_rank,
            device,
            dict(self.spec.options),
            max_loaded_loras=self.spec.settings.max_loaded_loras,
        )
        self.plugins.setup(self.predictor, context)
        if not dist.is_initialized():
            self._init_process_group(device)
        timeout = timedelta(seconds=self.spec.settings.collective_timeout)
        # Our own gloo group with our own timeout sets up the step decisions (and carries
        # them across hosts).
        control = dist.new_group(backend="gloo", timeout=timeout)
        self.decisions = open_channel(
            self.rank, self.world_size, self.spec.token, control, self.spec.settings.collective_timeout
        )
        if self.predictor.cancel_by_interrupt:
            self.link.start_reader(self.predictor.interrupt)

    def _init_process_group(self, device: torch.device) -> None:
        backend = self.spec.settings.backend or ("nccl" if device.type == "cuda" else "gloo")
        timeout = timedelta(seconds=self.spec.settings.collective_timeout)
        dist.init_process_group(backend, rank=self.rank, world_size=self.world_size, timeout=timeout)

    # ---- job loop ---------------------------------------------------------------------

    def serve(self) -> None:
        """Run the jobs the server sends, in order, until it says stop. Every rank reads its
        own connection (the server sends each job to every rank, in the same order): no
        collective carries the job, and an idle rank waits in no collective, so it cannot
        run into a collective timeout however long it idles."""
        while True:
            message = self.link.receive()
            if isinstance(message, Shutdown):
                return
            self.run(message)

    def run(self, message: RunJob) -> None:
        job_id = message.job_id
        ended: JobEnded
        # First, whatever follows: every rank must count every job, or a rank's decisions
        # would be read as another job's.
        self.decisions.begin_job()
        try:
            inputs = decode_inputs(self.schema.convert(message.inputs), self.schema.media_fields, message.media)
            decider = StepDecider(job_id, self.rank, self.link, self.decisions)
            previews = functools.partial(self.previews.submit, job_id) if self.rank == 0 else None
            loras = msgspec.convert(inputs.get(LORAS) or [], list[Lora]) if self.schema.takes_loras else []
            kwargs = self.schema.predict_kwargs(inputs)
            job = JobContext(job_id, kwargs, self.rank, self.world_size, decider, previews, loras)
            with running(job):
                output = self.plugins.predict(self.predictor, job)
            decider.report_last()
            ended = self._ended(job_id, output)
        except JobCancelled:
            ended = JobEnded(job_id, self.rank, "cancelled")
        except Exception as exc:
            log.error("rank %d: job %s failed:\n%s", self.rank, job_id, traceback.format_exc())
            ended = JobEnded(job_id, self.rank, "failed", error=f"rank {self.rank}: {describe(exc)}")
        finally:
            # A cancel is only ever sent for the running job, before the next job: none
            # left now can concern a later one.
            self.link.cancelled.clear()
        if self.rank == 0:
            self.previews.flush()  # the job's last preview reaches the server before its end
        self.link.send(ended)

    def _ended(self, job_id: str, output: Output | None) -> JobEnded:
        if self.rank != 0:
            return JobEnded(job_id, self.rank, "succeeded")
        if output is None:
            return JobEnded(job_id, 0, "failed", error="predict returned no output on rank 0")
        limit = self.spec.settings.max_output_bytes
        if len(output.data) > limit:
            error = f"output too large: {len(output.data)} bytes exceeds the limit of {limit} bytes"
            return JobEnded(job_id, 0, "failed", error=error)
        return JobEnded(job_id, 0, "succeeded", output=output.data, file_type=output.file_type, base64=output.base64)


class StepDecider:
    """The step hook of one job on one rank: ``decide(step, total)`` says whether to stop.

    Rank 0 decides (a cancel that has arrived) and sends the decision to every rank, so
    every rank stops at the same step. It reports progress at most once every
    ``PROGRESS_INTERVAL`` seconds (always the last step): a person watching needs no more,
    and each report wakes the server, which shares the cores with the ranks.
    """

    def __init__(self, job_id: str, rank: int, link: ControlLink, decisions: DecisionChannel) -> None:
        self.job_id, self.rank = job_id, rank
        self.link, self.decisions = link, decisions
        self.reported: tuple[int, int | None] = (0, None)  # (step, total) last sent
        self.last: tuple[int, int | None] = (0, None)  # (step, total) last seen
        self.sent_at = -PROGRESS_INTERVAL

    def __call__(self, step: int, total: int | None) -> bool:
        stop = False
        if self.rank == 0:
            # Decide before reporting the step: a client that saw step k and then
            # cancelled is stopped at step k + 1 at the latest, never retroactively.
            self.link.poll_cancels()
            stop = self.job_id in self.link.cancelled
            self.last = (step, total)
            now = time.monotonic()
            if step == total or now - self.sent_at >= PROGRESS_INTERVAL:
                self._report(step, total, now)
        return self.decisions.decide(stop)

    def report_last(self) -> None:
        """Report the last step seen if a throttled report left it out (rank 0)."""
        if self.rank == 0 and self.last[0] and self.last != self.reported:
            self._report(*self.last, time.monotonic())

    def _report(self, step: int, total: int | None, now: float) -> None:
        self.link.send(Progress(self.job_id, step, total))
        self.reported, self.sent_at = (step, total), now


def main(spec: RankSpec, rank: int, local_rank: int) -> None:
    """Entry point of one rank process (multiprocessing target, or ``python -m``)."""
    logging.basicConfig(
        level=spec.log_level, stream=sys.stderr, format=f"%(asctime)s rank {rank} %(levelname)s %(message)s"
    )
    link = ControlLink(spec, rank)
    try:
        worker = RankWorker(spec, rank, local_rank, link)
        worker.setup()
    except BaseException as exc:
        log.error("rank %d: setup failed:\n%s", rank, traceback.format_exc())
        link.send(SetupFailed(rank, describe(exc)))
        link.close()
        sys.exit(1)
    link.send(SetupDone(rank))
    try:
        worker.serve()
    finally:
        worker.decisions.close()
        link.close()
        if dist.is_initialized():
            dist.destroy_process_group()


def torchrun_main() -> None:
    """``python -m para_attn_server.rank.worker`` under torchrun: the spec comes in the environment."""
    spec = RankSpec.from_env(os.environ[RANK_SPEC_ENV])
    # torchrun starts ranks in sessions of their own: an agent killed by SIGKILL (or a
    # ``join`` that took its agent along) would otherwise leave them serving a group
    # whose host is gone.
    die_with_parent(signal.SIGKILL)
    main(spec, int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")))


if __name__ == "__main__":
    torchrun_main()
