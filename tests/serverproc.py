"""Start ``opstrata serve`` as a real process on free loopback ports, for tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

_LISTEN = re.compile(r"opstrata: (OTLP/gRPC|OTLP/HTTP|API) listening on (\S+)")


@dataclass
class ServerProcess:
    data_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    config_file: Path | None = None
    proc: subprocess.Popen[str] | None = None
    addresses: dict[str, str] = field(default_factory=dict)
    output: list[str] = field(default_factory=list)

    @property
    def grpc_endpoint(self) -> str:
        return self.addresses["OTLP/gRPC"]

    @property
    def http_base(self) -> str:
        return "http://" + self.addresses["OTLP/HTTP"]

    @property
    def api_base(self) -> str:
        return "http://" + self.addresses["API"]

    def start(self, timeout: float = 60.0) -> ServerProcess:
        cmd = [
            sys.executable, "-m", "opstrata.cli", "serve",
            "--otlp-grpc", "127.0.0.1:0", "--otlp-http", "127.0.0.1:0", "--api", "127.0.0.1:0",
            "--data-dir", str(self.data_dir),
        ]  # fmt: skip
        if self.config_file is not None:
            cmd += ["--config", str(self.config_file)]
        env = {**os.environ, **self.env}
        self.output = []
        self.addresses = {}
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        ready = threading.Event()

        def pump() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self.output.append(line)
                match = _LISTEN.search(line)
                if match:
                    self.addresses[match.group(1)] = match.group(2)
                if "opstrata: ready" in line:
                    ready.set()

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError("server did not start:\n" + "".join(self.output))
        return self

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait; the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """``kill -9``."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def api(self, path: str, **params: object) -> httpx.Response:
        return httpx.get(self.api_base + path, params=params, timeout=30)
