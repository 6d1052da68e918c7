"""Where the decode stage runs: threads of the process that received the request.

Every front-end process decodes the images of its own requests: the front ends scale with the
node's cores, so decoding does too, and the pixels go to the accelerator process once, already
at the model's input size. Pillow releases the GIL while it decodes and resizes, so a thread
keeps the event loop answering other connections meanwhile. The threads run at a lower CPU
priority (``SERVE_PREPROCESS_NICE``): on a CPU node they yield to the model's threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor

from .decode import PreprocessConfig, Preprocessed, decode

log = logging.getLogger(__name__)

# One thread per front-end process: the front ends are the parallelism (one per core). Measured
# (docs/BENCHMARKS.md): decoding in one thread beat decoding inline on the event loop, which
# then cannot read or answer meanwhile, and beat two threads, which contend for the GIL.
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
    """Decodes images in ``threads`` threads of this process.

    Args:
        threads: decode threads (at least 1).
        niceness: added to the threads' CPU niceness (0: same priority as the event loop).
    """

    def __init__(self, threads: int = THREADS, niceness: int = 0):
        if threads < 1:
            raise ValueError("a decoder needs at least one thread")
        self.threads = threads
        self._executor = ThreadPoolExecutor(
            threads,
            thread_name_prefix="decode",
            initializer=_lower_priority,
            initargs=(niceness,),
        )

    async def decode(self, data: bytes, cfg: PreprocessConfig) -> Preprocessed:
        """One image; raises ``ImageError`` (a 400) when it is not a usable image."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, decode, data, cfg)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
