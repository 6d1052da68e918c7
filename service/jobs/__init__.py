"""Asynchronous jobs: the response manager and its stores (docs/JOBS.md).

``POST /v1/jobs`` validates and stores a job, answers 202 at once; a :class:`~.manager.
ResponseManager` on every replica takes jobs from the store, runs them through their pipeline,
saves the result and POSTs it to the job's callback. Stores: ``memory.py`` (one replica) and
``redis_store.py`` (a Redis Stream with a consumer group, shared by the replicas).
"""
