"""Live previews of running jobs: small JPEGs of the state at a step.

Rank 0 hands the picture a predictor gives ``current_job().preview(image)`` (or a function
that makes it) to its ``PreviewSender``: one thread of its own makes the picture, turns it
into a JPEG of at most ``MAX_SIDE`` pixels on its long side (``to_jpeg``) and sends it over
the control connection, so the denoising loop waits for neither, and no other rank is
involved (no collective). The server keeps them in ``para_attn_server.engine.previews``.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Callable
from typing import Any

from para_attn_server.predictor import PREVIEW_MAX_SIDE
from para_attn_server.protocol import Preview

log = logging.getLogger("para_attn_server.previews")

MAX_SIDE = PREVIEW_MAX_SIDE  # pixels on the long side: the predictor contract's figure
JPEG_QUALITY = 85


def to_jpeg(image: Any) -> bytes:
    """``image`` (a PIL image, or an HxWx3 array or tensor: uint8, or floats in [0, 1]) as
    a JPEG no larger than ``MAX_SIDE`` on its long side; a smaller one keeps its size."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        pixels = _uint8_pixels(image)
        height, width, _ = pixels.shape
        image = Image.frombuffer("RGB", (width, height), pixels, "raw", "RGB", 0, 1)
    if image.mode != "RGB":
        image = image.convert("RGB")
    if max(image.size) > MAX_SIDE:
        image = image.copy()  # thumbnail works in place: never on the caller's image
        image.thumbnail((MAX_SIDE, MAX_SIDE))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def check_image(image: Any) -> None:
    """Refuse, in the predictor's own thread, what ``to_jpeg`` could not encode."""
    if hasattr(image, "mode") and hasattr(image, "size"):  # a PIL image
        return
    shape = tuple(getattr(image, "shape", ()))
    if len(shape) != 3 or shape[2] != 3:
        raise ValueError(f"a preview is a PIL image or an HxWx3 array; got {type(image).__name__} of shape {shape}")


def _uint8_pixels(array: Any) -> Any:
    import numpy as np

    if hasattr(array, "detach"):  # a torch tensor, possibly on a GPU: copied here, off the loop
        array = array.detach().cpu().numpy()
    pixels = np.asarray(array)
    if pixels.dtype != np.uint8:
        pixels = (pixels.astype(np.float32) * 255).round().clip(0, 255).astype(np.uint8)
    return np.ascontiguousarray(pixels)


class PreviewSender:
    """Rank 0's previews, encoded and sent by one thread of their own.

    Only the newest preview of each job waits (a batch previews several jobs): one that was
    not taken before the same job's next arrived is dropped, so a slow encoder costs
    previews, never steps. ``flush`` waits for the one in
    hand; the rank calls it before it reports a job's end, so a job's previews reach the
    server before its end (they share one connection, in order).
    """

    def __init__(self, send: Callable[[Preview], None]) -> None:
        self._send = send
        self._changed = threading.Condition()
        self._pending: dict[str, tuple[int, Any]] = {}  # job id -> (step, image), oldest first
        self._busy = False
        self._thread: threading.Thread | None = None

    def submit(self, job_id: str, step: int, image: Any) -> None:
        """Send ``image`` as the job's preview after ``step``: a picture, or a function of no
        arguments that returns one. Either is used later, on the sender's thread (and a
        function not at all when a newer preview replaces it): the caller must not change
        what it hands over afterwards."""
        if not callable(image):
            check_image(image)
        with self._changed:
            self._pending.pop(job_id, None)  # the replaced one's turn goes too: jobs take turns
            self._pending[job_id] = (step, image)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="previews", daemon=True)
                self._thread.start()
            self._changed.notify_all()

    def flush(self) -> None:
        """Wait until every preview submitted so far was sent (or dropped)."""
        with self._changed:
            self._changed.wait_for(lambda: not self._pending and not self._busy)

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: bool(self._pending))
                job_id = next(iter(self._pending))
                step, image = self._pending.pop(job_id)
                self._busy = True
            try:
                if callable(image):
                    image = image()
                    check_image(image)
                self._send(Preview(job_id, step, to_jpeg(image)))
            except Exception:  # a bad picture costs its preview, never the job
                log.exception("preview of job %s at step %d could not be sent", job_id, step)
            finally:
                with self._changed:
                    self._busy = False
                    self._changed.notify_all()
