"""The model stage's executor: one trace, bucketed padding, outputs equal to the model's."""

import numpy as np
import pytest

from service.model.backends import make_runner
from service.model.normalize import normalize
from tests.support.tiny import tiny_loaded


@pytest.fixture(scope="module")
def runner():
    r = make_runner(tiny_loaded(), [1, 2, 4, 8])
    r.warmup()
    return r


def test_warmup_traces_once_and_no_batch_size_retraces(runner):
    assert runner.compilations == 1
    rng = np.random.default_rng(0)
    for n in (1, 3, 5, 7, 8, 2, 6):
        out, padded, _, _ = runner.run(rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8))
        assert out.shape == (n, 10)
        assert padded == runner.bucket_for(n) and padded >= n
    assert runner.compilations == 1


def test_buckets_pick_the_smallest_that_fits(runner):
    assert [runner.bucket_for(n) for n in (1, 2, 3, 4, 5, 8)] == [1, 2, 4, 4, 8, 8]
    with pytest.raises(ValueError):
        runner.bucket_for(9)


def test_outputs_equal_the_model_on_keras_preprocessed_input(runner):
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    out, _, _, _ = runner.run(list(pixels))
    expected = runner.loaded.model(normalize(pixels, "caffe"), training=False).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_padding_does_not_change_real_rows(runner):
    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    alone = np.concatenate([runner.run(pixels[i : i + 1])[0] for i in range(3)])
    together, padded, _, _ = runner.run(pixels)
    assert padded == 4
    np.testing.assert_allclose(together, alone, rtol=1e-4, atol=1e-4)


def test_sibling_instances_share_the_trace_and_run_at_the_same_time(runner):
    import threading

    siblings = [runner, runner.sibling(), runner.sibling()]
    rng = np.random.default_rng(2)
    batches = [rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8) for n in (3, 5, 8)]
    expected = [runner.run(b)[0] for b in batches]
    outputs: list = [None] * 3
    start = threading.Barrier(3)

    def work(i: int) -> None:
        start.wait()
        for _ in range(20):  # concurrently, each into its own buffers
            outputs[i] = siblings[i].run(batches[i])[0]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for out, want in zip(outputs, expected, strict=True):
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    assert runner.compilations == 1  # one compiled function for all of them
    assert siblings[1]._buffers is not runner._buffers


def test_tensorflow_calls_the_inference_function_flat_with_the_public_calls_outputs(runner):
    if runner.backend != "tensorflow":
        pytest.skip("TensorFlow's call path")
    from service.model.backends.tensorflow import _flat_call

    assert runner._flat is not runner._concrete  # the flat call is in use
    rng = np.random.default_rng(3)
    for n in (1, 3, 8):
        batch = runner.assemble(rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8)).batch
        np.testing.assert_array_equal(runner._flat(batch).numpy(), runner._concrete(batch).numpy())

    class Opaque:  # a concrete function without the private parts: the public call is kept
        captured_inputs = ()

        def __call__(self, x):
            return x

    opaque = Opaque()
    assert _flat_call(opaque) is opaque


def test_a_lone_item_laid_out_as_the_model_reads_it_is_read_in_place(runner):
    """A batch of one view that has the input's shape and type, contiguous and 64-byte aligned
    (an item in the front end's shared-memory slot) goes to the model without a copy: what is
    in the slot when the batch runs is what the model reads. Any other item is copied when the
    batch is assembled."""
    from service.model.runner import aligned_zeros

    rng = np.random.default_rng(3)
    before, after = rng.integers(0, 255, (2, 1, 32, 32, 3), dtype=np.uint8)
    expected = {
        "before": runner.run(before)[0],
        "after": runner.run(after)[0],
    }
    assert not np.allclose(expected["before"], expected["after"])

    def read_after_assembly(item: np.ndarray) -> np.ndarray:
        item[...] = before[0]
        prepared = runner.assemble([item])
        item[...] = after[0]
        return runner.execute(prepared)[0]

    slot = aligned_zeros((2, 32, 32, 3), np.dtype(np.uint8))
    np.testing.assert_allclose(read_after_assembly(slot[0]), expected["after"], atol=1e-5)
    # Misaligned by one byte: copied at assembly.
    raw = aligned_zeros((32 * 32 * 3 + 1,), np.dtype(np.uint8))
    misaligned = raw[1:].reshape(32, 32, 3)
    np.testing.assert_allclose(read_after_assembly(misaligned), expected["before"], atol=1e-5)
    # Not contiguous: copied.
    strided = aligned_zeros((32, 64, 3), np.dtype(np.uint8))[:, ::2]
    np.testing.assert_allclose(read_after_assembly(strided), expected["before"], atol=1e-5)
    # Read-only (as an item that came inline in its message): copied, and it runs.
    frozen = aligned_zeros((32, 32, 3), np.dtype(np.uint8))
    frozen[...] = before[0]
    frozen.flags.writeable = False
    np.testing.assert_allclose(runner.run([frozen])[0], expected["before"], atol=1e-5)


def test_an_item_of_another_shape_is_refused_not_broadcast(runner):
    """Items are copied row by row into the batch's buffer; a row of the wrong shape (one
    that a plain assignment would broadcast into the row) fails the batch."""
    good = np.zeros((32, 32, 3), np.uint8)
    for bad in (np.zeros((32, 3), np.uint8), np.zeros((1, 32, 32, 3), np.uint8)):
        with pytest.raises(ValueError, match="shape"):
            runner.assemble([good, bad])
    out, padded, _, _ = runner.run([good, good, good])
    assert out.shape == (3, 10) and padded == 4
