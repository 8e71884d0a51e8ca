from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pluginsupport import SAMPLE, Webhook
from tests.serverproc import ServerProcess


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A running server with its own data directory; stopped (gracefully) after the test."""
    proc = ServerProcess(tmp_path / "data").start()
    yield proc
    if proc.proc is not None and proc.proc.poll() is None:
        assert proc.stop() == 0, "".join(proc.output)


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for a module's read-mostly tests."""
    proc = ServerProcess(tmp_path_factory.mktemp("shared") / "data").start()
    yield proc
    assert proc.stop() == 0, "".join(proc.output)


@pytest.fixture(scope="session")
def query_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, dict]]:
    """One server holding the query tests' telemetry (``tests/querysetup.py``), shared by them."""
    from tests.querysetup import send_all

    proc = ServerProcess(tmp_path_factory.mktemp("query") / "data").start()
    sent = send_all(proc)
    yield proc, sent
    assert proc.stop() == 0, "".join(proc.output)


@pytest.fixture(scope="session")
def sample_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample plugin pip-installed (with its entry point) into a directory of its own."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
         str(target), str(SAMPLE)],
        check=True,
    )  # fmt: skip
    return target


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    """A local receiver for the webhook notifier's posts."""
    hook = Webhook()
    yield hook
    hook.server.shutdown()
