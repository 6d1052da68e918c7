"""Where the decode stage runs: in the process that received the request, on its event loop or
in its decode thread.

Every front-end process decodes the images of its own requests: the front ends scale with the
node's cores, so decoding does too, and the pixels go to the accelerator process once, already
at the model's input size.

* Images of at most ``SERVE_DECODE_INLINE_PIXELS`` decode on the event loop itself. With a
  front end per core (the default) the loop's core is the one the decode would run on anyway,
  and the hand-off to a thread and back, and the two threads' contention for the GIL, cost more
  than the loop's pause: with a front end per core, ~190-280 µs less front-end CPU per
  640x480 JPEG and 9-13 % more images/s (docs/BENCHMARKS.md).
* Larger images go to the decode thread, so that one large image does not hold the loop's
  other connections. Pillow releases the GIL while it decodes and resizes, so the loop goes on
  answering meanwhile. The thread runs at a lower CPU priority (``SERVE_PREPROCESS_NICE``): on
  a CPU node it yields to the model's threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor

from .decode import PreprocessConfig, Preprocessed, TooLargeForInline, decode

log = logging.getLogger(__name__)

# One decode thread per front-end process, for the images too large for the loop: the front
# ends are the parallelism (one per core), and two threads only contended for the GIL
# (docs/ARCHITECTURE.md, "Decode in the front ends").
THREADS = 1


def _lower_priority(niceness: int) -> None:
    """Linux: a thread has its own nice value (``setpriority`` on its thread id)."""
    if niceness <= 0:
        return
    with contextlib.suppress(OSError, AttributeError):
        tid = threading.get_native_id()
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, current + niceness))


class Decoder:
    """Decodes images on the event loop up to ``inline_pixels``, larger ones in ``threads``
    threads of this process.

    Args:
        threads: decode threads (at least 1).
        niceness: added to the threads' CPU niceness (0: same priority as the event loop).
        inline_pixels: the largest image decoded on the event loop (0: none).
    """

    def __init__(self, threads: int = THREADS, niceness: int = 0, inline_pixels: int = 0):
        if threads < 1:
            raise ValueError("a decoder needs at least one thread")
        self.threads = threads
        self.inline_pixels = inline_pixels
        self._executor = ThreadPoolExecutor(
            threads,
            thread_name_prefix="decode",
            initializer=_lower_priority,
            initargs=(niceness,),
        )

    async def decode(self, data: bytes, cfg: PreprocessConfig) -> Preprocessed:
        """One image; raises ``ImageError`` (a 400) when it is not a usable image."""
        if self.inline_pixels > 0:
            try:
                return decode(data, cfg, at_most=self.inline_pixels)
            except TooLargeForInline:
                pass  # its header said so: nothing was decoded yet
        return await asyncio.get_running_loop().run_in_executor(self._executor, decode, data, cfg)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
