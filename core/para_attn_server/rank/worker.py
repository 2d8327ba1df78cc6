"""The rank process: set up the predictor, then run jobs in lockstep with the other ranks.

Every rank receives each job from the server over its own control connection, in the same
order; no collective carries it (one collective less per job), and an idle rank waits on
its socket, never inside a collective, so it cannot die of a collective timeout however
long it idles (a known way for other multi-GPU servers to die after ~10 idle minutes).
Rank 0 is the leader of each job: at every step boundary it decides continue/stop and sends
that to every rank (``decisions``; never over the model's own group, which may be NCCL),
and it alone reports progress and the output. A batch (jobs a predictor said may share one
call, ``Predictor.batch_key``) runs as one job led by its first: one ``predict_batch`` call,
one decision per step, progress under the leader's id, and rank 0 reports each job's output.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import sys
import time
import traceback
from datetime import timedelta

import msgspec
import torch
import torch.distributed as dist

from para_attn_server.adapters import LORAS, Lora
from para_attn_server.allocator import settle
from para_attn_server.errors import JobCancelled, SetupError
from para_attn_server.legacy import as_predictor
from para_attn_server.logs import configure_logging, rank_warnings
from para_attn_server.media import decode_inputs
from para_attn_server.options import configure
from para_attn_server.plugin.manager import Plugins
from para_attn_server.predictor import JobContext, Output, Predictor, RankContext, running
from para_attn_server.protocol import JobEnded, Progress, RunJob, SetupDone, SetupFailed, Shutdown
from para_attn_server.rank.decisions import DecisionChannel, open_channel
from para_attn_server.rank.link import ControlLink
from para_attn_server.rank.previews import PreviewSender
from para_attn_server.schema import InputSchema
from para_attn_server.workers.executor import RANK_SPEC_ENV, RankSpec, die_with_parent

log = logging.getLogger("para_attn_server.rank")

LOOPBACK = ("127.0.0.1", "localhost", "::1")
PROGRESS_INTERVAL = 0.005  # seconds between progress reports (200 a second at most)


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class RankWorker:
    def __init__(self, spec: RankSpec, rank: int, local_rank: int, link: ControlLink) -> None:
        self.spec = spec
        self.rank = rank
        self.local_rank = local_rank
        self.world_size = spec.world_size
        self.link = link
        self.plugins = Plugins.load(spec.plugins, autoload=False)
        self.predictor = predictor_of(spec, self.plugins)
        self.schema = InputSchema(self.predictor)
        configure(self.predictor, spec.world_size, dict(spec.options))  # ``-o defaults`` is the server's
        self.decisions = DecisionChannel()
        self.previews = PreviewSender(link.send)  # used on rank 0 only

    # ---- setup ------------------------------------------------------------------------

    def setup(self) -> None:
        if torch.cuda.is_available():
            devices = self.spec.devices
            index = devices[self.local_rank] if devices else self.spec.device_offset + self.local_rank
            index %= torch.cuda.device_count()
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
            max_lora_rank=self.spec.settings.max_lora_rank,
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
        """Run one job, or a batch of them as one call (``message.batch``), and report how
        it ended: a failure or a cancel ends every job of a batch alike."""
        job_id = message.job_id
        ended: list[JobEnded]
        job: JobContext | None = None
        # First, whatever follows: every rank must count every job, or a rank's decisions
        # would be read as another job's.
        self.decisions.begin_job()
        try:
            job, decider = self._job_context(message)
            with running(job):
                if message.batch:
                    outputs = self.plugins.predict_batch(self.predictor, job)
                else:
                    outputs = [self.plugins.predict(self.predictor, job)]
            decider.report_last()
            ended = self._ended(job.job_ids, outputs)
        except JobCancelled:
            ended = [JobEnded(job_id, self.rank, "cancelled")]
        except Exception as exc:
            log.error("rank %d: job %s failed:\n%s", self.rank, job_id, traceback.format_exc())
            ended = [JobEnded(job_id, self.rank, "failed", error=f"rank {self.rank}: {describe(exc)}")]
        finally:
            # A cancel is only ever sent for the running job, before the next job: none
            # left now can concern a later one.
            self.link.cancelled.clear()
        if self.rank == 0:
            self.previews.flush()  # the job's last preview reaches the server before its end
            if job is not None and job.adapters is not None:  # a failed job may have loaded some too
                ended[-1] = msgspec.structs.replace(ended[-1], adapters=job.adapters)
        for end in ended:  # the leader's last: its end is what ends the batch
            self.link.send(end)

    def _job_context(self, message: RunJob) -> tuple[JobContext, StepDecider]:
        """The job's context (a batch's: the leader's id, every job's arguments)."""
        job_id = message.job_id
        jobs = [message.inputs] + [item.inputs for item in message.batch]
        inputs = [decode_inputs(self.schema.convert(raw), self.schema.media_fields, message.media) for raw in jobs]
        decider = StepDecider(job_id, self.rank, self.link, self.decisions)
        # Jobs of a batch share their adapters (their batch key says so): the leader's.
        loras = msgspec.convert(inputs[0].get(LORAS) or [], list[Lora]) if self.schema.takes_loras else []
        kwargs = [self.schema.predict_kwargs(one) for one in inputs]
        ids = [job_id] + [item.job_id for item in message.batch]
        job = JobContext(
            job_id,
            kwargs[0],
            self.rank,
            self.world_size,
            decider,
            loras=loras,
            batch=kwargs if message.batch else (),
            job_ids=ids,
            send_preview=self.previews.submit if self.rank == 0 else None,  # each job's under its own id
        )
        return job, decider

    def _ended(self, job_ids: tuple[str, ...], outputs: list[Output | None]) -> list[JobEnded]:
        """Rank 0: each job's end, the leader's last; the others: the leader's alone."""
        if self.rank != 0:
            return [JobEnded(job_ids[0], self.rank, "succeeded")]
        call = "predict_batch" if len(job_ids) > 1 else "predict"
        ended = [self._output_ended(job_id, output, call) for job_id, output in zip(job_ids, outputs, strict=True)]
        return ended[1:] + ended[:1]

    def _output_ended(self, job_id: str, output: Output | None, call: str) -> JobEnded:
        if output is None:
            return JobEnded(job_id, 0, "failed", error=f"{call} returned no output on rank 0")
        limit = self.spec.settings.max_output_bytes
        if len(output.data) > limit:
            error = f"output too large: {len(output.data)} bytes exceeds the limit of {limit} bytes"
            return JobEnded(job_id, 0, "failed", error=error)
        return JobEnded(job_id, 0, "succeeded", output=output.data, file_type=output.file_type, base64=output.base64)


