"""The Dramatiq peer: one no-op actor on a durable queue of the same RabbitMQ (Dramatiq's
defaults: persistent messages, acked after the actor ran, default middleware), for
``dramatiq tests.bench.dramatiq_app``; its queue comes from ``JOBQBENCH_DRAMATIQ_QUEUE``.
Finished messages are counted for the bench to see the drain (``counts``). Publisher
confirms are the publisher's choice: the workers publish nothing."""

from __future__ import annotations

import os
from typing import Any

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from tests.bench.counts import FinishedCounter

ACTOR = "jobqbench_noop"


class CountFinished(dramatiq.Middleware):
    def __init__(self) -> None:
        self.counter = FinishedCounter()

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.MessageProxy,
        *,
        result: Any | None = None,
        exception: BaseException | None = None,
    ) -> None:
        self.counter.bump()


def noop() -> None:
    """Does nothing, like jobq's built-in ``noop``."""


def message(queue: str) -> dramatiq.Message[Any]:
    """A message for the actor on ``queue``, as ``noop.send()`` would build it."""
    return dramatiq.Message(queue_name=queue, actor_name=ACTOR, args=(), kwargs={}, options={})


if os.environ.get("JOBQBENCH_DRAMATIQ_QUEUE"):  # a worker (the bench only builds messages)
    broker = RabbitmqBroker(url=os.environ["JOBQBENCH_AMQP_URL"])
    broker.add_middleware(CountFinished())
    dramatiq.set_broker(broker)
    dramatiq.actor(actor_name=ACTOR, queue_name=os.environ["JOBQBENCH_DRAMATIQ_QUEUE"])(noop)
