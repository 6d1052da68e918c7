"""``python -m service`` / ``resnet-serve``: run the service under uvicorn.

Top-level imports stay light: spawned preprocessing workers import ``__main__`` again.
"""

from __future__ import annotations


def main() -> None:
    import logging
    import os
    import signal

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ INFO lines drown ours

    import uvicorn

    from .app import create_app
    from .http_protocol import JsonErrorH11Protocol
    from .logs import configure_logging
    from .settings import Settings

    settings = Settings()
    configure_logging(settings.log_level, settings.log_format, settings.log_tracebacks)
    app = create_app(settings)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame) -> None:  # type: ignore[no-untyped-def]
            # Readiness turns false at once; uvicorn then stops accepting connections and
            # waits up to SERVE_GRACEFUL_TIMEOUT_S for in-flight requests.
            # Unlike uvicorn's own handler, the signal is not re-raised after shutdown: a drained
            # SIGTERM is a clean exit (status 0). A second SIGINT forces the exit.
            logging.getLogger("service").warning("signal %d: draining", sig)
            app.state.engine.drain()
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            else:
                self.should_exit = True

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        # Longer than the idle timeout of the proxies in front (commonly 60 s), so the server
        # never closes a connection just as a proxy reuses it (docs/RELIABILITY.md).
        timeout_keep_alive=int(settings.keepalive_timeout_s),
        # h11 bounds the request head (httptools does not); malformed requests get JSON errors.
        http=JsonErrorH11Protocol,
        h11_max_incomplete_event_size=settings.max_header_bytes,
        timeout_graceful_shutdown=int(settings.graceful_timeout_s),
        lifespan="on",
    )
    Server(config).run()


if __name__ == "__main__":
    main()
