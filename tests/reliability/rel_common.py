"""What every reliability scenario shares: the aiosmtpd sink, a Server
that can be killed and restarted many times, SMTP and HTTP submitting
clients with a ledger of what was acknowledged, and bounded waits.

Everything drives the real `posthaste serve` (the integration harness's
Server) against real clients (smtplib, requests) and real receivers
(aiosmtpd, or the scripted asyncio receiver of the delivery tests), on
loopback only. Every loop is bounded in count and time; only processes
started here are stopped, by their handle.
"""
import json
import os
import random
import re
import signal
import smtplib
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
INTEGRATION = os.path.join(os.path.dirname(HERE), "integration")
if INTEGRATION not in sys.path:
    sys.path.insert(0, INTEGRATION)

import requests  # noqa: E402
from aiosmtpd.controller import Controller  # noqa: E402

from conftest import ASAN, BIN, SLOW, Server, free_port  # noqa: E402,F401 (re-exported)

MSGID = re.compile(rb"(?im)^Message-ID:[ \t]*(<[^>\r\n]+>)")


def log(msg):
    """Progress lines for the full profile (pytest -s shows them)."""
    print(f"[reliability] {msg}", flush=True)


# ---- the receiver ---------------------------------------------------------------------------

class SinkHandler:
    """aiosmtpd handler: counts each (Message-ID, recipient) delivered and
    appends one JSON line per transaction to a dump file."""

    def __init__(self, dump_path):
        self.lock = threading.Lock()
        self.pairs = Counter()
        self.transactions = 0
        self.dump = open(dump_path, "a") if dump_path else None

    async def handle_DATA(self, server, session, envelope):
        m = MSGID.search(envelope.content.split(b"\r\n\r\n", 1)[0] + b"\r\n")
        mid = m.group(1).decode() if m else "<none>"
        with self.lock:
            self.transactions += 1
            for r in envelope.rcpt_tos:
                self.pairs[(mid, r.lower())] += 1
            if self.dump:
                self.dump.write(json.dumps({"mid": mid, "rcpts": envelope.rcpt_tos}) + "\n")
        return "250 2.0.0 stored"

    def snapshot(self):
        with self.lock:
            return Counter(self.pairs)


class Sink:
    """aiosmtpd on 127.0.0.1 (no TLS offered): the final destination."""

    def __init__(self, dump_path=None):
        self.port = free_port()
        self.handler = SinkHandler(dump_path)
        self.ctl = Controller(self.handler, hostname="127.0.0.1", port=self.port,
                              data_size_limit=64 * 1024 * 1024, ready_timeout=10)

    def start(self):
        self.ctl.start()
        return self

    def stop(self):
        self.ctl.stop()
        if self.handler.dump:
            self.handler.dump.close()


# ---- the server -----------------------------------------------------------------------------

def relay_sections(port, **delivery):
    """Deliver everything to 127.0.0.1:port in plain text, fast retries."""
    d = {"paused": "no", "route": "relay", "relay_host": "127.0.0.1", "relay_port": str(port),
         "relay_tls": "none", "tls_policy_relay": "none", "scheduler_interval": "100ms",
         "retry_schedule": "200ms,500ms,1s", "timeout_connect": "2s", "timeout_greeting": "3s",
         "timeout_mail": "3s", "timeout_rcpt": "3s", "timeout_data_init": "3s",
         "timeout_data_block": "5s", "timeout_data_term": "10s", "idle_timeout": "1s"}
    d.update({k: str(v) for k, v in delivery.items()})
    return {"delivery": d}


