"""What every process does once it is set up: the loaded objects leave the collector."""

import gc
import weakref

from service.lifetime import settle_garbage_collector


def test_what_lives_after_loading_leaves_the_collectors_sight_and_new_cycles_are_still_freed():
    class Node:
        pass

    loaded = Node()
    loaded.self = loaded  # a cycle alive at load time: frozen, never walked again
    try:
        settle_garbage_collector()
        assert gc.get_freeze_count() > 0
        assert not any(o is loaded for o in gc.get_objects())  # out of every generation
        garbage = Node()
        garbage.self = garbage  # a cycle made while serving: still collected
        dead = weakref.ref(garbage)
        del garbage
        gc.collect()
        assert dead() is None
    finally:
        gc.unfreeze()
