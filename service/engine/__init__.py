"""The accelerator process: ``process.py`` is its entry point, ``server.py`` serves every front
end over the wire (``service/wire``); the pipelines (``registry.py``, ``pipeline.py``), their
stages after decode (``chain.py``, ``stages.py``), the dynamic batcher (``batcher.py``) and the
cpu stages' worker processes (``worker_pool.py``, ``worker.py``) run here, and the compiled
models (``service/model``). A front end imports none of it; the tests use the registry in
their own process as the in-process engine."""
