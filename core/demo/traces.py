"""One request through the call graph: SDK spans with simulated times, and the logs it writes.

The builder walks a :class:`~opstrata.demo.environment.Route` depth first. Each service's own
time is drawn from a log-normal around its median and multiplied by the faults' factors for the
service and for the node its pod runs on; a caller's span lasts as long as its own time plus its
calls, so slowness travels up. A failure fails the caller unless the edge says the caller
degrades gracefully (``propagate``). Every span is an SDK ``ReadableSpan`` with explicit start and
end times (simulated), ids from the seeded generator.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from dataclasses import dataclass, field

from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from opstrata.demo.environment import MODEL, Call, Environment, Leaf, Pod, Route
from opstrata.demo.faults import Effects
from opstrata.demo.fraud import REVIEW_BAND, predict
from opstrata.demo.genai import LlmCall, LlmCalls
from opstrata.demo.logs import LogSink

__all__ = ["LlmCall", "TickOutput", "TraceBuilder"]

_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_MS = 1_000_000
_NS = 1_000_000_000
SCOPES = {
    "server": InstrumentationScope("opentelemetry.instrumentation.asgi", "0.58b0"),
    "client": InstrumentationScope("opentelemetry.instrumentation.httpx", "0.58b0"),
    "postgresql": InstrumentationScope("opentelemetry.instrumentation.psycopg", "0.58b0"),
    "redis": InstrumentationScope("opentelemetry.instrumentation.redis", "0.58b0"),
    "kafka": InstrumentationScope("opentelemetry.instrumentation.kafka", "0.58b0"),
    "openai": InstrumentationScope("opentelemetry.instrumentation.openai_v2", "2.1b0"),
    "model": InstrumentationScope("model_server.telemetry", "24.08"),
}
_BASE_ERRORS = {
    "postgresql": 0.001,
    "redis": 0.0005,
    "kafka": 0.0005,
    "stripe": 0.004,
}
_DEP_ERRORS = {
    "postgresql": ("OperationalError", "server closed the connection unexpectedly"),
    "redis": ("TimeoutError", "Timeout reading from socket"),
    "kafka": ("KafkaTimeoutError", "Failed to update metadata after 60.0 secs."),
    "stripe": ("APIConnectionError", "Connection aborted."),
}
_SERVICE_ERROR = ("InternalError", "unexpected state in request handler")


@dataclass
class TickOutput:
    """What one tick's requests produced, for the exporters and the metric generator."""

    spans: list[ReadableSpan] = field(default_factory=list)
    http: dict[tuple[str, str, str, int], list[float]] = field(
        default_factory=lambda: defaultdict(list)
    )
    """(pod, method, route, status) -> server durations in seconds."""
    llm: list[LlmCall] = field(default_factory=list)
    inferences: list[tuple[bool, float]] = field(default_factory=list)
    """(succeeded, seconds) per model-server inference."""
    orders: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    labels: list[tuple[int, str, int]] = field(default_factory=list)
    """(due time, prediction id, label): chargeback outcomes that arrive later."""


@dataclass
class _Request:
    trace_id: int
    route: Route
    user: str
    score: float | None = None
    declined: bool = False


