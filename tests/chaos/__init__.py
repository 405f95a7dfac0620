"""The fault-injection suite: real api, worker and scheduler processes against the real
PostgreSQL and RabbitMQ, a load client, faults, and a checker of the guarantees (docs/design.md §3).

Modules: ``handlers`` (the job the workers run, loaded with ``JOBQ_HANDLERS``), ``cluster``
(the processes), ``faults`` (what breaks RabbitMQ and PostgreSQL, always restored),
``workload`` (the load client), ``checker`` (the invariants), ``soak`` (``make soak``).
"""
