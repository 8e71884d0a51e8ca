"""Named fault scenarios: what each one does to the environment, and its ground truth.

A scenario is a function of the seconds since its onset that fills an :class:`Effects` (the
state of the environment at one instant). The trace builder and the metric and log generators
read the effects, so a fault reaches telemetry only through the same paths healthy traffic takes:
a slow database makes every span above it slower, an error fails its callers, a hot GPU slows the
model server, shifts its scores and sends more payments to LLM review.

Each scenario's :class:`Truth` names the root-cause entity as alerts name it (``service`` for a
dependency outside instrumented code, by its ``peer.service``; ``host``/``node`` by
``host.name`` = ``k8s.node.name``; ``model`` as ``name:version``; ``llm_model`` by model name),
other names for the same component (``aliases``), when the fault's first effect happens, and the
entities expected to show it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from opstrata.alerts import Entity
from opstrata.demo.environment import GPU_NODE, MODEL, callers_of

__all__ = ["SCENARIOS", "Effects", "FaultLog", "Scenario", "Truth"]

MODEL_ENTITY = Entity("model", f"{MODEL[0]}:{MODEL[1]}")


@dataclass(frozen=True)
class FaultLog:
    """A log line a fault makes a service write, ``per_minute`` times per pod on average."""

    service: str
    severity: str
    template: str
    per_minute: float
    node: str = ""
    """Only pods on this node write it (empty: every pod of the service)."""


@dataclass
class Effects:
    """The environment at one instant. Factors are 1 and rates 0 when nothing is wrong."""

    dep_latency: dict[str, float] = field(default_factory=dict)
    dep_errors: dict[str, float] = field(default_factory=dict)
    dep_error: dict[str, tuple[str, str]] = field(default_factory=dict)
    service_latency: dict[str, float] = field(default_factory=dict)
    service_errors: dict[str, float] = field(default_factory=dict)
    service_error: dict[str, tuple[str, str]] = field(default_factory=dict)
    node_latency: dict[str, float] = field(default_factory=dict)
    node_cpu: dict[str, float] = field(default_factory=dict)
    node_memory: dict[str, float] = field(default_factory=dict)
    oom_kill_every_s: dict[str, float] = field(default_factory=dict)
    """node -> seconds between OOM kills of its pods (round robin)."""
    gpu_temperature: float = 0.0
    gpu_utilization: float = 0.0
    gpu_xid_per_minute: float = 0.0
    score_shift: float = 0.0
    score_noise: float = 0.0
    mobile_amount_scale: float = 1.0
    versions: dict[str, str] = field(default_factory=dict)
    prompt_version: str = ""
    prompt_input_factor: float = 1.0
    prompt_output_factor: float = 1.0
    logs: list[FaultLog] = field(default_factory=list)


@dataclass(frozen=True)
class Truth:
    """What was injected: the answer the incident engine should find."""

    scenario: str
    root_cause: Entity | None
    aliases: tuple[Entity, ...]
    onset_unix_nano: int | None
    end_unix_nano: int | None
    affected: tuple[Entity, ...]
    description: str

    def matches(self, entity: Entity) -> bool:
        """Whether ``entity`` names the root cause (itself or one of its aliases)."""
        return self.root_cause is not None and (entity == self.root_cause or entity in self.aliases)


def _ramp(seconds: float, over: float, delay: float = 0.0) -> float:
    """0 before ``delay``, rising linearly to 1 over ``over`` seconds."""
    return min(max((seconds - delay) / over, 0.0), 1.0)


def _slow_database(s: float, fx: Effects) -> None:
    r = _ramp(s, 90)
    fx.dep_latency["postgresql"] = 1 + 14 * r
    fx.dep_errors["postgresql"] = 0.03 * _ramp(s, 60, delay=60)
    fx.dep_error["postgresql"] = ("QueryCanceled", "canceling statement due to statement timeout")
    for svc in ("catalog", "checkout", "shipping"):
        fx.logs.append(
            FaultLog(svc, "WARN", "slow query took {ms} ms: SELECT … FROM {table}", 6 * r)
        )
    fx.logs.append(
        FaultLog(
            "checkout",
            "ERROR",
            "connection pool exhausted (size=20), waited {ms} ms for a connection",
            2 * _ramp(s, 60, delay=90),
        )
    )


def _bad_deploy(s: float, fx: Effects) -> None:
    fx.versions["checkout"] = "1.9.0"
    fx.service_errors["checkout"] = 0.35 * _ramp(s, 30)
    fx.service_error["checkout"] = ("KeyError", "'coupon_code'")
    fx.service_latency["checkout"] = 1.15


def _cpu_pressure(s: float, fx: Effects) -> None:
    # A batch job lands on node-b: CPU climbs first, latency follows once it saturates.
    fx.node_cpu["node-b"] = 0.64 * _ramp(s, 90)
    slow = _ramp(s, 90, delay=45)
    fx.node_latency["node-b"] = 1 + 2.5 * slow
    for svc in ("api-gateway", "checkout", "shipping", "recommendation", "frontend"):
        fx.logs.append(
            FaultLog(
                svc,
                "WARN",
                "request queued for {ms} ms before a worker was free",
                3 * slow,
                node="node-b",
            )
        )


def _memory_pressure(s: float, fx: Effects) -> None:
    fx.node_memory["node-c"] = 0.37 * _ramp(s, 150)
    gc = _ramp(s, 60, delay=90)
    fx.node_latency["node-c"] = 1 + 1.2 * gc
    if s >= 150:
        fx.oom_kill_every_s["node-c"] = 60.0
    for svc in ("catalog", "cart", "checkout", "payment", "llm-gateway"):
        fx.logs.append(
            FaultLog(
                svc,
                "WARN",
                "GC overhead {pct}% of CPU time, heap {mb} MB of {max} MB",
                4 * gc,
                node="node-c",
            )
        )


def _gpu_trouble(s: float, fx: Effects) -> None:
    heat = _ramp(s, 120)
    fx.gpu_temperature = 27 * heat
    fx.gpu_xid_per_minute = 3.0 * _ramp(s, 60, delay=30)
    slow = _ramp(s, 90, delay=60)
    fx.node_latency[GPU_NODE] = 1 + 5 * slow
    fx.gpu_utilization = 0.35 * slow  # throttled clocks: the same work keeps it busier
    drift = _ramp(s, 120, delay=90)
    fx.score_shift = 1.6 * drift
    fx.score_noise = 1.2 * drift
    fx.service_errors["model-server"] = 0.04 * drift
    fx.service_error["model-server"] = ("CudaError", "uncorrectable ECC error encountered")
    fx.logs.append(
        FaultLog(
            "model-server",
            "WARN",
            "GPU 0 temperature {temp}C above slowdown threshold, clocks throttled",
            4 * heat,
        )
    )
    fx.logs.append(
        FaultLog(
            "model-server",
            "ERROR",
            "NVRM: Xid 48, GPU 0: double bit ECC error",
            2 * _ramp(s, 60, 30),
        )
    )


def _dependency_outage(s: float, fx: Effects) -> None:
    r = _ramp(s, 20)
    fx.dep_errors["stripe"] = 0.7 * r
    fx.dep_latency["stripe"] = 1 + 8 * r
    fx.dep_error["stripe"] = ("ConnectTimeout", "timed out connecting to api.stripe.com:443")


def _input_drift(s: float, fx: Effects) -> None:
    # A mobile app release sends amounts in cents: the feature moves, the model follows.
    fx.mobile_amount_scale = 1 + 99 * _ramp(s, 120)


def _llm_cost(s: float, fx: Effects) -> None:
    fx.prompt_version = "v8"
    r = _ramp(s, 30)
    fx.prompt_input_factor = 1 + 5 * r
    fx.prompt_output_factor = 1 + 0.4 * r
    fx.logs.append(
        FaultLog(
            "llm-gateway",
            "WARN",
            "prompt for conversation {cid} is {tokens} tokens, near the context budget",
            5 * r,
        )
    )


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    apply: Callable[[float, Effects], None] | None
    root_cause: Entity | None = None
    aliases: tuple[Entity, ...] = ()
    affected: tuple[Entity, ...] = ()


def _services(*names: str) -> tuple[Entity, ...]:
    return tuple(Entity("service", n) for n in sorted(set(names)))


_LLM_REVIEW = Entity("llm_model", "gpt-4o")
_LLM_CHAT = Entity("llm_model", "gpt-4o-mini")
_LLM_CHAT_RESPONSE = Entity("llm_model", "gpt-4o-mini-2024-07-18")  # gen_ai.response.model
_LLM_REVIEW_RESPONSE = Entity("llm_model", "gpt-4o-2024-08-06")

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("normal", "no fault: a steady day with its noise", None),
        Scenario(
            "slow-database",
            "postgresql slows down 15x (lock contention), then statements start timing out",
            _slow_database,
            Entity("service", "postgresql"),
            (),
            (
                Entity("service", "postgresql"),
                *_services("catalog", "checkout", "shipping", *callers_of("postgresql")),
            ),
        ),
        Scenario(
            "bad-deploy",
            "checkout 1.9.0 rolls out (new pods) and 35% of orders fail with KeyError",
            _bad_deploy,
            Entity("service", "checkout"),
            (),
            _services("checkout", *callers_of("checkout")),
        ),
        Scenario(
            "host-cpu-pressure",
            "a batch job saturates node-b's CPU; its pods slow down",
            _cpu_pressure,
            Entity("host", "node-b"),
            (Entity("node", "node-b"),),
            (
                Entity("host", "node-b"),
                *_services("api-gateway", "checkout", "shipping", "recommendation", "frontend"),
            ),
        ),
        Scenario(
            "host-memory-pressure",
            "node-c runs out of memory: GC thrash, then OOM kills of its pods",
            _memory_pressure,
            Entity("host", "node-c"),
            (Entity("node", "node-c"),),
            (
                Entity("host", "node-c"),
                *_services(
                    "catalog", "cart", "checkout", "payment", "llm-gateway", *callers_of("payment")
                ),
            ),
        ),
        Scenario(
            "gpu-node-trouble",
            "gpu-node-1 overheats with ECC errors: model-server slows, fraud scores drift, more "
            "payments go to LLM review, so LLM calls, cost and latency rise",
            _gpu_trouble,
            Entity("node", GPU_NODE),
            (Entity("host", GPU_NODE),),
            (
                Entity("node", GPU_NODE),
                MODEL_ENTITY,
                _LLM_REVIEW,
                _LLM_REVIEW_RESPONSE,
                *_services("model-server", "payment", "llm-gateway", *callers_of("model-server")),
            ),
        ),
        Scenario(
            "dependency-outage",
            "the payment provider stripe times out on 70% of calls",
            _dependency_outage,
            Entity("service", "stripe"),
            (),
            (Entity("service", "stripe"), *_services("payment", *callers_of("payment"))),
        ),
        Scenario(
            "model-input-drift",
            "a mobile release sends amounts in cents: the amount feature and the fraud scores "
            "drift",
            _input_drift,
            MODEL_ENTITY,
            (Entity("service", "model-server"),),
            # Declined payments skip the card charge: fewer orders, faster checkouts.
            (MODEL_ENTITY, _LLM_REVIEW, _LLM_REVIEW_RESPONSE, *_services("payment", "checkout")),
        ),
        Scenario(
            "llm-cost-spike",
            "assistant prompt v8 stuffs six times the context: input tokens and cost jump",
            _llm_cost,
            _LLM_CHAT,
            (
                _LLM_CHAT_RESPONSE,
                Entity("service", "llm-gateway"),
                Entity("prompt", "assistant-answer"),
                Entity("prompt", "assistant-answer:v8"),
            ),
            (_LLM_CHAT, _LLM_CHAT_RESPONSE, Entity("service", "llm-gateway")),
        ),
    )
}
