"""bench/lib/smtpload — the relay benchmark's load generator — against the real server.

bench/relay's figures are only as good as this tool: it must AUTH with an
API key, send exactly the messages and recipients asked for, count only
what the server acknowledged with 250, and report refusals instead of
hiding them.
"""
import json
import os
import subprocess

import pytest

from conftest import ROOT


@pytest.fixture(scope="module")
def smtpload(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("bench") / "smtpload")
    subprocess.run(["gcc", "-std=c17", "-D_GNU_SOURCE", "-O2", "-Wall", "-Wextra", "-Wshadow", "-Wformat=2",
                    "-Werror", "-pthread", "-o", out, os.path.join(ROOT, "bench", "lib", "smtpload.c")],
                   check=True, timeout=120)
    return out


def key_file(srv, tmp_path, token):
    path = tmp_path / "key"
    path.write_text(token + "\n")
    os.chmod(path, 0o600)
    return str(path)


def run(smtpload, srv, *args):
    p = subprocess.run([smtpload, "-H", "127.0.0.1", "-p", str(srv.smtp_port), *args],
                       capture_output=True, text=True, timeout=120)
    return p.returncode, json.loads(p.stdout)


def test_sends_and_counts_what_the_server_stored(make_server, smtpload, tmp_path):
    srv = make_server({"smtp": {"allow_plaintext_auth": "yes"}})
    key = key_file(srv, tmp_path, srv.create_key())
    rc, r = run(smtpload, srv, "-s", "4", "-m", "40", "-r", "3", "-l", "2000", "-a", key)
    assert rc == 0 and r["sent"] == 40 and r["failed"] == 0
    assert 0 < r["p50_ms"] <= r["p99_ms"] <= r["max_ms"]
    stats = json.loads(srv.cli("queue", "stats", "--json").stdout)
    assert stats["queued"] == 40 * 3
    # Connection reuse (-k) sends the same count over fewer sessions.
    rc, r = run(smtpload, srv, "-s", "2", "-m", "10", "-k", "5", "-a", key)
    assert rc == 0 and r["sent"] == 10
    assert json.loads(srv.cli("queue", "stats", "--json").stdout)["queued"] == 130


def test_refusals_are_reported_not_counted(make_server, smtpload, tmp_path):
    srv = make_server({"smtp": {"allow_plaintext_auth": "yes", "auth_fail_delay": "10ms"}})
    bad = key_file(srv, tmp_path, "ph_nosuchkey_0000000000000000")
    rc, r = run(smtpload, srv, "-s", "1", "-m", "2", "-a", bad)
    assert rc == 1 and r["sent"] == 0 and r["failed"] == 2
    assert "session" in r["last_error"]
    # Without AUTH the submission port refuses MAIL: nothing stored.
    rc, r = run(smtpload, srv, "-s", "1", "-m", "1")
    assert rc == 1 and r["sent"] == 0 and r["failed"] == 1
    assert json.loads(srv.cli("queue", "stats", "--json").stdout)["queued"] == 0
