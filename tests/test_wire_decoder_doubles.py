"""Double attribute values rendered in C (``otlp/_wire_double.c``) are ``repr``, byte for byte.

The C decoder stores a double attribute as ``anyvalue._float_text`` does: NaN/+Inf/-Inf, integral
values under 1e16 as integers, everything else as ``repr(x)``. The last part no longer calls
Python, so it is held to ``repr`` here over many doubles sent through the decoder in real
requests: random bit patterns, subnormals, powers of two and ten and their neighbours, short
decimals, large integers, ±0, inf and nan. The power-of-ten table in the C source is checked
against exact integer arithmetic.
"""

from __future__ import annotations

import math
import random
import re
import struct
from pathlib import Path

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from opstrata.otlp.anyvalue import AttributeRenderer
from opstrata.otlp.decode_logs import decode_log_bytes
from opstrata.otlp.decode_traces import decode_trace_bytes
from opstrata.otlp.limits import DecodeLimits

SOURCE = Path(__file__).resolve().parent.parent / "otlp" / "_wire_double.c"
PER_SPAN = 100  # under DecodeLimits().max_attributes, so none is dropped


def _from_bits(bits: int) -> float:
    return struct.unpack("<d", struct.pack("<Q", bits))[0]


def _bits(x: float) -> int:
    return struct.unpack("<Q", struct.pack("<d", x))[0]


def _expected(x: float) -> str:
    """``anyvalue._float_text``, spelled out so that a change there cannot hide one here."""
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    if x == int(x) and abs(x) < 1e16:
        return str(int(x))
    return repr(x)


def _doubles() -> list[float]:
    rnd = random.Random(20261126)
    out: list[float] = [0.0, -0.0, math.inf, -math.inf, math.nan, 1e16, -1e16, 1e-7, 5e-324]
    out += [2.2250738585072014e-308, 2.225073858507201e-308, 1.7976931348623157e308]
    out += [0.1, 0.2, 0.3, 1 / 3, 2 / 3, 0.1 + 0.2, 123456.789, 9007199254740993.0]
    out += [1e22, 1e23, 5e-310, 4.9406564584124654e-324, 0.0001, 0.00001, 1e15 + 0.5]
    for e in range(1, 2047):  # every binade: the power of two and its neighbours
        base = e << 52
        out += [_from_bits(base + d) for d in (-1, 0, 1) if 0 < base + d < 0x7FF0000000000000]
    for e in range(-325, 309):  # powers of ten and short decimals at every scale
        x = float(f"1e{e}")
        out += [x, _from_bits(_bits(x) + 1), _from_bits(max(_bits(x) - 1, 0))]
        out += [float(f"{rnd.randint(1, 99_999)}e{e}") for _ in range(3)]
    out += [_from_bits(rnd.getrandbits(52)) for _ in range(2000)]  # subnormals
    out += [2.0 ** rnd.randint(53, 1000) * rnd.random() for _ in range(2000)]  # big, integral
    out += [rnd.random() for _ in range(3000)]  # what instruments report: 17 digits
    out += [round(rnd.uniform(-1e4, 1e4), rnd.randint(1, 6)) for _ in range(3000)]
    while len(out) < 40_000:  # random bit patterns, finite or not
        out.append(_from_bits(rnd.getrandbits(64)))
    return [-x for x in out[:20_000]] + out


def _spans_request(values: list[float]) -> bytes:
    request = ExportTraceServiceRequest()
    spans = request.resource_spans.add().scope_spans.add().spans
    for i in range(0, len(values), PER_SPAN):
        span = spans.add(trace_id=bytes(range(16)), span_id=(i + 1).to_bytes(8, "big"), name="s")
        span.attributes.extend(
            KeyValue(key=f"d{j}", value=AnyValue(double_value=x))
            for j, x in enumerate(values[i : i + PER_SPAN])
        )
    return request.SerializeToString()


def test_double_attributes_are_python_repr() -> None:
    values = _doubles()
    batch = decode_trace_bytes(_spans_request(values), AttributeRenderer(DecodeLimits()))
    table = batch.batches[0][1]
    got = [v for row in table.column("SpanAttributes").to_pylist() for _, v in row]
    assert len(got) == len(values)
    wrong = [(x, want, g) for x, g in zip(values, got, strict=True) if g != (want := _expected(x))]
    assert wrong == [], wrong[:10]
    # The branch under test did run: most of these are neither integral nor special.
    assert sum(1 for g in got if "." in g or "e" in g) > 30_000


def test_double_log_bodies_are_python_repr() -> None:
    values = [0.1, -2.5e-8, 1e16, 3.141592653589793, 6.02214076e23, 5e-324, -0.0, math.nan]
    request = ExportLogsServiceRequest()
    records = request.resource_logs.add().scope_logs.add().log_records
    for i, x in enumerate(values):
        records.add(time_unix_nano=1_700_000_000_000_000_000 + i, body=AnyValue(double_value=x))
    out = decode_log_bytes(request.SerializeToString(), AttributeRenderer(DecodeLimits()))
    bodies = out.batches[0][1].column("Body").to_pylist()
    assert bodies == [_expected(x) for x in values]


def test_power_of_ten_table_is_exact() -> None:
    """Each entry is floor(10^e / 2^r) + 1 with r = floor(log2 10^e) - 127, for e in -292..324."""
    text = SOURCE.read_text()
    rows = re.findall(r"\{0x([0-9A-F]{16})u, 0x([0-9A-F]{16})u\}, /\* (-?\d+) \*/", text)
    assert [int(e) for _, _, e in rows] == list(range(-292, 325))
    for hi, lo, e_text in rows:
        e = int(e_text)
        if e >= 0:
            n = 10**e
            r = n.bit_length() - 1 - 127
            floor_beta = n >> r if r >= 0 else n << -r
        else:
            d = 10**-e
            r = -d.bit_length() - 127
            floor_beta = (1 << -r) // d
        assert int(hi + lo, 16) == floor_beta + 1, e
