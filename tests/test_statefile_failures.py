"""A state save that cannot be written (disk full, the state directory gone) costs one attempt
per save interval, never one per batch: each attempt encodes the whole state, GIL held. The
consumer goes on learning, its offset stays held at the last save written, and once the
directory is back a save is written again (``opstrata.statefile``)."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import opstrata.statefile as statefile
from opstrata.consumers import CommittedBatch, ConsumerContext
from opstrata.otlp.decoder import Encoding, decode_request
from opstrata.otlp.limits import DecodeLimits
from opstrata.plugins.aiops.config import AiopsConfig
from opstrata.plugins.aiops.consumers import LogsConsumer
from opstrata.schema import Signal
from tests.test_aiops_mlops_durable import T0, _log_request


def _batch(n: int) -> CommittedBatch:
    request = _log_request([f"request {n} took {i} ms on worker w{i}" for i in range(5)], T0)
    decoded = decode_request(Signal.LOG_RECORDS, request, Encoding.PROTOBUF, DecodeLimits())
    return CommittedBatch.of(n, decoded.batches)


def test_a_failing_save_is_tried_once_per_interval_and_holds_the_offset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    attempts = []
    write = statefile.write_atomically

    def counted(path: Path, data: bytes) -> None:
        attempts.append(len(data))
        write(path, data)

    monkeypatch.setattr(statefile, "write_atomically", counted)
    state = tmp_path / "state"
    state.mkdir()
    ctx = ConsumerContext("aiops", "logs", state, lambda *_: None, None, {})
    consumer = LogsConsumer(AiopsConfig(save_seconds=10))
    consumer.start(ctx)
    saves = consumer.state_file
    assert saves is not None and saves.min_seconds == 5
    now = [0.0]
    saves.clock = lambda: now[0]  # the schedule's wall clock, moved by the test
    for n in range(1, 4):
        consumer.consume(_batch(n), ctx)
    consumer.save_state()
    assert saves.saved_seq == 3 and consumer.durable_upto() is None

    # The state directory is gone; a file stands in its place (root writes anywhere else).
    shutil.rmtree(state)
    state.write_text("not a directory")
    attempts.clear()
    caplog.set_level(logging.WARNING, logger="opstrata.statefile")
    for n in range(4, 64):  # one batch a second for a minute
        now[0] += 1.0
        consumer.consume(_batch(n), ctx)  # does not raise
        assert consumer.durable_upto() == 3  # held at the last save written
    # Due at 10 s, then backing off 5, 10, 10, ... s: at 10, 15, 25, 35, 45, 55 (not 51 times).
    assert len(attempts) == 6
    assert saves.save_failures == 6 and saves.failing == 6 and saves.saves == 2
    assert "NotADirectoryError" in saves.last_save_error
    warned = [r for r in caplog.records if r.name == "opstrata.statefile"]
    assert len(warned) == 1 and "cannot save state" in warned[0].getMessage()

    # The directory is back: the next attempt (10 s after the last) is written.
    state.unlink()
    state.mkdir()
    for n in range(64, 70):
        now[0] += 1.0
        consumer.consume(_batch(n), ctx)
    assert len(attempts) == 7 and saves.saved_seq == 68  # due at 65 s: batch 68
    assert saves.failing == 0 and saves.save_failures == 6 and saves.saves == 3
    assert consumer.durable_upto() == 68  # batch 69 is not saved yet
    assert [r.getMessage() for r in caplog.records][-1].startswith("state saved to")

    again = LogsConsumer(AiopsConfig(save_seconds=10))
    again.start(ctx)
    assert again.state_file is not None and again.state_file.loaded_seq == 68
    assert again.logs.miner.templates() == consumer.logs.miner.templates()


def test_a_state_directory_gone_at_start_does_not_stop_the_consumer(tmp_path: Path) -> None:
    """The first save (at start, when no state file exists) fails too: the consumer starts,
    learns, and its offset is held at 'nothing saved'."""
    state = tmp_path / "missing"
    ctx = ConsumerContext("aiops", "logs", state, lambda *_: None, None, {})
    consumer = LogsConsumer(AiopsConfig(save_seconds=10))
    consumer.start(ctx)
    assert consumer.state_file is not None and consumer.state_file.save_failures == 1
    consumer.consume(_batch(1), ctx)
    assert consumer.durable_upto() == -1
    assert consumer.logs.miner.templates()  # learnt


def test_a_failed_atomic_write_leaves_no_partial_file(tmp_path: Path) -> None:
    """A write that fails (here the rename: a directory stands at the target; and the write
    itself: past the file size limit, as a full disk) raises and leaves no ``.partial`` file
    holding disk space."""
    target = tmp_path / "state.json"
    target.mkdir()
    (target / "inside").write_text("x")  # a non-empty directory: the rename fails
    with pytest.raises(OSError):
        statefile.write_atomically(target, b"x" * 100_000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]

    # The write itself fails midway (EFBIG past RLIMIT_FSIZE), in a child process: the limit
    # and the ignored SIGXFSZ must not touch this one.
    script = (
        "import resource, signal, sys\n"
        "from pathlib import Path\n"
        "from opstrata.statefile import write_atomically\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))\n"
        "try:\n"
        "    write_atomically(Path(sys.argv[1]), b'y' * 1_000_000)\n"
        "except OSError as exc:\n"
        "    print(type(exc).__name__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "big.json")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.strip() == "OSError"  # EFBIG: File too large
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]
