"""A front end's shared-memory arena: fixed-size slots for items going to the accelerator
process and the rows coming back.

The front end owns it: it creates the segment, hands out slots, copies a decoded image into a
slot and frees the slot when the engine answers (the row is in the same slot by then). The
engine attaches to it by name and only reads items and writes rows. An item or row larger than
a slot, or any item while every slot is taken, travels inline in the message instead.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import os
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import SharedMemory

import numpy as np

from . import segments

log = logging.getLogger(__name__)


# Where each slot starts: a multiple of this from the segment's start, which is page-aligned.
LINE = 64

# Segments this process created (the tests run both ends in one process).
_CREATED: set[str] = set()


class Arena:
    """``slots`` slots of ``slot_bytes`` in one segment. Each slot starts on a 64-byte line
    (``LINE``), so that the model can read an item in its slot in place
    (``ModelRunner.assemble``).

    Args:
        slots: how many items may be in flight through slots at once.
        slot_bytes: the largest item or row a slot holds.
        name: attach to this existing segment (the engine) instead of creating one; a
            ``ValueError`` when ``slots`` x ``slot_bytes`` do not fit it.
    """

    def __init__(self, slots: int, slot_bytes: int, name: str | None = None):
        self.slots = slots
        self.slot_bytes = slot_bytes
        self.stride = -(-slot_bytes // LINE) * LINE  # both ends compute it alike
        self._layouts: dict[tuple[tuple[int, ...], str], tuple[np.dtype, int]] = {}
        self.owner = name is None
        size = max(1, slots * self.stride)
        if self.owner:
            self.shm = segments.create(size)
            _reserve(self.shm, size)
            _CREATED.add(self.shm.name)
        else:
            if slots <= 0 or slot_bytes <= 0:
                raise ValueError(f"an arena of {slots} slots of {slot_bytes} bytes")
            self.shm = SharedMemory(name=name)
            # Attaching registers the segment with this process's resource tracker, which
            # would unlink it when this process exits: the owner's tracker does that (unless
            # the owner is this process, whose registration this one shares).
            if name not in _CREATED:
                with contextlib.suppress(Exception):
                    resource_tracker.unregister(self.shm._name, "shared_memory")  # type: ignore[attr-defined]
            if size > self.shm.size:  # the peer's word against the segment's real size
                self.shm.close()
                raise ValueError(
                    f"{slots} slots of {slot_bytes} bytes do not fit segment {name} "
                    f"of {self.shm.size} bytes"
                )
        self.name = self.shm.name
        # Only the owner hands out slots: the attaching side would build a list as long as
        # the peer says.
        self._free: collections.deque[int] = collections.deque(range(slots) if self.owner else ())

    @classmethod
    def create(cls, slots: int, slot_bytes: int) -> Arena | None:
        """A new arena, or None where ``/dev/shm`` has no room (every item goes inline)."""
        try:
            return cls(slots, slot_bytes)
        except OSError as exc:
            log.warning(
                "no shared memory for %d x %d bytes (%s): items go inline", slots, slot_bytes, exc
            )
            return None

    # -- the owner: slots ------------------------------------------------------------------

    def take(self) -> int:
        """A free slot, or -1 when all are taken."""
        return self._free.popleft() if self._free else -1

    def give(self, slot: int) -> None:
        self._free.append(slot)

    @property
    def free(self) -> int:
        return len(self._free)

    # -- both ends: contents ---------------------------------------------------------------

    def view(self, slot: int, shape: tuple[int, ...], dtype: str) -> np.ndarray:
        """The slot's contents as an array (no copy: valid while the slot is held).

        The array holds an export of the segment's buffer, so :meth:`close` fails while it
        lives. (``np.ndarray(buffer=...)`` holds none with NumPy 2: the segment would be
        unmapped under it, and reading it would crash the process.)"""
        buf = self.shm.buf
        assert buf is not None
        layout = self._layouts.get((shape, dtype))
        if layout is None:
            layout = self._layout(shape, dtype)
        if not 0 <= slot < self.slots:
            raise ValueError(f"no slot {slot} in an arena of {self.slots} slots")
        flat = np.frombuffer(buf, dtype=layout[0], count=layout[1], offset=slot * self.stride)
        return flat.reshape(shape)

    def _layout(self, shape: tuple[int, ...], dtype: str) -> tuple[np.dtype, int]:
        """An item's type and element count, checked to fit a slot (kept: items repeat)."""
        dt = np.dtype(dtype)
        count = math.prod(shape)
        if min(shape, default=0) < 0 or not 0 <= count * dt.itemsize <= self.slot_bytes:
            raise ValueError(
                f"{list(shape)} {dt.str} does not fit a slot of {self.slot_bytes} bytes"
            )
        if len(self._layouts) < 64:  # a few per pipeline; a misbehaving peer cannot grow it
            self._layouts[(shape, dtype)] = (dt, count)
        return dt, count

    def fits(self, array: np.ndarray) -> bool:
        return array.nbytes <= self.slot_bytes

    def write(self, slot: int, array: np.ndarray) -> None:
        self.view(slot, array.shape, array.dtype.str)[...] = array

    def write_rows(self, slots: list[int], rows: np.ndarray) -> None:
        """``rows[i]`` into slot ``slots[i]``, for all of them in one vectorised copy."""
        buf = self.shm.buf
        assert buf is not None
        width = rows[0].nbytes
        every = np.ndarray(
            (self.slots, width), dtype=np.uint8, buffer=buf, strides=(self.stride, 1)
        )
        every[slots] = np.ascontiguousarray(rows).view(np.uint8).reshape(len(rows), width)

    def close(self) -> bool:
        """Unmap (and, for the owner, remove) the segment; False while views are still alive."""
        try:
            self.shm.close()
        except BufferError:
            return False
        if self.owner:
            _CREATED.discard(self.name)
            with contextlib.suppress(FileNotFoundError):
                self.shm.unlink()
        return True


def _reserve(shm: SharedMemory, size: int) -> None:
    """Reserve the pages now, so a full ``/dev/shm`` is an error here, not a SIGBUS later."""
    fd = getattr(shm, "_fd", -1)
    if fd < 0 or not hasattr(os, "posix_fallocate"):
        return
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError:
        shm.close()
        shm.unlink()
        raise
