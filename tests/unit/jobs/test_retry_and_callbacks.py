"""The retry helper, and callbacks delivered by it to a real HTTP receiver on loopback."""

import asyncio
from itertools import islice

import pytest

from service.jobs.callbacks import SIGNATURE_HEADER, deliver, verify
from service.jobs.retry import Backoff, retry
from tests.support.helpers import free_port

SECRET = "k"


def test_backoff_doubles_up_to_its_cap():
    assert list(islice(Backoff(0.5, max_s=3.0).delays(), 5)) == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert list(islice(Backoff(1.0, factor=3).delays(), 3)) == [1.0, 3.0, 9.0]


@pytest.mark.parametrize("bad", [{"first_s": -1}, {"first_s": 1, "factor": 0.5}])
def test_a_shrinking_or_negative_backoff_is_refused(bad):
    with pytest.raises(ValueError, match="backoff needs"):
        Backoff(**bad)


class Flaky:
    """Fails with ``errors`` in order, then answers its attempt number."""

    def __init__(self, *errors: Exception):
        self.errors = list(errors)
        self.attempts: list[int] = []

    async def __call__(self, attempt: int) -> int:
        self.attempts.append(attempt)
        if self.errors:
            raise self.errors.pop(0)
        return attempt


def run(call, tries=5, retryable=lambda exc: isinstance(exc, OSError), **kwargs):
    return asyncio.run(
        retry(call, tries=tries, backoff=Backoff(0.001), retryable=retryable, **kwargs)
    )


def test_retry_returns_the_first_success_and_reports_each_retry():
    seen = []
    call = Flaky(OSError("a"), OSError("b"))
    assert run(call, on_retry=lambda n, exc: seen.append((n, str(exc)))) == 3
    assert call.attempts == [1, 2, 3] and seen == [(1, "a"), (2, "b")]


def test_retry_raises_the_last_error_when_the_tries_run_out():
    call = Flaky(*(OSError(str(i)) for i in range(5)))
    with pytest.raises(OSError, match="2"):
        run(call, tries=3)
    assert call.attempts == [1, 2, 3]


def test_an_error_that_is_not_retryable_is_raised_at_once():
    call = Flaky(KeyError("final"), OSError("never reached"))
    with pytest.raises(KeyError):
        run(call)
    assert call.attempts == [1]


def test_retry_needs_at_least_one_try():
    with pytest.raises(ValueError, match="tries must be at least 1"):
        run(Flaky(), tries=0)


def send(url: str, attempts: int = 3, allowed=("127.0.0.1",)):
    return asyncio.run(
        deliver(
            url,
            b'{"id":"j1"}',
            secret=SECRET,
            job_id="j1",
            allowed_hosts=list(allowed),
            timeout_s=5,
            attempts=attempts,
            backoff_s=0.01,
        )
    )


def test_a_callback_is_signed_and_delivered(receiver):
    result = send(receiver.url)
    assert (result.delivered, result.attempts, result.status) == (True, 1, 200)
    (call,) = receiver.calls
    assert verify(call["body"], SECRET, call["headers"][SIGNATURE_HEADER])
    assert call["headers"]["X-Job-Id"] == "j1" and call["path"] == "/hook"


@pytest.mark.parametrize("status", [408, 503])
def test_timeouts_throttling_and_server_errors_are_retried(receiver, status):
    receiver.statuses = [status, status]
    result = send(receiver.url)
    assert (result.delivered, result.attempts) == (True, 3)
    assert [c["status"] for c in receiver.calls] == [status, status, 200]


@pytest.mark.parametrize("status", [400, 410])
def test_other_4xx_are_final(receiver, status):
    receiver.statuses = [status]
    result = send(receiver.url)
    assert (result.delivered, result.attempts, result.status) == (False, 1, status)
    assert result.last_error == f"HTTP {status}" and len(receiver.calls) == 1


def test_a_redirect_is_not_followed(receiver):
    receiver.statuses = [302, 302]
    result = send(receiver.url, attempts=2)
    assert (result.delivered, result.attempts, result.status) == (False, 2, 302)
    assert len(receiver.calls) == 2  # the receiver itself, twice; never the Location


def test_after_the_last_attempt_the_last_error_is_kept(receiver):
    receiver.statuses = [503] * 3
    result = send(receiver.url)
    assert (result.delivered, result.attempts, result.status) == (False, 3, 503)
    assert result.last_error == "HTTP 503"


def test_a_refused_connection_is_retried_then_reported():
    result = send(f"http://127.0.0.1:{free_port()}/hook", attempts=2)
    assert (result.delivered, result.attempts, result.status) == (False, 2, 0)
    assert result.last_error.startswith("ConnectError")


def test_a_host_no_longer_allowed_is_not_contacted(receiver):
    result = send(receiver.url, allowed=("example.org",))
    assert (result.delivered, result.attempts) == (False, 0)
    assert "not in SERVE_CALLBACK_ALLOWED_HOSTS" in result.last_error and not receiver.calls