class RelServer(Server):
    """Server that can be started many times and told apart by its n-th
    'ready' line (Server.wait_log would match the first run's line)."""

    def __init__(self, tmpdir, extra=None):
        base = {"server": {"log_level": "info"},
                "smtp": {"allow_plaintext_auth": "yes"}}
        for section, values in (extra or {}).items():
            base.setdefault(section, {}).update(values)
        os.makedirs(str(tmpdir), exist_ok=True)
        super().__init__(tmpdir, base)
        self.starts = 0
        self.wrapper = []  # e.g. valgrind and its options

    def start(self, wait_ready=True):
        if not self.wrapper:
            return super().start(wait_ready)
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([*self.wrapper, BIN, "serve", "-c", self.config],
                                     stdout=self.log, stderr=self.log)
        return self

    def _seen_since(self, offset, event):
        needle = f'"event":"{event}"'.encode()
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return any(needle in raw.replace(b" ", b"") for raw in f)
        except FileNotFoundError:
            return False

    def start_and_wait(self, timeout=20):
        offset = os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0
        self.start(wait_ready=False)
        deadline = time.monotonic() + timeout * SLOW
        while time.monotonic() < deadline:
            if self._seen_since(offset, "ready"):
                self.starts += 1
                return self
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode} at start:\n" + self.tail())
            time.sleep(0.02)
        raise AssertionError("server not ready in time:\n" + self.tail())

    def kill(self):
        """SIGKILL if running; safe when never started."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if getattr(self, "log", None) and not self.log.closed:
            self.log.close()

    def tail(self, n=4000):
        with open(self.log_path, errors="replace") as f:
            return f.read()[-n:]

    def sigkill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.log.close()

    def rss_kb(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def stats(self):
        return json.loads(self.cli("queue", "stats", "--json").stdout)

    def integrity(self):
        """PRAGMA integrity_check through `posthaste queue check`, and directly."""
        p = self.cli("queue", "check", check=False)
        db = sqlite3.connect(os.path.join(self.spool_dir, "spool.db"), timeout=30)
        try:
            direct = db.execute("PRAGMA integrity_check").fetchone()[0]
        finally:
            db.close()
        return p.returncode, (p.stdout + p.stderr).strip(), direct


# ---- clients --------------------------------------------------------------------------------

def body_text(size, rng):
    """ASCII text of about `size` bytes in 76-character lines."""
    line = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789 ") for _ in range(75))
    n = max(1, size // 77)
    return "\r\n".join(line for _ in range(n)) + "\r\n"


def pick_size(rng, max_size):
    """1 KB..max_size, skewed small as transactional mail is (a few near the top)."""
    r = rng.random()
    if r < 0.85:
        return rng.randint(1024, 10 * 1024)
    if r < 0.98:
        return rng.randint(10 * 1024, min(100 * 1024, max_size))
    return rng.randint(min(100 * 1024, max_size), max_size)


class Ledger:
    """What the server acknowledged: Message-ID -> recipients, plus errors seen."""

    def __init__(self):
        self.lock = threading.Lock()
        self.acked = {}
        self.attempts = 0
        self.failures = Counter()

    def attempt(self):
        with self.lock:
            self.attempts += 1

    def ack(self, mid, rcpts):
        with self.lock:
            self.acked[mid] = [r.lower() for r in rcpts]

    def fail(self, why):
        with self.lock:
            self.failures[why] += 1

    def refused(self, why):
        """The server was down: the attempt sent nothing and is made again."""
        with self.lock:
            self.attempts -= 1
            self.failures[why] += 1

    def pairs(self):
        with self.lock:
            return {(m, r) for m, rs in self.acked.items() for r in rs}


def make_message(tag, i, rng, max_size, max_rcpts):
    nr = rng.randint(1, max_rcpts)
    rcpts = [f"u{rng.randint(0, 999)}.{k}@r{k % 7}.test" for k in range(nr)]
    rcpts = sorted(set(rcpts))
    mid = f"<{tag}.{i}.{rng.getrandbits(32):08x}@rel.test>"
    return mid, rcpts, pick_size(rng, max_size)


def smtp_worker(srv_ref, key, tag, count, ledger, seed, max_size, max_rcpts, deadline):
    """Submit `count` messages over SMTP (one connection reused), reconnecting
    whenever the server dies. A message counts as acknowledged only when
    DATA got its 250."""
    rng = random.Random(seed)
    conn = None
    i = 0
    while i < count and time.monotonic() < deadline:
        mid, rcpts, size = make_message(tag, i, rng, max_size, max_rcpts)
        msg = (f"From: app@src.test\r\nTo: list@r.test\r\nSubject: rel {tag} {i}\r\n"
               f"Message-ID: {mid}\r\n\r\n" + body_text(size, rng)).encode()
        ledger.attempt()
        try:
            if conn is None:
                try:
                    conn = smtplib.SMTP("127.0.0.1", srv_ref().smtp_port, timeout=30 * SLOW)
                except ConnectionRefusedError:
                    # Down between a kill and its restart. Counting this as a
                    # spent message let fast clients finish before the kills.
                    ledger.refused("smtp ConnectionRefusedError")
                    time.sleep(0.05)
                    continue
                conn.ehlo("rel.test")
                conn.login("app", key)
            refused = conn.sendmail("app@src.test", rcpts, msg)
            ledger.ack(mid, [r for r in rcpts if r not in refused])
            i += 1
        except (OSError, smtplib.SMTPException) as e:
            ledger.fail(f"smtp {type(e).__name__}")
            try:
                if conn:
                    conn.close()
            except Exception:
                pass
            conn = None
            i += 1  # an unacknowledged attempt is not retried: it may or may not be there
            time.sleep(0.05)
    if conn:
        try:
            conn.quit()
        except Exception:
            pass


def http_worker(srv_ref, key, tag, count, ledger, seed, max_size, max_rcpts, deadline):
    """Submit `count` messages with POST /v1/messages; acknowledged = 202."""
    rng = random.Random(seed)
    http = requests.Session()
    i = 0
    while i < count and time.monotonic() < deadline:
        mid, rcpts, size = make_message(tag, i, rng, max_size, max_rcpts)
        req = {"from": "app@src.test", "to": rcpts, "subject": f"rel {tag} {i}",
               "text": body_text(size, rng), "headers": {"Message-ID": mid}}
        ledger.attempt()
        try:
            r = http.post(srv_ref().api_url + "/v1/messages", json=req, timeout=30 * SLOW,
                          headers={"Authorization": f"Bearer {key}"})
            if r.status_code == 202:
                ok = [x["email"] for x in r.json()["recipients"] if x.get("status") == "queued"]
                ledger.ack(mid, ok)
            else:
                ledger.fail(f"http {r.status_code}")
        except (OSError, requests.RequestException) as e:
            http = requests.Session()
            time.sleep(0.05)
            if isinstance(e, requests.ConnectionError) and "refused" in str(e):
                ledger.refused("http ConnectionRefusedError")  # nothing sent: the same message again
                continue
            ledger.fail(f"http {type(e).__name__}")
        i += 1


def wait_until(pred, timeout, what, interval=0.2):
    deadline = time.monotonic() + timeout * SLOW
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout * SLOW:.0f}s waiting for {what}")


def spool_submit(srv, count, rcpts, subject, ingress="api"):
    """Messages straight into the spool (tests/helpers/submit_msgs), as the
    delivery tests do; ingress api so bounces send no report."""
    from delivery_receivers import submit
    return submit(srv, count, "app@src.test", rcpts, ingress=ingress, subject=subject)
