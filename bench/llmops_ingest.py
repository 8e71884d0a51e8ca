"""What LLMOps adds to span ingest: recognition, pricing, storing the calls and alerting, per
span, next to what ingest itself costs for the same spans (decode + durable group commit).

    python bench/llmops_ingest.py [--requests 200] [--repeat 3] [--share 0 0.1 1]

For each share of LLM spans (0: ordinary spans only, which the plugin has to look at and drop;
1: every span an LLM call, the worst case) it pre-encodes --requests OTLP requests of 100 spans,
then, on one thread and one at a time: decodes them with the server's decoder and commits them
to a fresh DuckDB store in groups of 10 requests (ingest), and runs the plugin's consumer over
the committed batches (LLMOps; "consumer thread" is the CPU of the thread that calls
``consume``: the plugin only keeps batches there and looks at them in groups, mostly on its
writer's timer thread, so nearly all of the cost is in the process figure). Prints CPU µs per
span of each (process CPU time, all threads: on a shared machine wall time mostly measures
waiting for a core), and the ratio; medians of --repeat.
Event time advances at --event-rate spans/s (20,000: the traffic the run stands for; alert
buckets close per minute of event time, so a slower event rate charges a run more bucket
closings per span than a server would pay). LLM spans look like openai-v2 / Traceloop ones:
14 GenAI attributes with input and output messages (masked by the default settings), 5 %
failing. ``--share -1`` sends ordinary log records instead (no GenAI key or event, 4
attributes each): the logs path's cost for what it drops (ingest is then the logs decoder and
commit).

    python bench/llmops_ingest.py --baseline /tmp/base/llmops_base [--requests 300 --repeat 5]

The same, with a second arm: an older copy of the plugin package (a directory whose modules
import each other as ``<its name>.*``: see docs/llmops.md for the commands that make one from a
commit), run interleaved with the working tree's on the same requests, each against the median
ingest of all runs: the machine is busy, and only an A/B in one run compares two versions.

    python bench/llmops_ingest.py --server [--rate 5000] [--requests 800] [--repeat 3]

The same requests sent over OTLP/HTTP, one at a time at --rate spans/s, to a real ``opstrata
serve`` with the ``llmops`` plugin disabled and then enabled (alternating; the AIOps and MLOps
plugins are disabled in both, so only LLMOps differs): the server process's CPU time (user +
system, all threads, from /proc) per span sent, from the first timed request until the calls
are stored (the plugin looks and writes once a second, so its fixed costs are paid at the
rate's pace, as in production). Medians of --repeat; the calls stored are checked through
``GET /api/v1/llmops/usage``.

    python bench/llmops_ingest.py --full-rate [--seconds 8] [--clients 2] [--concurrency 32]

The product's denominator: a real server at full ingest rate, fed like ``bench/ingest.py``
(its sender processes and phase measurement are reused: --clients processes keep --concurrency
requests in flight each, cycling 200 pre-encoded requests with --share LLM spans) with
``llmops`` enabled and disabled (a fresh server per run; AIOps and MLOps disabled in both;
arms alternate, --repeat runs each). Per run: an untimed 2 s warm-up phase, then a timed phase
of --seconds; the server's CPU (process tree, user + system) from the phase's start until the
store has loaded what was acknowledged, every consumer has finished every committed batch, and
a further settling time the same in both arms (the plugin looks and writes on its own timer,
every ``GROUP_SECONDS``, writing right after), per span stored. After each run with the plugin, the
calls it stored are compared with the LLM spans in the server's DuckDB file.

    python bench/llmops_ingest.py --full-rate --rate 20000 [--seconds 8] [--repeat 3]

The same at a fixed offered rate instead: requests leave on a schedule (64 keep-alive
connections; late ones are counted), so both arms store the same spans at the same rate (at full
rate each run reaches the rate the machine's other load leaves it, and a server's CPU per span
moves with it). Requests are distinct for the whole run, their event time advancing at the
offered rate as in production. CPU by thread is over the whole measured window.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import math
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from opstrata.consumers import CommittedBatch, ConsumerContext
from opstrata.otlp.decode_traces import hand_over_llm_spans, llm_spans_wanted
from opstrata.otlp.decoder import Encoding, decode_request
from opstrata.otlp.limits import DecodeLimits
from opstrata.plugins.llmops.config import LLMOpsConfig
from opstrata.plugins.llmops.consumer import LLMCalls
from opstrata.schema import Signal
from opstrata.storage.duckdb_store import DuckDBStore

sys.path.insert(0, str(Path(__file__).parent.parent))  # tests.serverproc
from tests.serverproc import ServerProcess

PER_REQUEST, T0, WARM_UP = 100, 1_760_000_000_000_000_000, 10
EVENT_RATE = 20_000.0
"""Spans per second of event time in the in-process and --server runs (--event-rate): the
traffic they stand for. Event time sets how many alert buckets (a minute each) a run's calls
fall in, and a bucket's closing costs per model and service, not per call: at 200 spans/s (the
rate before 2026-11-26 evening) a run of 29,000 spans closed three buckets, each judged per
entity, which a server taking 20,000 spans/s does once per 1.2 M spans."""
ANY = {bool: "bool_value", int: "int_value", float: "double_value", str: "string_value"}
MODELS = ["gpt-4o-mini", "gpt-4o", "claude-sonnet-4-20250514", "gemini-2.5-flash", "llama-3-8b"]
SERVICES = ["chatbot", "search", "summariser", "support", "agent"]


def _kvs(attrs: dict[str, object]) -> list[KeyValue]:
    return [KeyValue(key=k, value=AnyValue(**{ANY[type(v)]: v})) for k, v in attrs.items()]


def make_request(
    rnd: random.Random, share: float, serial: int, step_ns: int = 500_000_000
) -> bytes:
    """One request of 100 spans, ``step_ns`` of traffic (event time) after the previous one."""
    req = trace_service_pb2.ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    service = rnd.choice(SERVICES)
    rs.resource.attributes.extend(_kvs({
        "service.name": service, "host.name": f"node-{rnd.randrange(20)}",
        "k8s.namespace.name": "prod", "k8s.pod.name": f"{service}-7d9f-{rnd.randrange(4)}",
        "telemetry.sdk.language": "python", "deployment.environment.name": "production",
    }))  # fmt: skip
    ss = rs.scope_spans.add()
    ss.scope.name = "opentelemetry.instrumentation.openai_v2"
    for i in range(PER_REQUEST):
        start = T0 + serial * step_ns + rnd.randrange(step_ns)
        span = ss.spans.add(trace_id=rnd.randbytes(16), span_id=rnd.randbytes(8))
        span.start_time_unix_nano = start
        span.end_time_unix_nano = start + rnd.randrange(10**7, 3 * 10**9)
        if rnd.random() < share:
            model = rnd.choice(MODELS)
            span.name, span.kind = f"chat {model}", Span.SPAN_KIND_CLIENT
            attrs: dict[str, object] = {
                "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                "gen_ai.request.model": model, "gen_ai.response.model": model + "-2025",
                "gen_ai.response.id": f"chatcmpl-{rnd.randrange(10**9)}",
                "gen_ai.response.finish_reasons": '["stop"]',
                "gen_ai.usage.input_tokens": rnd.randrange(50, 5000),
                "gen_ai.usage.output_tokens": rnd.randrange(10, 800),
                "gen_ai.usage.cache_read.input_tokens": rnd.randrange(0, 40),
                "gen_ai.conversation.id": f"conv-{rnd.randrange(1000)}",
                "user.id": f"user-{rnd.randrange(500)}",
                "gen_ai.input.messages": json.dumps([
                    {"role": "system", "parts": [{"type": "text", "content": "Be helpful."}]},
                    {"role": "user", "parts": [{"type": "text", "content":
                        f"Order {rnd.randrange(10**6)} for jane{i}@example.com: where is it?"}]},
                ]),
                "gen_ai.output.messages": json.dumps([
                    {"role": "assistant", "finish_reason": "stop",
                     "parts": [{"type": "text", "content": "It ships tomorrow. " * 5}]},
                ]),
            }  # fmt: skip
            if rnd.random() < 0.05:
                attrs["error.type"] = "openai.RateLimitError"
                span.status.CopyFrom(Status(code=Status.STATUS_CODE_ERROR, message="429"))
        else:
            span.name, span.kind = "GET /api/orders/{id}", Span.SPAN_KIND_SERVER
            attrs = {
                "http.request.method": "GET", "http.route": "/api/orders/{id}",
                "url.full": f"https://shop.example.com/api/orders/{rnd.randrange(10**6)}",
                "http.response.status_code": 200, "server.address": "shop.example.com",
                "user.id": f"user-{rnd.randrange(10**6)}", "thread.id": rnd.randrange(64),
                "app.queue_seconds": rnd.random(),
            }  # fmt: skip
        span.attributes.extend(_kvs(attrs))
    return req.SerializeToString()


def make_log_request(rnd: random.Random, serial: int) -> bytes:
    """One request of 100 ordinary log records (no GenAI key or event): what the plugin must
    look at and drop on the logs path."""
    req = logs_service_pb2.ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    service = rnd.choice(SERVICES)
    rl.resource.attributes.extend(_kvs({"service.name": service, "host.name": "node-1"}))
    sl = rl.scope_logs.add()
    for _ in range(PER_REQUEST):
        record = sl.log_records.add(time_unix_nano=T0 + serial * 500_000_000)
        record.body.string_value = f"GET /api/orders/{rnd.randrange(10**6)} 200"
        record.attributes.extend(_kvs({
            "http.route": "/api/orders/{id}", "user.id": f"user-{rnd.randrange(10**6)}",
            "thread.id": rnd.randrange(64), "code.function": "handle",
        }))  # fmt: skip
        record.event_name = rnd.choice(["", "app.order.viewed"])
    return req.SerializeToString()


def make_requests(share: float, requests: int, event_rate: float = EVENT_RATE) -> list[bytes]:
    """The same ``requests`` request bodies for every arm and run (seeded), their event time
    advancing at ``event_rate`` spans/s."""
    rnd = random.Random(7)
    if share < 0:  # --logs
        return [make_log_request(rnd, n) for n in range(requests)]
    step = round(PER_REQUEST / event_rate * 1e9)
    return [make_request(rnd, share, n, step) for n in range(requests)]


def decoder_extra(bodies: list[bytes], signal: Signal, rounds: int = 3) -> float:
    """CPU seconds the span decoder spends on the plugin's side batch for ``bodies`` (decoded
    with it minus without, request by request and alternating, the median of ``rounds``' signed
    sums: the difference is small against the decode, and pairing keeps the machine's drift
    out)."""
    if signal is not Signal.SPANS:
        return 0.0
    limits, sums = DecodeLimits(), []
    for r in range(rounds):
        extra = 0
        for n, body in enumerate(bodies):
            for on in (True, False) if (n + r) % 2 == 0 else (False, True):
                if on:
                    hand_over_llm_spans(True)
                started = time.thread_time_ns()
                decode_request(signal, body, Encoding.PROTOBUF, limits)
                extra += (time.thread_time_ns() - started) * (1 if on else -1)
                if on:
                    hand_over_llm_spans(False)
        sums.append(extra)
    return statistics.median(sums) / 1e9


async def _commit(store: DuckDBStore, decoded: list) -> list[int]:
    seqs = []
    for first in range(0, len(decoded), 10):
        group = decoded[first : first + 10]
        seqs += await asyncio.gather(*(store.write(d.batches) for d in group))
    return seqs


def run_once(
    bodies: list[bytes],
    arm: tuple[type, type] = (LLMCalls, LLMOpsConfig),
    logs: bool = False,
    threads: int | None = None,
    warm: int = WARM_UP,
) -> tuple[float, float, int, float]:
    limits = DecodeLimits()
    with tempfile.TemporaryDirectory() as tmp:
        # The store's own default unless --duckdb-threads sets it (the server's setting).
        store = DuckDBStore(Path(tmp), **({} if threads is None else {"threads": threads}))
        store.start()
        try:
            started = time.process_time()
            signal = Signal.LOG_RECORDS if logs else Signal.SPANS
            assert not llm_spans_wanted()  # ingest without the plugin: no side batch
            decoded = [decode_request(signal, body, Encoding.PROTOBUF, limits) for body in bodies]
            seqs = asyncio.run(_commit(store, decoded))
            ingest = time.process_time() - started
            extra = 0.0
            # A plugin that reads the decoder's side batch (this tree's, or a baseline's since
            # 101e9d1) asks for it in its consumer module.
            if hasattr(sys.modules[arm[0].__module__], "hand_over_llm_spans"):
                hand_over_llm_spans(True)
                with_side = [decode_request(signal, b, Encoding.PROTOBUF, limits) for b in bodies]
                hand_over_llm_spans(False)
                for d, s in zip(decoded, with_side, strict=True):
                    d.batches.llm_spans = s.batches.llm_spans
                    d.batches.llm_spans_nbytes = s.batches.llm_spans_nbytes
                # Counted as the plugin's: what the decoder spends on it (timed spans only).
                extra = decoder_extra(bodies[warm:], signal)
            consumer = arm[0](arm[1]())
            emitted: list[object] = []
            ctx = ConsumerContext(
                "llmops", "calls", Path(tmp), lambda _p, e: emitted.append(e), store, {}
            )
            consumer.start(ctx)
            # Warm-up, not timed: the first batches compile regular expressions and price
            # patterns, create the tables, build pyarrow's kernels — once per server, not per span.
            # With --warm-up as large as the timed part, it is also a look of the same size
            # before the timed one, as a running server has always had: the allocators' pools and
            # DuckDB's buffers are then those of a server's steady state, not first touches.
            for seq, d in zip(seqs[:warm], decoded[:warm], strict=True):
                consumer.consume(CommittedBatch.of(seq, d.batches), ctx)
            consumer.flush_pending()  # batches wait to be looked at in groups: look now
            assert consumer.writer is not None
            consumer.writer.flush()
            # Made before timing: in a server the fan-out makes each once for every consumer
            # (it measured each batch's buffers here, ~15 µs a request, charged to the plugin).
            committed = [
                CommittedBatch.of(seq, d.batches)
                for seq, d in zip(seqs[warm:], decoded[warm:], strict=True)
            ]
            started = time.process_time()
            own = time.thread_time()
            for batch in committed:
                consumer.consume(batch, ctx)
            own = time.thread_time() - own
            consumer.stop(ctx)  # the last buffered calls are written
            llmops = time.process_time() - started + extra
            calls = store.reader().execute("SELECT count(*) FROM llmops_calls").fetchone()[0]
        finally:
            store.shutdown()
    return ingest, llmops, int(calls), own


def _label(share: float) -> str:
    return "logs" if share < 0 else f"{share:.0%}"


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def serve_once(bodies: list[bytes], llm_calls: int, llmops: bool, rate: float) -> float:
    """Server CPU seconds for ``bodies`` sent at ``rate`` spans/s, until their calls are
    stored (with ``llmops``) or a fixed settling time has passed (both variants wait it)."""
    disabled = ["aiops", "mlops"] + ([] if llmops else ["llmops"])
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(
            Path(tmp), env={"OPSTRATA_DISABLED_PLUGINS": json.dumps(disabled)}
        ).start()
        try:
            assert server.proc is not None
            headers = {"Content-Type": "application/x-protobuf"}
            with httpx.Client(base_url=server.http_base, timeout=30) as client:
                for body in bodies[:WARM_UP]:  # not timed: first requests, tables, kernels
                    client.post("/v1/traces", content=body, headers=headers).raise_for_status()
                time.sleep(3)
                before = _cpu_seconds(server.proc.pid)
                started = time.monotonic()
                for n, body in enumerate(bodies[WARM_UP:]):
                    wait = started + n * PER_REQUEST / rate - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                    client.post("/v1/traces", content=body, headers=headers).raise_for_status()
            deadline = time.monotonic() + 60
            stored = 0
            while time.monotonic() < deadline:
                time.sleep(3)  # the same settling time in both variants
                if not llmops:
                    break
                rows = server.api("/api/v1/llmops/usage").json()["rows"]
                stored = sum(r["calls"] for r in rows)
                if stored >= llm_calls:
                    break
            cpu = _cpu_seconds(server.proc.pid) - before
            if llmops and stored != llm_calls:
                raise RuntimeError(f"{stored} calls stored, {llm_calls} expected")
        finally:
            server.stop()
    return cpu


def main_server(args: argparse.Namespace) -> None:
    spans = (args.requests - WARM_UP) * PER_REQUEST
    args.rate = args.rate or 5000.0
    print(f"server, {spans} timed spans per run at {args.rate:.0f} spans/s, {args.repeat} runs")
    print(f"{'LLM share':>9} {'without µs/span':>16} {'with µs/span':>13} {'added':>7}")
    for share in args.share:
        bodies = make_requests(share, args.requests, args.event_rate or args.rate)
        llm_calls = sum(
            1
            for b in bodies
            for span in trace_service_pb2.ExportTraceServiceRequest.FromString(b)
            .resource_spans[0]
            .scope_spans[0]
            .spans
            if span.name.startswith("chat ")
        )
        runs: dict[bool, list[float]] = {False: [], True: []}
        for r in range(args.repeat):
            for llmops in (False, True) if r % 2 == 0 else (True, False):
                runs[llmops].append(serve_once(bodies, llm_calls, llmops, args.rate))
        without = statistics.median(runs[False]) / spans * 1e6
        with_ = statistics.median(runs[True]) / spans * 1e6
        print(f"{share:>9.0%} {without:>16.2f} {with_:>13.2f} {with_ / without - 1:>7.1%}")
        print(f"{'':>9} runs without: {[round(c / spans * 1e6, 2) for c in runs[False]]}, "
              f"with: {[round(c / spans * 1e6, 2) for c in runs[True]]}")  # fmt: skip


PACED_SKIP_LATE = 0.1  # s: a paced request this late is skipped, not sent in a burst
SETTLE = 6.0  # > GROUP_SECONDS + a tick: the plugin's last look and write are done


def paced_phase(
    target: dict, payloads: list[bytes], rate: float, seconds: float, first: int = 0
) -> dict:
    """Send ``payloads`` from ``first`` on (cycling) at ``rate`` spans/s for ``seconds`` over
    OTLP/HTTP: request n leaves at ``n * 100 / rate`` s, from one of ``PACED_SENDERS``
    keep-alive connections. A request due while all are busy leaves late (counted); one more
    than ``PACED_SKIP_LATE`` s late is not sent at all (counted as skipped), so a stall is not
    made up by a burst and the phase's stored/s is the rate really reached."""
    import http.client

    host, port = target["http"].rsplit(":", 1)
    step, lock = PER_REQUEST / rate, threading.Lock()
    state = {"next": 0, "acked": 0, "late": 0, "skipped": 0, "errors": Counter()}
    started = time.monotonic() + 0.2
    stop = started + seconds

    def worker() -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        headers = {"Content-Type": "application/x-protobuf"}
        while True:
            with lock:
                n = state["next"]
                state["next"] += 1
            due = started + n * step
            if due >= stop:
                break
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            late = wait < -0.05
            if wait < -PACED_SKIP_LATE:
                with lock:
                    state["skipped"] += 1
                continue
            try:
                conn.request("POST", "/v1/traces", payloads[(first + n) % len(payloads)], headers)
                reply = conn.getresponse()
                reply.read()
                status = str(reply.status)
            except (OSError, http.client.HTTPException) as exc:
                status = type(exc).__name__
                conn.close()
            with lock:
                state["late"] += late
                if status == "200":
                    state["acked"] += PER_REQUEST
                else:
                    state["errors"][f"error {status}"] += 1
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(PACED_SENDERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return state


PACED_SENDERS = 64
"""Connections of the paced mode: a request is acknowledged once durably committed (tens of ms,
up to a few hundred under load), so at 20,000 spans/s (200 requests/s) tens are busy at once;
the rest absorb slow replies without the schedule slipping."""


def full_rate_once(payloads: list[bytes], llmops: bool, args: argparse.Namespace) -> dict:
    """One fresh server at full rate (or at ``args.rate`` spans/s, paced): server CPU µs per
    stored span, spans/s, calls stored."""
    import duckdb

    sys.path.insert(0, str(Path(__file__).parent))  # bench/ingest.py's senders and measures
    import ingest

    disabled = ["aiops", "mlops"] + ([] if llmops else ["llmops"])
    with tempfile.TemporaryDirectory(prefix="opstrata-llmbench-") as tmp:
        server = ServerProcess(
            Path(tmp), env={"OPSTRATA_DISABLED_PLUGINS": json.dumps(disabled)}
        ).start()
        assert server.proc is not None
        pid, target = server.proc.pid, {"http": server.addresses["OTLP/HTTP"]}
        target["api"] = server.addresses["API"]
        try:
            warm = argparse.Namespace(**{**vars(args), "seconds": 2.0})
            if args.rate:
                paced_phase(target, payloads, args.rate, 2.0)  # not timed
            else:
                ingest.run_phase("spans", "http", target, payloads, warm, pid)  # not timed
            time.sleep(SETTLE)
            before = ingest.committed(target["api"], "spans")
            cpu = sum(ingest.tree_counters(pid)[:2])  # user + system
            names = ingest.python_thread_names(pid)
            threads_before = ingest.thread_cpu(pid, names)
            commits_before = ingest.commit_stats(target["api"])
            started = time.time()
            if args.rate:
                # The warm-up sent every request due before 2 s: ceil, not floor (one more
                # when the rate does not divide evenly, which the phase must not send again).
                warm_requests = math.ceil(2.0 * args.rate / PER_REQUEST)
                sent = paced_phase(target, payloads, args.rate, args.seconds, warm_requests)
                drain = ingest.wait_consumers(target["api"], "spans")
                commits = [a - b for a, b in zip(ingest.commit_stats(target["api"]),
                                                 commits_before, strict=True)]  # fmt: skip
                r = {"stored/s": 0.0, "drain": drain, "rss": "-", "late": sent["late"]}
                r["skipped"] = sent["skipped"]
                r["rows/commit"] = commits[1] / commits[0] if commits[0] else 0.0
                r |= {k: v for k, v in sent["errors"].items()}
            else:
                r = ingest.run_phase("spans", "http", target, payloads, args, pid)
            time.sleep(SETTLE)  # the same in both arms
            cpu = sum(ingest.tree_counters(pid)[:2]) - cpu
            stored = ingest.committed(target["api"], "spans") - before
            elapsed = time.time() - started
            if not stored:
                raise RuntimeError(f"nothing stored: {r}\n" + "".join(server.output[-20:]))
            if args.rate:  # by thread over the whole window (phase, drain, settling)
                r["stored/s"] = stored / args.seconds  # what was sent in the phase, stored
                split = ingest.thread_cpu(pid, names)
                split.subtract(threads_before)
                r["threads"] = {k: v / stored * 1e6 for k, v in split.most_common(9)}
        finally:
            server.stop()
        calls = llm_spans = 0
        con = duckdb.connect(str(Path(tmp) / "opstrata.duckdb"), read_only=True)
        try:
            llm_spans = con.sql(
                "SELECT count(*) FROM otel_traces WHERE SpanName LIKE 'chat %'"
            ).fetchall()[0][0]
            if llmops:
                calls = con.sql("SELECT count(*) FROM llmops_calls").fetchall()[0][0]
        finally:
            con.close()
    if llmops and calls != llm_spans:
        raise RuntimeError(f"{calls} calls stored for {llm_spans} LLM spans")
    return {
        "cpu_us": cpu / stored * 1e6,
        "stored/s": r["stored/s"],
        "cores": cpu / elapsed,
        "drain": r["drain"],
        "rss": r["rss"],
        "threads": r["threads"],
        "load": os.getloadavg()[0],
        "late": r.get("late", 0),
        "skipped": r.get("skipped", 0),
        "rows/commit": r.get("rows/commit", 0.0),
        "errors": {k: v for k, v in r.items() if k.startswith("error")},
    }


def main_full_rate(args: argparse.Namespace) -> None:
    if args.rate:
        feed = f"paced at {args.rate:,.0f} spans/s over {PACED_SENDERS} connections"
    else:
        feed = f"full rate: {args.clients} senders x {args.concurrency} in flight"
    print(f"{feed}, {args.seconds} s timed per run, {args.repeat} runs per arm alternating; "
          f"load {os.getloadavg()[0]:.1f} at start")  # fmt: skip
    print(f"{'LLM share':>9} {'without µs/span':>16} {'with µs/span':>13} {'added':>7} "
          f"{'spread of added':>16}")  # fmt: skip
    for share in args.share:
        rnd = random.Random(7)
        if args.rate:
            # Event time advancing as the offered rate does (as in production): with the
            # full-rate pool's 0.5 s a request and 200 requests cycled, event time ran 100 times
            # faster than the wall clock and jumped back every 200 requests, so alert buckets
            # closed ~100 times as often per span, and out of order. Distinct requests for the
            # whole warm-up and phase (~3 s to make at 20,000 spans/s).
            step = round(PER_REQUEST / args.rate * 1e9)
            count = int((2.0 + args.seconds) * args.rate / PER_REQUEST) + 1
            payloads = [make_request(rnd, share, n, step) for n in range(count)]
        else:
            payloads = [make_request(rnd, share, n) for n in range(200)]
        runs: dict[bool, list[dict]] = {False: [], True: []}
        for r in range(args.repeat):
            for llmops in (False, True) if r % 2 == 0 else (True, False):
                runs[llmops].append(full_rate_once(payloads, llmops, args))
        off = [x["cpu_us"] for x in runs[False]]
        on = [x["cpu_us"] for x in runs[True]]
        without, with_ = statistics.median(off), statistics.median(on)
        # Spread: each with-run against the median without, and the extremes' pairing.
        lo, hi = min(on) / max(off) - 1, max(on) / min(off) - 1
        pairs = [b / a - 1 for a, b in zip(off, on, strict=True)]
        print(f"{share:>9.0%} {without:>16.2f} {with_:>13.2f} {with_ / without - 1:>7.1%} "
              f"{lo:>7.1%}..{hi:.1%}", flush=True)  # fmt: skip
        paired = [f"{p:.1%}" for p in pairs]
        print(f"{'':>9} runs without: {[round(x, 2) for x in off]}, with: "
              f"{[round(x, 2) for x in on]}; paired (run r): {paired}")  # fmt: skip
        for arm, label in ((False, "without"), (True, "with")):
            rates = [round(x["stored/s"]) for x in runs[arm]]
            loads = [round(x["load"], 1) for x in runs[arm]]
            threads: dict[str, list[float]] = {}
            for x in runs[arm]:
                for name, us in x["threads"].items():
                    threads.setdefault(name, []).append(us)
            split = ", ".join(f"{k} {statistics.median(v):.1f}" for k, v in threads.items())
            late = [(x["late"], x["skipped"]) for x in runs[arm]] if args.rate else "-"
            per_commit = [round(x["rows/commit"]) for x in runs[arm]]
            window = "whole window" if args.rate else "phase only"
            print(f"{'':>9} {label}: stored/s {rates}, (late, skipped) requests {late}, "
                  f"rows per commit {per_commit}, load {loads}, drain "
                  f"{[round(x['drain'], 1) for x in runs[arm]]} s; peak RSS "
                  f"{[x['rss'] for x in runs[arm]]}; µs/span by thread "
                  f"(median, {window}): {split}")  # fmt: skip
            for x in runs[arm]:
                for key, n in x["errors"].items():
                    print(f"{'':>9}   {n} x {key}")


def main_baseline(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(args.baseline.parent))
    name = args.baseline.name
    arms = {
        "base": (
            importlib.import_module(f"{name}.consumer").LLMCalls,
            importlib.import_module(f"{name}.config").LLMOpsConfig,
        ),
        "now": (LLMCalls, LLMOpsConfig),
    }
    spans, timed = args.requests * PER_REQUEST, (args.requests - args.warm_up) * PER_REQUEST
    print(f"{spans} spans per run ({timed} timed), {args.repeat} runs per arm interleaved, "
          f"baseline {name}")  # fmt: skip
    print(f"{'LLM share':>9} {'ingest µs/span':>15} {'base µs/span':>13} {'added':>7} "
          f"{'now µs/span':>12} {'added':>7} {'calls':>7}")  # fmt: skip
    for share in args.share:
        bodies = make_requests(share, args.requests, args.event_rate or EVENT_RATE)
        runs: dict[str, list[tuple[float, float, int, float]]] = {arm: [] for arm in arms}
        for r in range(args.repeat):
            for arm in ("base", "now") if r % 2 == 0 else ("now", "base"):
                runs[arm].append(run_once(bodies, arms[arm], share < 0, warm=args.warm_up))
        ingest = statistics.median(x[0] for v in runs.values() for x in v) / spans * 1e6
        cost = {a: statistics.median(x[1] for x in runs[a]) / timed * 1e6 for a in arms}
        calls = {runs[a][0][2] for a in arms}
        assert len(calls) == 1, f"the arms stored different numbers of calls: {calls}"
        print(
            f"{_label(share):>9} {ingest:>15.2f} {cost['base']:>13.2f} "
            f"{cost['base'] / ingest:>7.1%} {cost['now']:>12.2f} {cost['now'] / ingest:>7.1%} "
            f"{calls.pop():>7}",
            flush=True,
        )
        print(f"{'':>9} runs base: {[round(x[1] / timed * 1e6, 2) for x in runs['base']]}, "
              f"now: {[round(x[1] / timed * 1e6, 2) for x in runs['now']]}")  # fmt: skip
        # Interference from the machine's other work only adds CPU time: the least of each
        # is the least noisy estimate of what the work itself costs (shown beside the medians).
        least = min(x[0] for v in runs.values() for x in v) / spans * 1e6
        best = {a: min(x[1] for x in runs[a]) / timed * 1e6 for a in arms}
        print(
            f"{'':>9} least of the runs: ingest {least:.2f}, base {best['base']:.2f} "
            f"({best['base'] / least:.1%}), now {best['now']:.2f} ({best['now'] / least:.1%})"
        )


def main_threads(args: argparse.Namespace) -> None:
    """The store's DuckDB with each of ``--duckdb-threads`` (a database-wide setting, shared by
    the store's writer and the plugin's inserts), interleaved: ingest and LLMOps per arm."""
    spans, timed = args.requests * PER_REQUEST, (args.requests - args.warm_up) * PER_REQUEST
    arms = args.duckdb_threads
    print(f"{spans} spans per run, {args.repeat} runs per arm interleaved, DuckDB threads {arms}")
    print(f"{'LLM share':>9} {'threads':>7} {'ingest µs/span':>15} {'llmops µs/span':>15} "
          f"{'added':>7}")  # fmt: skip
    for share in args.share:
        bodies = make_requests(share, args.requests, args.event_rate or EVENT_RATE)
        runs: dict[int, list[tuple[float, float, int, float]]] = {t: [] for t in arms}
        for r in range(args.repeat):
            for t in arms if r % 2 == 0 else arms[::-1]:
                runs[t].append(run_once(bodies, logs=share < 0, threads=t, warm=args.warm_up))
        for t in arms:
            ingest = statistics.median(x[0] for x in runs[t]) / spans * 1e6
            cost = statistics.median(x[1] for x in runs[t]) / timed * 1e6
            print(f"{_label(share):>9} {t:>7} {ingest:>15.2f} {cost:>15.2f} "
                  f"{cost / ingest:>7.1%}", flush=True)  # fmt: skip
            print(f"{'':>17} runs ingest: {[round(x[0] / spans * 1e6, 2) for x in runs[t]]}, "
                  f"llmops: {[round(x[1] / timed * 1e6, 2) for x in runs[t]]}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--share",
        type=float,
        nargs="+",
        default=[0.0, 0.01, 0.1, 1.0],
        help="shares of LLM spans; -1: ordinary log records instead of spans",
    )
    parser.add_argument("--server", action="store_true", help="a real server, over OTLP/HTTP")
    parser.add_argument(
        "--rate",
        type=float,
        help="spans/s offered: --server (default 5000); --full-rate: paced at this rate instead",
    )
    parser.add_argument(
        "--warm-up",
        type=int,
        default=WARM_UP,
        help="in process: requests of --requests looked at before timing (default 10)",
    )
    parser.add_argument(
        "--event-rate",
        type=float,
        help="spans/s of event time (in process: 20000; --server: --rate)",
    )
    parser.add_argument("--baseline", type=Path, help="an older plugin package, run interleaved")
    parser.add_argument(
        "--full-rate", action="store_true", help="a real server at full rate (bench/ingest.py)"
    )
    parser.add_argument("--seconds", type=float, default=8.0, help="timed phase (--full-rate)")
    parser.add_argument("--clients", type=int, default=2, help="sender processes (--full-rate)")
    parser.add_argument("--concurrency", type=int, default=32, help="in flight per sender")
    parser.add_argument(
        "--duckdb-threads",
        type=int,
        nargs="+",
        help="run the store's DuckDB with each of these thread counts, interleaved",
    )
    args = parser.parse_args()
    if not 0 <= args.warm_up < args.requests:
        parser.error("--warm-up must be at least 0 and fewer than --requests")
    if args.duckdb_threads:
        main_threads(args)
        return
    if args.full_rate:
        main_full_rate(args)
        return
    if args.server:
        main_server(args)
        return
    if args.baseline:
        main_baseline(args)
        return
    spans = args.requests * PER_REQUEST
    print(f"{spans} spans per run, {args.repeat} runs, python {sys.version.split()[0]}")
    print(f"{'LLM share':>9} {'ingest µs/span':>15} {'llmops µs/span':>15} {'added':>7} "
          f"{'consumer thread':>15} {'calls':>7}")  # fmt: skip
    for share in args.share:
        bodies = make_requests(share, args.requests, args.event_rate or EVENT_RATE)
        runs = [run_once(bodies, logs=share < 0, warm=args.warm_up) for _ in range(args.repeat)]
        timed_spans = spans - args.warm_up * PER_REQUEST
        ingest = statistics.median(r[0] for r in runs) / spans * 1e6
        llmops = statistics.median(r[1] for r in runs) / timed_spans * 1e6
        own = statistics.median(r[3] for r in runs) / timed_spans * 1e6
        print(
            f"{_label(share):>9} {ingest:>15.2f} {llmops:>15.2f} {llmops / ingest:>7.1%} "
            f"{own:>15.2f} {runs[0][2]:>7}"
        )


if __name__ == "__main__":
    main()
