"""Asynchronous jobs: the job runner and its stores (docs/JOBS.md).

``POST /v1/jobs`` validates and stores a job, answers 202 at once; the :class:`~.runner.
JobRunner` of every front end takes jobs from the store, runs them through the dataplane, saves
the result and POSTs it to the job's callback (``callbacks.py``). Stores: ``memory.py`` (one
replica, held by the supervisor and reached over ``shared.py``'s socket) and ``redis_store.py``
(a Redis Stream with a consumer group, shared by the replicas).
"""
