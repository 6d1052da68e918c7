"""The front ends' heartbeats file: one process beats, another reads the age."""

import multiprocessing
import time

from service.server import heartbeats


def _beat(path, index):  # type: ignore[no-untyped-def]
    heartbeats.Heartbeats(path).beat(index)


def test_a_beat_in_one_process_is_read_in_another_and_a_cleared_slot_has_no_age(tmp_path):
    path = tmp_path / "heartbeats"
    heartbeats.create(path, 3)
    beats = heartbeats.Heartbeats(path)
    assert [beats.age(i) for i in range(3)] == [None, None, None]
    child = multiprocessing.get_context("spawn").Process(target=_beat, args=(path, 1))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    time.sleep(0.2)
    age = beats.age(1)
    assert age is not None and 0.2 <= age < 30
    assert beats.age(0) is None and beats.age(2) is None
    beats.clear(1)
    assert beats.age(1) is None
