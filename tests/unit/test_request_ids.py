"""Request ids made for requests that bring none."""

import random
import re

from service.logs import new_request_id


def test_request_ids_are_distinct_hex_and_leave_the_global_generator_alone():
    # Keras seeds the module-level generator and draws its initialisers' seeds from it: ids
    # drawn from it while a model is built would change that model's weights.
    random.seed(5)
    expected = [random.random() for _ in range(3)]
    random.seed(5)
    ids = [new_request_id() for _ in range(1000)]
    assert [random.random() for _ in range(3)] == expected
    assert len(set(ids)) == 1000
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
