"""The C decoders parse without the GIL: several threads decoding at once get what one does.

Each decoder gives up the GIL for its parse (bytes input of at least ``GIL_MIN_INPUT`` bytes)
and takes it back for anything that needs Python: an error, the ``render_complex`` callback for
array/map/strindex values (the parse keeps it from there), the capsules at the end. Here threads
decode a mix of requests of every signal at once, over and over: generated ones (some with array
and map values, so the callback takes the GIL part way through the parse), malformed ones that
raise part way through the parse (after such a callback, or without one), and ones whose
callback itself raises. Each result must equal the
single-threaded decode of the same bytes, down to the Arrow batches' bytes and the llmops row
marks (the schema's metadata).
"""

from __future__ import annotations

import random
import threading

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue

from opstrata.otlp import _wire
from opstrata.otlp.anyvalue import AttributeRenderer
from opstrata.otlp.decode_logs import decode_log_bytes
from opstrata.otlp.decode_metrics import decode_metric_bytes
from opstrata.otlp.decode_traces import complex_renderer, decode_trace_bytes
from opstrata.otlp.decoded import DecodedRequest, InvalidRequest
from opstrata.otlp.limits import DecodeLimits
from tests.test_wire_decoder import random_request as random_traces
from tests.test_wire_decoder_logs import random_request as random_logs
from tests.test_wire_decoder_metrics import random_request as random_metrics

THREADS = 4
ROUNDS = 6
# Well past the size under which a decoder keeps the GIL (GIL_MIN_INPUT in _wire.c).
MIN_SIZE = 16 * 1024

_LIMITS = DecodeLimits()
_ATTRS = AttributeRenderer(_LIMITS)
_DECODERS = {"spans": decode_trace_bytes, "logs": decode_log_bytes, "metrics": decode_metric_bytes}
_WIRE = {"spans": _wire.decode_traces, "logs": _wire.decode_logs, "metrics": _wire.decode_metrics}


def _large(signal: str, seed: int) -> bytes:
    """Generated requests merged until the bytes pass MIN_SIZE."""
    rnd = random.Random(seed)
    make, request = {
        "spans": (random_traces, ExportTraceServiceRequest()),
        "logs": (random_logs, ExportLogsServiceRequest()),
        "metrics": (random_metrics, ExportMetricsServiceRequest()),
    }[signal]
    while request.ByteSize() < MIN_SIZE:
        request.MergeFrom(make(rnd))
    return request.SerializeToString()


def _array_attribute() -> KeyValue:
    """A KeyValue with an array value: rendered by the Python callback."""
    values = [AnyValue(string_value="a"), AnyValue(int_value=7)]
    return KeyValue(key="list", value=AnyValue(array_value=ArrayValue(values=values)))


def _with_complex_first(signal: str, seed: int) -> bytes:
    """A large request whose first resource carries an array attribute, so the callback takes
    the GIL early in the parse and the rest of it runs holding it."""
    request = {
        "spans": ExportTraceServiceRequest,
        "logs": ExportLogsServiceRequest,
        "metrics": ExportMetricsServiceRequest,
    }[signal].FromString(_large(signal, seed))
    first = getattr(request, f"resource_{signal}")[0]
    first.resource.attributes.append(_array_attribute())
    return request.SerializeToString()


def _requests() -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    for signal in _DECODERS:
        for seed in range(3):
            out.append((signal, _large(signal, seed)))
        complex_first = _with_complex_first(signal, 10)
        out.append((signal, complex_first))
        # Cut short: the parse fails past the callback, far into the request.
        out.append((signal, complex_first[: len(complex_first) - 3]))
        # Invalid UTF-8 in a string near the end.
        broken = bytearray(complex_first)
        at = broken.rfind(b"leaf") if b"leaf" in broken else -1
        if at < 0:
            at = len(broken) - 1
            while at > 0 and not (0x61 <= broken[at] <= 0x7A):
                at -= 1
        broken[at] = 0xFF
        out.append((signal, bytes(broken)))
    return out


