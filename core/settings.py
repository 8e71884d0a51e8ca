"""Settings: one msgspec Struct tree, read from a TOML file, ``OPSTRATA_*`` variables and flags.

Precedence, lowest first: defaults, the TOML file (``--config``), environment variables, command
line flags. Environment variables name a top-level key in upper case (``OPSTRATA_DATA_DIR``) or a
nested one with a double underscore (``OPSTRATA_INGEST__QUEUE_BYTES``); their text is parsed as a
TOML value when it is one (numbers, booleans) and taken as a string otherwise.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

__all__ = [
    "IncidentSettings",
    "IngestSettings",
    "Settings",
    "SettingsError",
    "StorageSettings",
    "load_settings",
    "parse_address",
]

ENV_PREFIX = "OPSTRATA_"


class SettingsError(ValueError):
    """Settings that cannot be used; the message names the offending key."""


class IngestSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """How requests are admitted and decoded."""

    max_request_bytes: int = 32 * 1024 * 1024
    """Largest request body accepted, measured after decompression (413 / RESOURCE_EXHAUSTED)."""
    queue_bytes: int = 192 * 1024 * 1024
    """Bytes of requests in flight (decoding, awaiting fsync, or acknowledged and not yet
    loaded) before new ones get 503 / UNAVAILABLE with a retry hint. A request is charged the
    memory its decoded batches hold: before decoding, its body size times a learnt per-signal
    expansion; after, its decoded size (docs/ingest.md, "Backpressure"). Part of the memory
    budget (docs/configuration.md)."""
    admission_wait_seconds: float = 1.0
    """Longest a request that finds the queue full waits for room, in arrival order, before
    503 / UNAVAILABLE; the bodies waiting are bounded by ``admission_wait_bytes`` (beyond,
    refused at once). 0: refuse at once. A burst larger than the queue is then taken as fast as the
    store drains it, instead of every client of it retrying in step a retry hint later."""
    admission_wait_bytes: int | None = None
    """Bound on the body bytes of the requests waiting for room (not decoded yet); beyond it a
    request that finds the queue full is refused at once. Default: a quarter of
    ``queue_bytes``, which the memory budget has room for (docs/configuration.md)."""
    retry_after_seconds: int = 1
    max_attributes: int = 128
    max_value_chars: int = 16_384
    max_anyvalue_depth: int = 16
    decode_workers: int = 0
    """Processes that decode requests besides the main one (0 decodes in the main process).
    0 is the default: handing a request to a worker and its batches back cost the server more
    than decoding them itself (docs/performance.md)."""
    decode_threads: int = 0
    """Threads of the server that decode requests, so that the event loop goes on serving while
    a request is parsed (the C decoders parse without the GIL); 0 decodes on the event loop.
    Ignored when ``decode_workers`` is set (docs/performance.md, "Ingest, tenth round")."""
    bearer_token: str = ""
    """When set, OTLP requests must carry ``Authorization: Bearer <token>`` (401 /
    UNAUTHENTICATED otherwise). Empty: no check."""
    heap_trim_mib: int = 64
    """Give the C heap's free memory back to the OS (``malloc_trim``) when it keeps at least
    this many MiB free and the ingest backlog is drained; 0: never. A trim stalls allocation
    for 15-60 ms, so not after every load (docs/ingest.md, "Memory")."""
    log: bool = True
    """Acknowledge once a request is in the fsynced ingest log (``<data_dir>/ingest-log``) and
    load the store behind it; false acknowledges only after the store's own commit (slower)."""


class StorageSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    backend: str = "duckdb"
    commit_max_rows: int = 200_000
    """Rows one group commit takes at most; batches waiting beyond it go in the next commit."""
    retention_hours: float = 0
    """Delete telemetry older than this (by event time); 0 keeps everything."""
    duckdb_threads: int = 1
    """DuckDB's threads, for the whole database (the API's queries too: DuckDB 2.0 cannot give
    one connection fewer). With more than one, every INSERT is planned as a parallel batch
    insert that appends each commit's rows twice (a local copy, then merged): 4.2 against 2.0
    µs of CPU per stored span, ~12-15 % of the store's CPU per row (docs/performance.md, "Ingest,
    eighth round: the store's CPU per item"). 2 makes large scans faster on an idle machine."""
    duckdb_memory_limit: str = "256MB"
    """DuckDB's buffer manager: it keeps the table blocks it writes cached up to this limit, so
    under steady ingest it fills it (2GB let a bench run's server reach 1.6 GiB). Part of the
    memory budget (docs/configuration.md). Joins, sorts and grouping past it spill to
    ``opstrata.duckdb.tmp``; holistic aggregates (exact quantiles) cannot, which is why the
    read queries' percentiles are approximate (t-digest, docs/api.md#services)."""
    duckdb_checkpoint_threshold: str = "256MB"
    """WAL size that triggers a checkpoint. DuckDB's 16 MB default re-compresses the newest row
    groups every few thousand rows; a larger WAL halves the cost of a commit (see
    docs/performance.md), for a longer WAL replay after a crash."""
    duckdb_row_group_size: int = 16_384
    """Rows per DuckDB row group (a multiple of 2048; DuckDB's default is 122,880). A commit
    with at least this many rows of a table writes them compressed straight to the file,
    skipping DuckDB's WAL and the checkpoint's re-compression: under load ~30 % less store CPU
    per row, for files ~20 % larger (docs/performance.md, "Ingest, tenth round")."""
    duckdb_fill_wait_seconds: float = 1.0
    """Under load, longest a commit of acknowledged loads waits (from the previous commit's
    start) for a table to fill a row group; 0 turns the wait off. Cut short when ingest
    admission runs short of room (``ingest.queue_bytes``): see docs/configuration.md."""


class IncidentSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    quiet_seconds: float = 600
    """An incident with no alert event for this long (event time) resolves."""
    reopen_seconds: float = 1800
    """An alert this soon after its incident resolved reopens it."""
    confirm_seconds: float = 120
    """A lone alert related to no open incident opens one only when corroborated by a related
    alert of another source, still firing after this long (severity error; a lone warning
    needs corroboration), or critical. 0 opens at once."""
    chronic_onsets: int = 3
    """A source (alert key) with this many onsets over ``chronic_window_seconds`` (not counting
    the last 15 minutes) is chronic: it opens no incident and weighs less. 0 turns this off."""
    chronic_window_seconds: float = 86_400


class Settings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    otlp_grpc: str = "127.0.0.1:4317"
    otlp_http: str = "127.0.0.1:4318"
    api: str = "127.0.0.1:8080"
    api_bearer_token: str = ""
    """When set, the HTTP API (all but ``/healthz`` and ``/readyz``) wants
    ``Authorization: Bearer <token>``; empty: no check. Separate from ``ingest.bearer_token``."""
    data_dir: str = "./opstrata-data"
    ingest: IngestSettings = msgspec.field(default_factory=IngestSettings)
    storage: StorageSettings = msgspec.field(default_factory=StorageSettings)
    incidents: IncidentSettings = msgspec.field(default_factory=IncidentSettings)
    disabled_plugins: list[str] = msgspec.field(default_factory=list)
    """Plugins not to load, by name (built-in or third-party)."""
    plugins: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)
    """Each plugin's own section, ``[plugins.<name>]``; validated by the plugin."""

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)


def parse_address(text: str, key: str = "address") -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 hosts in brackets) → ``(host, port)``; port 0 picks a free port."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise SettingsError(f"{key}: expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port_text)


def _env_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def _from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, text in environ.items():
        if not name.startswith(ENV_PREFIX) or name == "OPSTRATA_CONFIG":
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = _env_value(text)
    return tree


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Settings from defaults, the TOML file, the environment and ``overrides`` (flags)."""
    environ = os.environ if environ is None else environ
    tree: dict[str, Any] = {}
    config_file = config_file or environ.get("OPSTRATA_CONFIG")
    if config_file:
        try:
            tree = tomllib.loads(Path(config_file).read_text())
        except OSError as exc:
            raise SettingsError(f"config file {config_file}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"config file {config_file}: {exc}") from exc
    _merge(tree, _from_env(environ))
    _merge(tree, {k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        settings = msgspec.convert(tree, Settings, str_keys=True)
    except msgspec.ValidationError as exc:
        raise SettingsError(f"invalid setting: {exc}") from exc
    for key in ("otlp_grpc", "otlp_http", "api"):
        parse_address(getattr(settings, key), key)
    if settings.ingest.queue_bytes < settings.ingest.max_request_bytes:
        raise SettingsError("ingest.queue_bytes must be at least ingest.max_request_bytes")
    if settings.ingest.admission_wait_seconds < 0:
        raise SettingsError("ingest.admission_wait_seconds must be 0 or more")
    if (settings.ingest.admission_wait_bytes or 0) < 0:
        raise SettingsError("ingest.admission_wait_bytes must be 0 or more")
    return settings
