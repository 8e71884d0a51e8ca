"""The simulated shop: services, their call graph, the nodes and pods they run on.

Ten instrumented services (``frontend`` … ``llm-gateway``) call each other over HTTP and call
four dependencies that are not instrumented (``postgresql``, ``redis``, ``kafka``, ``stripe``)
plus the LLM provider ``openai``. The call graph is a tuple of :class:`Route` trees; the trace
builder walks them, the fault scenarios derive their affected entities from them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from opentelemetry.sdk.resources import Resource

from opstrata.alerts import Entity

__all__ = [
    "CLOUD_REGION",
    "DEPENDENCIES",
    "GPU_NODE",
    "MODEL",
    "NODES",
    "ROUTES",
    "SERVICES",
    "Call",
    "Environment",
    "Leaf",
    "Node",
    "Pod",
    "Route",
    "callers_of",
]

NAMESPACE = "shop"
CLOUD_REGION = "eu-west-1"
GPU_NODE = "gpu-node-1"
MODEL = ("fraud-model", "3")
"""The model server's model: ``ml.model.name`` and ``ml.model.version`` (Triton-style numeric
version, so ``nv_inference_*{model,version}`` and the span attributes name the same model)."""


@dataclass(frozen=True)
class Node:
    name: str
    """``host.name`` and ``k8s.node.name`` (the same, as the Collector's k8s detectors set them)."""
    zone: str
    cpu_base: float
    memory_base: float
    gpu: bool = False


NODES: tuple[Node, ...] = (
    Node("node-a", "eu-west-1a", 0.28, 0.52),
    Node("node-b", "eu-west-1b", 0.31, 0.58),
    Node("node-c", "eu-west-1c", 0.26, 0.61),
    Node(GPU_NODE, "eu-west-1a", 0.18, 0.44, gpu=True),
)

# service -> (version, nodes of its replicas, runtime)
SERVICES: dict[str, tuple[str, tuple[str, ...], str]] = {
    "frontend": ("2.14.0", ("node-a", "node-b"), "nodejs"),
    "api-gateway": ("1.22.3", ("node-a", "node-b"), "go"),
    "catalog": ("3.4.1", ("node-a", "node-c"), "java"),
    "cart": ("1.11.0", ("node-a", "node-c"), "go"),
    "checkout": ("1.8.2", ("node-b", "node-c"), "python"),
    "payment": ("4.2.0", ("node-c",), "java"),
    "shipping": ("0.9.7", ("node-b",), "go"),
    "recommendation": ("2.0.5", ("node-b",), "python"),
    "model-server": ("24.08", (GPU_NODE,), "python"),
    "llm-gateway": ("0.7.3", ("node-c",), "python"),
}

DEPENDENCIES = ("postgresql", "redis", "kafka", "stripe", "openai")
"""Called but not instrumented: each appears as ``peer.service`` on its callers' client spans
(and as ``db.system`` / ``messaging.system`` where one applies)."""


@dataclass(frozen=True)
class Leaf:
    """A client span to a dependency that sends no telemetry of its own."""

    dependency: str
    name: str
    median_ms: float
    attributes: tuple[tuple[str, object], ...] = ()
    prob: float = 1.0
    retries: int = 0
    llm: str = ""
    """``assistant`` or ``review``: an LLM call with GenAI attributes (see traces.py)."""
    when: str = ""
    """A condition on the request (``approved``: the fraud check let the payment through)."""


@dataclass(frozen=True)
class Call:
    """A call to an instrumented service: a client span in the caller, a server span in it."""

    service: str
    method: str
    route: str
    self_ms: float
    children: tuple[Call | Leaf, ...] = ()
    prob: float = 1.0
    propagate: float = 1.0
    """Chance that a failure of this call fails its caller (0: the caller degrades gracefully)."""
    when: str = ""
    """A condition on the request (``review``: the fraud score is borderline)."""
    special: str = ""
    """``model``: the server span is a model inference with ``ml.*`` attributes."""


@dataclass(frozen=True)
class Route:
    name: str
    weight: float
    root: Call


def _db(table: str, op: str, median_ms: float, prob: float = 1.0) -> Leaf:
    attrs = (
        ("db.system", "postgresql"),
        ("db.system.name", "postgresql"),
        ("db.namespace", "shop"),
        ("db.operation.name", op),
        ("db.collection.name", table),
        (
            "db.query.text",
            f"{op} … FROM {table} WHERE id = $1"
            if op == "SELECT"
            else f"{op} INTO {table} VALUES ($1, $2, $3)",
        ),
        ("server.address", "postgresql.shop.svc"),
        ("server.port", 5432),
    )
    return Leaf("postgresql", f"{op} shop.{table}", median_ms, attrs, prob)


def _redis(op: str, prob: float = 1.0) -> Leaf:
    attrs = (
        ("db.system", "redis"),
        ("db.system.name", "redis"),
        ("db.operation.name", op),
        ("server.address", "redis.shop.svc"),
        ("server.port", 6379),
    )
    return Leaf("redis", op, 0.6, attrs, prob)


_KAFKA = Leaf(
    "kafka",
    "publish orders",
    2.5,
    (
        ("messaging.system", "kafka"),
        ("messaging.operation.type", "send"),
        ("messaging.destination.name", "orders"),
        ("server.address", "kafka.shop.svc"),
        ("server.port", 9092),
    ),
)
_STRIPE = Leaf(
    "stripe",
    "POST",
    180.0,
    (
        ("http.request.method", "POST"),
        ("url.full", "https://api.stripe.com/v1/payment_intents"),
        ("server.address", "api.stripe.com"),
        ("server.port", 443),
    ),
    retries=2,
    when="approved",
)
_OPENAI_ATTRS = (("server.address", "api.openai.com"), ("server.port", 443))

_PRODUCT = Call(
    "catalog", "GET", "/products/{id}", 6.0, (_redis("GET"), _db("products", "SELECT", 4.0, 0.3))
)
_REVIEW = Call(
    "llm-gateway",
    "POST",
    "/v1/review",
    5.0,
    (Leaf("openai", "chat gpt-4o", 0.0, _OPENAI_ATTRS, llm="review"),),
    when="review",
    propagate=0.0,
)
_CHARGE = Call(
    "payment",
    "POST",
    "/charges",
    10.0,
    (
        Call(
            "model-server",
            "POST",
            "/v2/models/fraud-model/infer",
            22.0,
            special="model",
            propagate=0.0,
        ),
        _REVIEW,
        _STRIPE,
    ),
)

ROUTES: tuple[Route, ...] = (
    Route(
        "home",
        0.28,
        Call(
            "frontend",
            "GET",
            "/",
            8.0,
            (
                Call(
                    "api-gateway",
                    "GET",
                    "/api/home",
                    3.0,
                    (
                        Call(
                            "catalog",
                            "GET",
                            "/products",
                            6.0,
                            (_redis("GET"), _db("products", "SELECT", 5.0, 0.2)),
                        ),
                        Call(
                            "recommendation",
                            "GET",
                            "/recommendations",
                            12.0,
                            (_redis("GET"), _PRODUCT),
                            propagate=0.0,
                        ),
                    ),
                ),
            ),
        ),
    ),
    Route(
        "product",
        0.30,
        Call(
            "frontend",
            "GET",
            "/product/{id}",
            7.0,
            (Call("api-gateway", "GET", "/api/products/{id}", 3.0, (_PRODUCT,)),),
        ),
    ),
    Route(
        "add-to-cart",
        0.14,
        Call(
            "frontend",
            "POST",
            "/cart",
            6.0,
            (
                Call(
                    "api-gateway",
                    "POST",
                    "/api/cart",
                    3.0,
                    (Call("cart", "POST", "/cart/items", 3.0, (_redis("HSET"), _PRODUCT)),),
                ),
            ),
        ),
    ),
    Route(
        "checkout",
        0.14,
        Call(
            "frontend",
            "POST",
            "/checkout",
            9.0,
            (
                Call(
                    "api-gateway",
                    "POST",
                    "/api/checkout",
                    3.0,
                    (
                        Call(
                            "checkout",
                            "POST",
                            "/orders",
                            15.0,
                            (
                                Call("cart", "GET", "/cart", 3.0, (_redis("HGETALL"),)),
                                Call(
                                    "shipping",
                                    "GET",
                                    "/quote",
                                    5.0,
                                    (_db("shipping_rates", "SELECT", 3.5),),
                                ),
                                _CHARGE,
                                _db("orders", "INSERT", 6.0),
                                _KAFKA,
                                Call("cart", "DELETE", "/cart", 2.0, (_redis("DEL"),)),
                            ),
                        ),
                    ),
                ),
            ),
        ),
    ),
    Route(
        "assistant",
        0.14,
        Call(
            "frontend",
            "POST",
            "/assistant",
            6.0,
            (
                Call(
                    "api-gateway",
                    "POST",
                    "/api/assistant",
                    3.0,
                    (
                        Call(
                            "llm-gateway",
                            "POST",
                            "/v1/chat",
                            5.0,
                            (
                                _redis("GET"),
                                Call(
                                    "catalog",
                                    "GET",
                                    "/search",
                                    9.0,
                                    (_db("products", "SELECT", 7.0),),
                                ),
                                Leaf(
                                    "openai",
                                    "chat gpt-4o-mini",
                                    0.0,
                                    _OPENAI_ATTRS,
                                    llm="assistant",
                                ),
                            ),
                        ),
                    ),
                ),
            ),
        ),
    ),
)


def _walk(call: Call, parent: str) -> Iterator[tuple[str, str]]:
    """(caller, callee) edges, dependencies included."""
    for child in call.children:
        if isinstance(child, Call):
            yield call.service, child.service
            yield from _walk(child, call.service)
        else:
            yield call.service, child.dependency


def callers_of(target: str) -> set[str]:
    """Every instrumented service from which ``target`` is reachable in the call graph."""
    edges = {edge for route in ROUTES for edge in _walk(route.root, "")}
    found: set[str] = set()
    frontier = {target}
    while frontier:
        nxt = {a for a, b in edges if b in frontier and a not in found}
        found |= nxt
        frontier = nxt
    return found


def _suffix(*parts: str, n: int = 5) -> str:
    digest = hashlib.sha256("/".join(parts).encode()).hexdigest()
    return "".join("bcdfghjklmnpqrstvwxz"[int(c, 16)] for c in digest[:n])


@dataclass
class Pod:
    service: str
    version: str
    name: str
    node: str
    resource: Resource
    started_ns: int = 0
    """When its container last started: cumulative counters restart from here."""


@dataclass
class Environment:
    """The pods of every service version, their resources, and which version runs now."""

    seed: int
    versions: dict[str, str] = field(default_factory=dict)
    _pods: dict[tuple[str, str], list[Pod]] = field(default_factory=dict)
    node_resources: dict[str, Resource] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.versions = {service: spec[0] for service, spec in SERVICES.items()}
        for node in NODES:
            # As a Collector's hostmetrics receiver reports them: no service, no SDK attributes.
            self.node_resources[node.name] = Resource(
                {
                    "host.name": node.name,
                    "host.arch": "amd64",
                    "os.type": "linux",
                    "k8s.node.name": node.name,
                    "k8s.cluster.name": "shop-prod",
                    "cloud.provider": "aws",
                    "cloud.region": CLOUD_REGION,
                    "cloud.availability_zone": node.zone,
                }
            )

    def node(self, name: str) -> Node:
        return next(n for n in NODES if n.name == name)

    def pods(self, service: str, version: str | None = None) -> list[Pod]:
        """The replicas of ``service`` at ``version`` (the running one by default)."""
        version = version or self.versions[service]
        key = (service, version)
        if key not in self._pods:
            _, nodes, runtime = SERVICES[service]
            template = _suffix(service, version, str(self.seed), n=9)
            pods = []
            for node in nodes:
                name = f"{service}-{template}-{_suffix(service, version, node, str(self.seed))}"
                zone = self.node(node).zone
                attrs = {
                    "service.name": service,
                    "service.namespace": NAMESPACE,
                    "service.version": version,
                    "service.instance.id": name,
                    "deployment.environment.name": "production",
                    "host.name": node,
                    "k8s.node.name": node,
                    "k8s.pod.name": name,
                    "k8s.namespace.name": NAMESPACE,
                    "k8s.deployment.name": service,
                    "k8s.cluster.name": "shop-prod",
                    "cloud.provider": "aws",
                    "cloud.region": CLOUD_REGION,
                    "cloud.availability_zone": zone,
                    "process.runtime.name": runtime,
                }
                pods.append(Pod(service, version, name, node, Resource.create(attrs)))
            self._pods[key] = pods
        return self._pods[key]

    def all_pods(self) -> list[Pod]:
        """Pods of the versions running now."""
        return [pod for service in SERVICES for pod in self.pods(service)]

    def pods_on(self, node: str) -> list[Pod]:
        return [pod for pod in self.all_pods() if pod.node == node]

    def services_on(self, node: str) -> set[str]:
        return {service for service, spec in SERVICES.items() if node in spec[1]}


def service_entity(name: str) -> Entity:
    return Entity("service", name)