def _summary(signal: str, data: bytes) -> object:
    """What a decode gives, in a form that compares by value (batches as Arrow batches)."""
    try:
        got: DecodedRequest = _DECODERS[signal](data, _ATTRS)
    except InvalidRequest as exc:
        return ("raised", str(exc))
    batches = []
    for table, batch in got.batches:
        batch.validate(full=True)
        # By their bytes in Arrow's IPC form: equals() finds NaN values unequal to themselves.
        batches.append((table, batch.schema, batch.serialize().to_pybytes()))
    return (
        got.accepted,
        got.rejected,
        got.message,
        got.dropped_attributes,
        got.truncated_values,
        got.buffer_bytes,
        getattr(got.batches, "event_time", None),
        batches,
    )


def _same(a: object, b: object) -> bool:
    if isinstance(a, tuple) and a and a[0] == "raised":
        return a == b
    if not (isinstance(b, tuple) and len(a) == len(b)):  # type: ignore[arg-type]
        return False
    *head_a, batches_a = a  # type: ignore[misc]
    *head_b, batches_b = b  # type: ignore[misc]
    if head_a != head_b or len(batches_a) != len(batches_b):
        return False
    return all(
        ta == tb and sa.equals(sb, check_metadata=True) and ba == bb
        for (ta, sa, ba), (tb, sb, bb) in zip(batches_a, batches_b, strict=True)
    )


def _in_threads(work: list[object], run: object) -> list[list[tuple[int, object]]]:
    """Runs ``run(item)`` for every item of ``work`` in each of THREADS threads (each its own
    shuffled order, ROUNDS times), all released at once; returns what each thread got."""
    start = threading.Barrier(THREADS)
    results: list[list[tuple[int, object]]] = [[] for _ in range(THREADS)]
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        rnd = random.Random(n)
        order = [i for _ in range(ROUNDS) for i in range(len(work))]
        rnd.shuffle(order)
        try:
            start.wait()
            for i in order:
                results[n].append((i, run(work[i])))  # type: ignore[operator]
        except BaseException as exc:  # reported by the test below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


def test_threads_decode_like_one() -> None:
    requests = _requests()
    assert all(len(data) >= MIN_SIZE - 64 for _, data in requests)
    want = [_summary(signal, data) for signal, data in requests]
    # The set covers what it should: results with rows, array values through the callback,
    # and requests that raise.
    raised = [w for w in want if w[0] == "raised"]
    assert len(raised) >= len(_DECODERS)
    assert sum(1 for w in want if w[0] != "raised" and w[-1]) >= 3 * len(_DECODERS)
    results = _in_threads(requests, lambda item: _summary(*item))
    for per_thread in results:
        assert len(per_thread) == ROUNDS * len(requests)
        for i, got in per_thread:
            assert _same(got, want[i]), (requests[i][0], i)


def test_a_raising_callback_in_threads() -> None:
    """The callback raises part way through a parse that runs without the GIL: the exception
    comes out of the decoder in every thread, and the process goes on."""

    class Refused(Exception):
        pass

    def refuse(raw: bytes) -> tuple[str, int]:
        raise Refused(len(raw))

    work = [(signal, _with_complex_first(signal, 20)) for signal in _WIRE]

    def run(item: tuple[str, bytes]) -> str:
        signal, data = item
        with pytest.raises(Refused):
            _WIRE[signal](data, 128, 1024, refuse)
        # ... and the same bytes decode after it, with a callback that works.
        result = _WIRE[signal](data, 128, 1024, complex_renderer(_LIMITS))
        return signal if result is not None else ""

    for per_thread in _in_threads(work, run):
        assert sorted({got for _, got in per_thread}) == sorted(_WIRE)


def test_mutable_input_keeps_the_gil_and_decodes_alike() -> None:
    """A bytearray (writable by another thread while the parse runs) is decoded holding the GIL;
    its result is the same as the bytes'."""
    for signal in _WIRE:
        data = _large(signal, 30)
        renderer = complex_renderer(_LIMITS)
        a = _WIRE[signal](data, 128, 1024, renderer)
        b = _WIRE[signal](bytearray(data), 128, 1024, renderer)
        assert (a[0], a[1], a[2]) == (b[0], b[1], b[2])
