"""The pipeline measures a decoded request's buffers once and derives both sizes from it: what
admission charges (``DecodedRequest.nbytes``) and what the fan-out's inboxes count
(``CommittedBatch.nbytes``). Both must stay what the two would measure on their own."""

from __future__ import annotations

import random

import pytest

from bench.ingest import SIGNALS
from opstrata.consumers import CommittedBatch
from opstrata.ingest import decoded_sizes
from opstrata.otlp.decoder import Encoding, decode_request
from opstrata.otlp.limits import DecodeLimits
from opstrata.schema import Signal

_SIGNALS = {"spans": Signal.SPANS, "logs": Signal.LOG_RECORDS, "metrics": Signal.METRIC_POINTS}


@pytest.mark.parametrize("name", sorted(_SIGNALS))
def test_one_pass_gives_both_sizes(name: str) -> None:
    limits = DecodeLimits(max_attributes=128, max_value_chars=16384, max_depth=16)
    rnd = random.Random(name)
    for seq in range(10):
        decoded = decode_request(_SIGNALS[name], SIGNALS[name].make(rnd), Encoding.PROTOBUF, limits)
        assert decoded.batches
        held, buffers = decoded_sizes(decoded)
        assert held == decoded.nbytes
        # The decoder's count is what the batches' buffers hold, as pyarrow counts them; the
        # fan-out is handed it (its own measure, for batches that come without one, counts
        # only the bytes a batch refers to: a slice of a commit's table shares the rest).
        assert buffers == sum(batch.get_total_buffer_size() for _, batch in decoded.batches)
        assert CommittedBatch.of(seq, decoded.batches, buffers).nbytes == buffers
        assert 0 < CommittedBatch.of(seq, decoded.batches).nbytes <= buffers
        assert held > buffers  # the fixed cost per buffer is counted