class TraceBuilder(LlmCalls):
    """Turns requests into spans and request logs, given the faults' effects at that moment."""

    def __init__(self, env: Environment, rng: random.Random, logs: LogSink) -> None:
        self.env = env
        self.rng = rng
        self.logs = logs
        self.down: dict[str, tuple[int, int]] = {}
        """pod name -> (from, to): the pod is restarting and refuses connections."""
        self.llm_load: dict[str, float] = {}
        """Request model -> calls in the previous tick over the provider's rate limit for a
        tick (over 1: the provider answers some calls with 429, and the gateway retries)."""

    # -- helpers -------------------------------------------------------------------------------
    def _id(self, bits: int) -> int:
        return self.rng.getrandbits(bits) or 1

    def _lat(self, median_ms: float, sigma: float = 0.35) -> int:
        return int(self.rng.lognormvariate(math.log(median_ms), sigma) * _MS)

    def _pod(self, service: str, fx: Effects) -> Pod:
        return self.rng.choice(self.env.pods(service, fx.versions.get(service)))

    def _span(
        self,
        out: TickOutput,
        name: str,
        req: _Request,
        span_id: int,
        parent: int,
        pod: Pod,
        kind: SpanKind,
        start: int,
        end: int,
        attrs: dict[str, object],
        scope: str,
        error: tuple[str, str] | None,
        events: tuple[Event, ...] = (),
    ) -> None:
        status = Status(StatusCode.UNSET)
        if error is not None:
            status = Status(StatusCode.ERROR, f"{error[0]}: {error[1]}")
            attrs["error.type"] = error[0]
        parent_ctx = SpanContext(req.trace_id, parent, True, _SAMPLED) if parent else None
        out.spans.append(
            ReadableSpan(
                name=name,
                context=SpanContext(req.trace_id, span_id, False, _SAMPLED),
                parent=parent_ctx,
                resource=pod.resource,
                attributes=attrs,
                events=events,
                kind=kind,
                status=status,
                start_time=start,
                end_time=end,
                instrumentation_scope=SCOPES[scope],
            )
        )

    def _exception(self, at: int, error: tuple[str, str]) -> tuple[Event, ...]:
        return (
            Event(
                "exception",
                {"exception.type": error[0], "exception.message": error[1]},
                timestamp=at,
            ),
        )

    # -- the walk ------------------------------------------------------------------------------
    def request(self, route: Route, start: int, fx: Effects, out: TickOutput) -> None:
        req = _Request(self._id(128), route, f"user-{self.rng.randrange(5000):04d}")
        pod = self._pod(route.root.service, fx)
        self._serve(route.root, req, 0, pod, start, fx, out)

    def _serve(
        self,
        call: Call,
        req: _Request,
        parent: int,
        pod: Pod,
        start: int,
        fx: Effects,
        out: TickOutput,
    ) -> tuple[int, tuple[str, str] | None, int]:
        """The server span of ``call`` in ``pod``: (end, error, status code)."""
        rng = self.rng
        span_id = self._id(64)
        factor = fx.service_latency.get(call.service, 1.0) * fx.node_latency.get(pod.node, 1.0)
        own = self._lat(call.self_ms) * factor
        cursor = start + int(own * 0.6)
        error: tuple[str, str] | None = None
        origin = False
        attrs: dict[str, object] = {}
        if call.special == "model":
            cursor, error = self._infer(req, pod, cursor, fx, out, attrs)
            origin = error is not None
        for child in call.children:
            if rng.random() >= child.prob or not self._wanted(child, req):
                continue
            if isinstance(child, Leaf):
                cursor, child_error = self._leaf(child, req, span_id, pod, cursor, fx, out)
                if child_error is not None and error is None:
                    error, origin = child_error, True
                continue
            cursor, child_error = self._client(child, req, span_id, pod, cursor, fx, out)
            if child_error is not None and error is None and rng.random() < child.propagate:
                error = child_error
        if error is None and rng.random() < 0.002 + fx.service_errors.get(call.service, 0.0):
            error = fx.service_error.get(call.service, _SERVICE_ERROR)
            origin = True
        end = cursor + int(own * 0.4)
        status = 500 if error else 200
        attrs.update(
            {
                "http.request.method": call.method,
                "http.route": call.route,
                "url.path": call.route.replace("{id}", str(rng.randrange(1, 900))),
                "url.scheme": "http",
                "server.address": call.service,
                "server.port": 8080,
                "http.response.status_code": status,
                "user.id": req.user,
            }
        )
        events = self._exception(end, error) if error and origin else ()
        self._span(
            out,
            f"{call.method} {call.route}",
            req,
            span_id,
            parent,
            pod,
            SpanKind.SERVER,
            start,
            end,
            attrs,
            "server",
            error,
            events,
        )
        out.http[(pod.name, call.method, call.route, status)].append((end - start) / 1e9)
        self._request_logs(call, req, pod, span_id, end, error, origin, fx, out)
        return end, error, status

    def _wanted(self, child: Call | Leaf, req: _Request) -> bool:
        if child.when == "review":
            return req.score is not None and REVIEW_BAND[0] <= req.score < REVIEW_BAND[1]
        if child.when == "approved":
            return not req.declined
        return True

    def _client(
        self,
        call: Call,
        req: _Request,
        parent: int,
        caller: Pod,
        start: int,
        fx: Effects,
        out: TickOutput,
    ) -> tuple[int, tuple[str, str] | None]:
        """A client span in ``caller`` around ``call``'s server span (or a refused connection)."""
        span_id = self._id(64)
        pod = self._pod(call.service, fx)
        window = self.down.get(pod.name)
        net = int(self.rng.uniform(0.2, 0.8) * _MS)
        error: tuple[str, str] | None
        if window is not None and window[0] <= start < window[1]:
            end, error, status = start + net, ("ConnectError", "connection refused"), 503
        else:
            server_end, error, status = self._serve(
                call, req, span_id, pod, start + net // 2, fx, out
            )
            end = server_end + net // 2
        attrs: dict[str, object] = {
            "http.request.method": call.method,
            "server.address": f"{call.service}.shop.svc",
            "server.port": 8080,
            "url.full": f"http://{call.service}.shop.svc:8080{call.route}",
            "http.response.status_code": status,
            "peer.service": call.service,
        }
        self._span(
            out,
            call.method,
            req,
            span_id,
            parent,
            caller,
            SpanKind.CLIENT,
            start,
            end,
            attrs,
            "client",
            error,
        )
        return end, error

    def _leaf(
        self,
        leaf: Leaf,
        req: _Request,
        parent: int,
        pod: Pod,
        start: int,
        fx: Effects,
        out: TickOutput,
    ) -> tuple[int, tuple[str, str] | None]:
        """Client spans to a dependency (one per attempt); the error of the last attempt."""
        if leaf.llm:
            return self._llm(leaf, req, parent, pod, start, fx, out)
        dep = leaf.dependency
        scope = dep if dep in SCOPES else "client"
        cursor, error = start, None
        for attempt in range(leaf.retries + 1):
            span_id = self._id(64)
            duration = self._lat(leaf.median_ms) * fx.dep_latency.get(dep, 1.0)
            failed = self.rng.random() < _BASE_ERRORS.get(dep, 0.0) + fx.dep_errors.get(dep, 0.0)
            error = fx.dep_error.get(dep, _DEP_ERRORS[dep]) if failed else None
            end = cursor + int(duration)
            attrs: dict[str, object] = dict(leaf.attributes)
            attrs["peer.service"] = dep
            if dep == "stripe":
                attrs["http.response.status_code"] = 504 if failed else 200
                attrs["http.request.resend_count"] = attempt
            self._span(
                out,
                leaf.name,
                req,
                span_id,
                parent,
                pod,
                SpanKind.CLIENT,
                cursor,
                end,
                attrs,
                scope,
                error,
                self._exception(end, error) if error else (),
            )
            if dep == "postgresql" and duration > 400 * _MS:
                self.logs.write(
                    pod,
                    end,
                    "WARN",
                    f"slow query took {duration // _MS:.0f} ms: {leaf.name}",
                    req.trace_id,
                    span_id,
                )
            cursor = end
            if error is None:
                break
            if attempt < leaf.retries:
                cursor += int(100 * 2**attempt * _MS)  # back-off before the retry
        return cursor, error

    def _infer(
        self,
        req: _Request,
        pod: Pod,
        start: int,
        fx: Effects,
        out: TickOutput,
        attrs: dict[str, object],
    ) -> tuple[int, tuple[str, str] | None]:
        """The model's work inside the model-server span: features in, a score out."""
        pred = predict(self.rng, fx.score_shift, fx.score_noise, fx.mobile_amount_scale)
        compute = self._lat(14.0, 0.25) * fx.node_latency.get(pod.node, 1.0)
        end = start + int(compute)
        error = None
        if self.rng.random() < fx.service_errors.get("model-server", 0.0):
            error = fx.service_error["model-server"]
        out.inferences.append((error is None, compute / 1e9))
        attrs["ml.model.name"], attrs["ml.model.version"] = MODEL
        if error is not None:
            return end, error
        prediction_id = f"pred-{self._id(64):016x}"
        for name, value in pred.features.items():
            attrs[f"ml.feature.{name}"] = value
        attrs["ml.prediction"] = int(pred.score >= REVIEW_BAND[1])
        attrs["ml.prediction.score"] = pred.score
        attrs["ml.prediction.id"] = prediction_id
        req.score = pred.score
        req.declined = pred.score >= REVIEW_BAND[1]
        if self.rng.random() < 0.5:  # half the outcomes come back as chargeback reports
            due = end + int(self.rng.uniform(300, 1200) * _NS)
            out.labels.append((due, prediction_id, pred.label))
        return end, None

    def _request_logs(
        self,
        call: Call,
        req: _Request,
        pod: Pod,
        span_id: int,
        end: int,
        error: tuple[str, str] | None,
        origin: bool,
        fx: Effects,
        out: TickOutput,
    ) -> None:
        rng, logs, svc = self.rng, self.logs, call.service
        if error is not None:
            if origin:
                logs.write(
                    pod,
                    end,
                    "ERROR",
                    f"unhandled exception in {call.method} {call.route}: {error[0]}: {error[1]}",
                    req.trace_id,
                    span_id,
                    {"exception.type": error[0]},
                )
            elif svc == "api-gateway":
                logs.write(
                    pod,
                    end,
                    "ERROR",
                    f"upstream returned 500 for {call.method} {call.route}",
                    req.trace_id,
                    span_id,
                )
            return
        if svc == "api-gateway" and rng.random() < 0.2:
            logs.write(pod, end, "INFO", f"{call.method} {call.route} 200", req.trace_id, span_id)
        elif svc == "checkout":
            out.orders[pod.name] += 1
            logs.write(
                pod,
                end,
                "INFO",
                f"order {self._id(40):010x} placed: {rng.randint(1, 6)} items",
                req.trace_id,
                span_id,
            )
        elif svc == "payment" and req.score is not None:
            verdict = "declined by fraud check" if req.declined else "authorized"
            logs.write(
                pod, end, "INFO", f"payment {self._id(40):010x} {verdict}", req.trace_id, span_id
            )
