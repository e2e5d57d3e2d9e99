"""How complete studies are processed: in the node's own thread, or by Celery workers on other machines.

Modes (``jobs.mode`` in the settings)
-------------------------------------
- ``in-process`` (default, what ``make run`` starts): :class:`~fairnode.jobs.in_process.JobRunner` takes
  ``ready`` studies from the spool, runs :func:`fairnode.pipeline.process_study` and enqueues the results
  for the forwarder.
- ``celery``: receivers (:class:`~fairnode.jobs.dispatch.Dispatcher`) turn each complete study into one
  Celery task per model on that model's queue (:mod:`fairnode.jobs.tasks`); workers
  (``fairnode worker --queues ...``) run the pipeline on the shared storage
  (:mod:`fairnode.jobs.storage`) and record the outcome in the registry's ``job`` table
  (:mod:`fairnode.jobs.store`), from where the receiver that enqueued the study forwards the results
  with its persisted, retried deliveries.

Modules: :mod:`~fairnode.jobs.settings`, :mod:`~fairnode.jobs.routing` (results to destinations, both
modes), :mod:`~fairnode.jobs.celery_app`, :mod:`~fairnode.jobs.worker` (the worker process and its
heartbeat), :mod:`~fairnode.jobs.observe` (Prometheus metrics and health of a process).
"""
