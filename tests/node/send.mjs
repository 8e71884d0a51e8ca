#!/usr/bin/env node
// Emit one known trace, a few metrics and log records through the real OpenTelemetry JavaScript
// SDK (NodeSDK) and its OTLP exporters, then shut down.
//
//   node send.mjs --protocol grpc|http/protobuf|http/json --endpoint URL --run-id ID
//
// --endpoint is the receiver's base URL: "http://127.0.0.1:4317" for gRPC, "http://127.0.0.1:4318"
// for HTTP (the per-signal paths /v1/traces, /v1/metrics and /v1/logs are appended).
//
// Every telemetry item carries the resource service.name "node-<protocol>-<run id>". On success the
// script prints one JSON line (service name, trace id, span ids, items exported per signal) and
// exits 0. It exits non-zero if any export failed, was partially rejected, got a response the
// exporter could not read, or if a signal exported nothing.

import { parseArgs } from 'node:util';

import { DiagLogLevel, SpanKind, SpanStatusCode, context, diag, metrics, trace } from '@opentelemetry/api';
import { SeverityNumber, logs } from '@opentelemetry/api-logs';
import { ExportResultCode, setGlobalErrorHandler } from '@opentelemetry/core';
import { OTLPLogExporter as LogsGrpc } from '@opentelemetry/exporter-logs-otlp-grpc';
import { OTLPLogExporter as LogsJson } from '@opentelemetry/exporter-logs-otlp-http';
import { OTLPLogExporter as LogsProto } from '@opentelemetry/exporter-logs-otlp-proto';
import { OTLPMetricExporter as MetricsGrpc } from '@opentelemetry/exporter-metrics-otlp-grpc';
import {
  AggregationTemporalityPreference,
  OTLPMetricExporter as MetricsJson,
} from '@opentelemetry/exporter-metrics-otlp-http';
import { OTLPMetricExporter as MetricsProto } from '@opentelemetry/exporter-metrics-otlp-proto';
import { OTLPTraceExporter as TraceGrpc } from '@opentelemetry/exporter-trace-otlp-grpc';
import { OTLPTraceExporter as TraceJson } from '@opentelemetry/exporter-trace-otlp-http';
import { OTLPTraceExporter as TraceProto } from '@opentelemetry/exporter-trace-otlp-proto';
import { defaultResource, resourceFromAttributes } from '@opentelemetry/resources';
import { BatchLogRecordProcessor } from '@opentelemetry/sdk-logs';
import { PeriodicExportingMetricReader } from '@opentelemetry/sdk-metrics';
import { NodeSDK } from '@opentelemetry/sdk-node';
import { BatchSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { ATTR_SERVICE_NAME, ATTR_SERVICE_VERSION } from '@opentelemetry/semantic-conventions';

const EXPORTERS = {
  grpc: { traces: TraceGrpc, metrics: MetricsGrpc, logs: LogsGrpc },
  'http/protobuf': { traces: TraceProto, metrics: MetricsProto, logs: LogsProto },
  'http/json': { traces: TraceJson, metrics: MetricsJson, logs: LogsJson },
};
const HTTP_PATHS = { traces: '/v1/traces', metrics: '/v1/metrics', logs: '/v1/logs' };

function usage(message) {
  process.stderr.write(
    `send.mjs: ${message}\n` +
      'usage: node send.mjs --protocol grpc|http/protobuf|http/json --endpoint URL --run-id ID\n',
  );
  process.exit(2);
}

let args;
try {
  ({ values: args } = parseArgs({
    options: {
      protocol: { type: 'string' },
      endpoint: { type: 'string' },
      'run-id': { type: 'string' },
    },
  }));
} catch (err) {
  usage(err.message);
}
const { protocol, endpoint } = args;
const runId = args['run-id'];
if (!(protocol in EXPORTERS)) usage(`unknown --protocol ${JSON.stringify(protocol)}`);
if (!endpoint) usage('--endpoint is required');
if (!runId) usage('--run-id is required');

// A hung export must not hang the caller.
setTimeout(() => {
  process.stderr.write('send.mjs: timed out\n');
  process.exit(3);
}, 90_000).unref();

// --- Everything that can go wrong is collected here -------------------------------------------

const problems = [];
const describe = (err) => (err instanceof Error ? `${err.name}: ${err.message}` : String(err));
const exported = { traces: 0, metrics: 0, logs: 0 };

setGlobalErrorHandler((err) => {
  problems.push(`global error handler: ${describe(err)}`);
});

// The exporters report a partial success, and a response they cannot decode, only through diag.
diag.setLogger(
  {
    error: (...parts) => problems.push(`diag error: ${parts.map(String).join(' ')}`),
    warn: (...parts) => {
      const text = parts.map((p) => (typeof p === 'string' ? p : JSON.stringify(p))).join(' ');
      process.stderr.write(`diag warn: ${text}\n`);
      if (/partial success|could not deserialize/i.test(text)) problems.push(`diag warn: ${text}`);
    },
    info: () => {},
    debug: () => {},
    verbose: () => {},
  },
  { logLevel: DiagLogLevel.WARN, suppressOverrideMessage: true },
);

function countItems(signal, items) {
  if (signal !== 'metrics') return items.length;
  // One ResourceMetrics per export: count the data points.
  let points = 0;
  for (const scope of items.scopeMetrics) {
    for (const metric of scope.metrics) points += metric.dataPoints.length;
  }
  return points;
}

/** The signal's exporter, with every export result recorded. */
function exporterFor(signal) {
  const url = protocol === 'grpc' ? endpoint : endpoint.replace(/\/+$/, '') + HTTP_PATHS[signal];
  const options = { url, timeoutMillis: 20_000 };
  if (signal === 'metrics') options.temporalityPreference = AggregationTemporalityPreference.CUMULATIVE;
  const exporter = new EXPORTERS[protocol][signal](options);
  const exportOriginal = exporter.export.bind(exporter);
  exporter.export = (items, resultCallback) => {
    const n = countItems(signal, items);
    exportOriginal(items, (result) => {
      if (result.code === ExportResultCode.SUCCESS) {
        exported[signal] += n;
      } else {
        problems.push(`${signal} export of ${n} items failed: ${describe(result.error)}`);
      }
      resultCallback(result);
    });
  };
  return exporter;
}

// --- The SDK -----------------------------------------------------------------------------------

const serviceName = `node-${protocol}-${runId}`;
const spanProcessor = new BatchSpanProcessor(exporterFor('traces'));
// Collected and exported once, at shutdown.
const metricReader = new PeriodicExportingMetricReader({
  exporter: exporterFor('metrics'),
  exportIntervalMillis: 600_000,
  exportTimeoutMillis: 30_000,
});
const logProcessor = new BatchLogRecordProcessor({ exporter: exporterFor('logs') });
const sdk = new NodeSDK({
  resource: defaultResource().merge(
    resourceFromAttributes({
      [ATTR_SERVICE_NAME]: serviceName,
      [ATTR_SERVICE_VERSION]: '1.2.3',
      'test.run_id': runId,
    }),
  ),
  autoDetectResources: false,
  spanProcessors: [spanProcessor],
  metricReaders: [metricReader],
  logRecordProcessors: [logProcessor],
});
sdk.start();

// --- Telemetry ---------------------------------------------------------------------------------

const tracer = trace.getTracer('opstrata.tests.node', '0.1.0');
const meter = metrics.getMeter('opstrata.tests.node', '0.1.0');
const logger = logs.getLogger('opstrata.tests.node', '0.1.0');

const requests = meter.createCounter('node.requests', {
  description: 'Requests handled',
  unit: '{request}',
});
const queueDepth = meter.createUpDownCounter('node.queue.depth', {
  description: 'Items waiting',
  unit: '{item}',
});
const latency = meter.createHistogram('node.latency', {
  description: 'Request latency',
  unit: 'ms',
  advice: { explicitBucketBoundaries: [10, 100, 1000] },
});
const temperature = meter.createObservableGauge('node.temperature', {
  description: 'Room temperature',
  unit: 'Cel',
});
temperature.addCallback((result) => result.observe(21.5, { room: 'lab' }));

requests.add(1, { 'http.route': '/x' });
requests.add(2, { 'http.route': '/x' });
queueDepth.add(5, { queue: 'jobs' });
queueDepth.add(-2, { queue: 'jobs' });
for (const ms of [3, 7, 120]) latency.record(ms, { 'http.route': '/x' });

const ids = {};
tracer.startActiveSpan(
  'GET /x',
  {
    kind: SpanKind.SERVER,
    attributes: {
      'http.route': '/x',
      retries: 3,
      ok: true,
      ratio: 0.25,
      tags: ['a', 'b'],
      codes: [200, 404],
    },
  },
  (server) => {
    server.addEvent('cache.miss', { key: 'user:42', hit: false });
    logger.emit({
      severityNumber: SeverityNumber.INFO,
      severityText: 'INFO',
      body: 'handling GET /x',
      attributes: { 'user.id': 42, premium: true },
    });
    const client = tracer.startSpan(
      'SELECT orders',
      {
        kind: SpanKind.CLIENT,
        attributes: { 'db.system': 'postgresql', 'db.rows': 7 },
        links: [{ context: server.spanContext(), attributes: { 'link.kind': 'follows' } }],
      },
      context.active(),
    );
    context.with(trace.setSpan(context.active(), client), () => {
      logger.emit({
        severityNumber: SeverityNumber.ERROR,
        severityText: 'ERROR',
        body: { message: 'query failed', code: 500, tags: ['db', 'timeout'] },
        attributes: { 'db.system': 'postgresql' },
      });
    });
    client.setStatus({ code: SpanStatusCode.ERROR, message: 'timeout' });
    client.end();
    server.end();
    ids.trace_id = server.spanContext().traceId;
    ids.server_span_id = server.spanContext().spanId;
    ids.client_span_id = client.spanContext().spanId;
  },
);

// --- Flush, and judge --------------------------------------------------------------------------

// Shut the three pipelines down side by side (each flushes, exports and closes its exporter) and
// wait for all of them, so that one failing signal does not hide what happened to the others.
// This is what NodeSDK.shutdown() does, except that it stops waiting at the first failure.
const shutdowns = await Promise.allSettled([
  spanProcessor.shutdown(),
  metricReader.shutdown(),
  logProcessor.shutdown(),
]);
for (const [i, outcome] of shutdowns.entries()) {
  if (outcome.status === 'rejected') {
    problems.push(`${['traces', 'metrics', 'logs'][i]} shutdown failed: ${describe(outcome.reason)}`);
  }
}
for (const [signal, n] of Object.entries(exported)) {
  if (n === 0) problems.push(`no ${signal} were exported`);
}
if (problems.length > 0) {
  process.stderr.write(`send.mjs: ${problems.length} problem(s):\n${problems.join('\n')}\n`);
  process.exit(1);
}
process.stdout.write(`${JSON.stringify({ service_name: serviceName, ...ids, exported })}\n`);
process.exit(0);
