"""Registers ``[plugins.bench_noop] consumers = N`` consumers that touch each batch and return."""

from __future__ import annotations

from typing import Any

from opstrata import CommittedBatch, Consumer, ConsumerContext, hookimpl

_count = 0


class NoopConsumer(Consumer):
    def __init__(self, index: int) -> None:
        self.name = f"noop{index}"  # type: ignore[misc]

    def consume(self, batch: CommittedBatch, ctx: ConsumerContext) -> None:
        # Touch the data the way a real consumer would start: read the row count.
        _ = batch.rows


@hookimpl
def opstrata_configure(config: dict[str, Any], settings: Any) -> None:
    global _count
    _count = int(config.get("consumers", 0))


@hookimpl
def opstrata_register_consumers(register: Any) -> None:
    for index in range(_count):
        register(NoopConsumer(index))
