"""Short profile of the reliability harness (tests/reliability/): the same
scenarios as `make test-reliability` with small counts, so they run in
every `make test` and `make test-asan`."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "reliability"))
import rel_harness as h  # noqa: E402


def test_kill_loop_short(tmp_path):
    """300 messages over SMTP and HTTP, 5 SIGKILLs while submitting and
    delivering: every acknowledged (Message-ID, recipient) is delivered."""
    f = h.kill_loop(tmp_path, messages=300, kills=5, max_size=256 * 1024, max_rcpts=20,
                    smtp_workers=2, http_workers=2)
    assert f["lost"] == 0


def test_disk_full_short(tmp_path):
    f = h.disk_full(tmp_path, fs_size="16m", leave=2 << 20, msg_size=32 * 1024, after=6)
    if isinstance(f, str):
        pytest.skip(f)


def test_receiver_faults_short(tmp_path):
    """One round of every receiver fault; final states and reasons checked."""
    h.receiver_faults(tmp_path, rounds=1)


def test_resource_exhaustion_short(tmp_path):
    """1,000 idle connections, 50 slowloris senders, 10 non-readers."""
    f = h.resource_exhaustion(tmp_path, idle=1000, loris=50, readers=10)
    if isinstance(f, str):
        pytest.skip(f)


def test_bad_tls_short(tmp_path):
    """The bad-TLS scenario is already small: the same run as the full profile."""
    h.bad_tls(tmp_path)


def test_leak_run_short(tmp_path):
    """200 messages, SIGTERM, clean exit; under make test-asan LeakSanitizer
    checks the exit (make test-valgrind runs 1,000 under valgrind)."""
    f = h.leak_run(tmp_path, messages=200)
    assert f["exit"] == 0
