"""Crash safety of the spool: nothing acknowledged is lost on SIGKILL.

A child process (tests/helpers/spool_writer.c) submits through the real
group-commit path and prints each id only from its commit callback, exactly
when a server would acknowledge. We SIGKILL it at random moments, 25 times,
reopening the same spool each time, then check that every printed id is
stored with all its recipients and that SQLite's integrity check passes.
"""
import os
import random
import signal
import sqlite3
import subprocess
import time

from conftest import HELPERS, SLOW, run_cli

WRITER = os.path.join(HELPERS, "spool_writer")


def run_and_kill(db, seconds, inflight=32, max_size=0, body=2048):
    p = subprocess.Popen([WRITER, db, str(inflight), str(max_size), str(body)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(seconds)
    p.send_signal(signal.SIGKILL)
    out, err = p.communicate(timeout=10 * SLOW)
    assert p.returncode == -signal.SIGKILL, err.decode()
    lines = out.decode().splitlines()
    # The last line may be cut by the kill mid-write; a cut id is not acknowledged.
    return [line for line in lines if len(line) == 26 and not line.startswith("ERR")]


def test_sigkill_never_loses_acknowledged_messages(tmp_path):
    db = str(tmp_path / "spool.db")
    rng = random.Random(os.getpid())
    acked = []
    kills = 25
    for _ in range(kills):
        acked += run_and_kill(db, rng.uniform(0.05, 0.4) * SLOW)
    assert len(acked) > 200, "the writer acknowledged too few messages to prove anything"

    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    stored = {uid for (uid,) in con.execute("SELECT uid FROM messages")}
    missing = [i for i in acked if i not in stored]
    assert not missing, f"{len(missing)} acknowledged ids lost after {kills} kills"
    # Every stored message is whole: three recipients each, none half-written.
    partial = con.execute("SELECT COUNT(*) FROM messages m WHERE "
                          "(SELECT COUNT(*) FROM recipients r WHERE r.msg = m.id) != 3").fetchone()[0]
    assert partial == 0
    con.close()

    # The CLI agrees, through the spool's own code.
    conf = tmp_path / "c.conf"
    conf.write_text(f"[server]\nspool_dir = {tmp_path}\n")
    assert run_cli("queue", "check", config=str(conf)).stdout.strip() == "ok"


def test_spool_full_fails_cleanly_and_keeps_serving_reads(tmp_path):
    db = str(tmp_path / "spool.db")
    # 512 KB spool, 40 KB messages: fills within a moment.
    p = subprocess.Popen([WRITER, db, "4", str(512 * 1024), str(40 * 1024)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20 * SLOW
    lines = []
    while time.monotonic() < deadline:
        line = p.stdout.readline().decode()
        if not line:
            break
        lines.append(line.strip())
        if sum(1 for x in lines if x.startswith("ERR")) >= 5:
            break
    p.kill()
    p.communicate()
    errors = [x for x in lines if x.startswith("ERR")]
    acked = [x for x in lines if len(x) == 26]
    assert errors, "the spool never reported full"
    assert all("spool full" in x for x in errors), errors[:3]
    assert acked
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    stored = {uid for (uid,) in con.execute("SELECT uid FROM messages")}
    assert set(acked) <= stored
    con.close()
    conf = tmp_path / "c.conf"
    conf.write_text(f"[server]\nspool_dir = {tmp_path}\n")
    listed = run_cli("queue", "list", "--json", "--limit", "1000", config=str(conf)).stdout
    assert acked[0] in listed