def predictor_of(spec: RankSpec, plugins: Plugins) -> Predictor:
    """The spec's predictor. A pickled one only on the server's own host (``spec.node`` is
    empty): a joined host's spec came over the network, where a pickle is never loaded."""
    if spec.predictor_pickle is not None:
        if spec.node:
            raise SetupError(f"a pickled predictor reached host {spec.node!r}: only a predictor by name travels")
        return as_predictor(pickle.loads(spec.predictor_pickle))
    if spec.predictor is None:
        raise SetupError("the spec names no predictor")
    return plugins.resolve_predictor(spec.predictor)


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
    where = {"group": spec.group, "rank": rank, **({"node": spec.node} if spec.node else {})}
    configure_logging(spec.log_level, spec.log_format, role="rank", context=where)
    rank_warnings(first=local_rank == 0 and spec.device_offset == 0)  # the host's first group's first rank
    link = ControlLink(spec, rank)
    try:
        worker = RankWorker(spec, rank, local_rank, link)
        worker.setup()
        fit = worker.predictor.adapter_fit() if rank == 0 and worker.schema.takes_loras else None
    except BaseException as exc:
        log.error("rank %d: setup failed:\n%s", rank, traceback.format_exc())
        link.send(SetupFailed(rank, describe(exc)))
        link.close()
        sys.exit(1)
    settle()  # the model's objects stay out of the collections between its jobs
    link.send(SetupDone(rank, fit))
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
