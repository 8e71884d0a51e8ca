"""Bearer-token auth, separately for the HTTP API and for OTLP (both real clients)."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import httpx
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace.export import SpanExportResult

from tests.otelsdk import make_spans
from tests.serverproc import ServerProcess

API_TOKEN = "api-s3cret"
OTLP_TOKEN = "otlp-s3cret"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {"OPSTRATA_API_BEARER_TOKEN": API_TOKEN, "OPSTRATA_INGEST__BEARER_TOKEN": OTLP_TOKEN}
    proc = ServerProcess(tmp_path_factory.mktemp("auth") / "data", env=env).start()
    yield proc
    assert proc.stop() == 0, "".join(proc.output)


def _api(server: ServerProcess, path: str, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.get(server.api_base + path, headers=headers, timeout=30)


@pytest.mark.parametrize("path", ["/api/v1/spans", "/api/services", "/api/v1/metrics", "/schema"])
def test_api_rejects_a_missing_or_wrong_token(guarded: ServerProcess, path: str) -> None:
    for token in (None, "wrong", OTLP_TOKEN):
        response = _api(guarded, path, token)
        assert response.status_code == 401, (token, response.text)
        body = response.json()
        if path.startswith("/api/v1/") or not path.startswith("/api/"):
            assert body == {"status_code": 401, "detail": "missing or wrong bearer token"}
        else:  # the Jaeger API answers errors in Jaeger's shape
            assert body["errors"] == [{"code": 401, "msg": "missing or wrong bearer token"}]
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert _api(guarded, path, API_TOKEN).status_code == 200


def test_probes_stay_open(guarded: ServerProcess) -> None:
    assert _api(guarded, "/healthz", None).status_code == 200
    assert _api(guarded, "/readyz", None).status_code == 200


def test_otlp_http_wants_its_own_token(guarded: ServerProcess) -> None:
    spans = make_spans("auth-svc", lambda t: t.start_as_current_span("x").__enter__().end())
    url = guarded.http_base + "/v1/traces"
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {API_TOKEN}"},
    ):
        exporter = OTLPSpanExporter(endpoint=url, headers=headers, timeout=10)
        assert exporter.export(spans) is SpanExportResult.FAILURE
        exporter.shutdown()
    raw = httpx.post(url, content=b"{}", headers={"Content-Type": "application/json"}, timeout=30)
    assert raw.status_code == 401
    assert "bearer token" in raw.json()["message"]
    exporter = OTLPSpanExporter(
        endpoint=url, headers={"Authorization": f"Bearer {OTLP_TOKEN}"}, timeout=10
    )
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    exporter.shutdown()
    trace_id = format(spans[0].context.trace_id, "032x")
    assert _api(guarded, f"/api/v1/traces/{trace_id}", API_TOKEN).status_code == 200


def test_otlp_grpc_is_unauthenticated_without_the_token(guarded: ServerProcess) -> None:
    with grpc.insecure_channel(guarded.grpc_endpoint) as channel:
        stub = trace_service_pb2_grpc.TraceServiceStub(channel)
        request = trace_service_pb2.ExportTraceServiceRequest()
        for metadata in ((), (("authorization", "Bearer wrong"),)):
            with pytest.raises(grpc.RpcError) as caught:
                stub.Export(request, metadata=metadata, timeout=10)
            assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
        reply = stub.Export(
            request, metadata=(("authorization", f"Bearer {OTLP_TOKEN}"),), timeout=10
        )
        assert isinstance(reply, trace_service_pb2.ExportTraceServiceResponse)


def test_no_token_configured_means_no_check(query_server: tuple[ServerProcess, dict]) -> None:
    proc, _ = query_server
    assert _api(proc, "/api/v1/spans", None).status_code == 200
    raw = httpx.post(
        proc.http_base + "/v1/traces",
        content=b"{}",
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert raw.status_code == 200
