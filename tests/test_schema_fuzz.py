"""A bounded schemathesis run against the OpenAPI schema at ``/schema``: no request may get a
500. The server holds real telemetry (``tests/querysetup.py``), so queries reach the store."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.serverproc import ServerProcess

MAX_EXAMPLES = 5


def _schemathesis() -> list[str]:
    found = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    return [found] if found else [sys.executable, "-m", "schemathesis.cli"]


def test_no_server_errors_under_schemathesis(
    query_server: tuple[ServerProcess, dict], tmp_path: Path
) -> None:
    server, _ = query_server
    command = [
        *_schemathesis(),
        "run",
        server.api_base + "/schema/openapi.json",
        "--checks",
        "not_a_server_error",
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        "20261125",
        "--request-timeout",
        "30",
        "--no-color",
    ]
    # Its example database and reports go to a scratch directory, not the checkout.
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    report = run.stdout[-8000:] + run.stderr[-2000:]
    assert "Server error" not in report, report + "".join(server.output[-50:])
    assert run.returncode == 0, report
    assert server.proc is not None and server.proc.poll() is None  # still up
