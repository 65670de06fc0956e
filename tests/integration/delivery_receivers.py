"""Receivers and DNS for the delivery tests.

ScriptedSMTP is an asyncio SMTP server (our own, on a thread) whose every
reply can be scripted per phase or per recipient: it can answer 4xx/5xx,
drop the connection in DATA, stall after DATA, offer or withhold
PIPELINING/STARTTLS/SMTPUTF8/AUTH, and inject bytes after "220" to
STARTTLS. It counts connections (total and concurrent) and records what it
accepted. Dnsmasq runs the real dnsmasq on a loopback address.
Everything binds to 127.0.0.0/8 only and is stopped by its own handle.
"""
import asyncio
import base64
import os
import random
import signal
import socket
import subprocess
import threading
import time

from conftest import SLOW


def loopback_net():
    """A random 127.a.b. prefix so parallel tests do not collide."""
    return f"127.{random.randint(1, 254)}.{random.randint(1, 254)}."


def free_port_on(hosts):
    """A port that is free on every one of the given loopback addresses."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind((hosts[0], 0))
            port = s.getsockname()[1]
        ok = True
        for h in hosts[1:]:
            with socket.socket() as t:
                try:
                    t.bind((h, port))
                except OSError:
                    ok = False
                    break
        if ok:
            return port
    raise RuntimeError("no common free port")


def wait_for(pred, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout * SLOW
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Dnsmasq:
    """dnsmasq answering for *.test only (NXDOMAIN for unknown names)."""

    def __init__(self, ip, records, port=None):
        self.ip = ip
        self.port = port or free_port_on([ip])
        self.args = ["dnsmasq", "--no-daemon", "--conf-file=/dev/null", f"--port={self.port}",
                     f"--listen-address={ip}", "--bind-interfaces", "--no-resolv", "--no-hosts",
                     "--local=/test/", "--pid-file="] + records
        self.proc = None

    @property
    def server(self):
        return f"{self.ip}:{self.port}"

    def start(self):
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 5 * SLOW
        while time.monotonic() < deadline:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(0.2)
                # A minimal query for "x.test" A; any answer means it is up.
                q = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x01x\x04test\x00\x00\x01\x00\x01"
                try:
                    s.sendto(q, (self.ip, self.port))
                    s.recvfrom(512)
                    return self
                except OSError:
                    time.sleep(0.05)
        raise AssertionError("dnsmasq did not start: " + self.proc.stderr.read(2000).decode())

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Message:
    def __init__(self, mail_from, rcpts, data, tls, params):
        self.mail_from = mail_from
        self.rcpts = rcpts
        self.data = data
        self.tls = tls
        self.params = params
        self.at = time.monotonic()


class ScriptedSMTP:
    """A scriptable SMTP receiver. Hooks return a reply line (str) or None
    for the default; replies starting with 421 close the connection."""

    def __init__(self, host, port, *, pipelining=True, smtputf8=True, eightbitmime=True,
                 starttls=None, implicit_tls=None, auth=None, greeting="220 mx.test ESMTP scripted",
                 mail=None, rcpt=None, data=None, dot=None, drop_in_data=False,
                 stall_after_data=False, inject_after_starttls=b"", auth_mechs="PLAIN LOGIN"):
        self.host, self.port = host, port
        self.pipelining, self.smtputf8, self.eightbitmime = pipelining, smtputf8, eightbitmime
        self.starttls, self.implicit_tls, self.auth = starttls, implicit_tls, auth
        self.greeting = greeting
        self.mail, self.rcpt, self.data, self.dot = mail, rcpt, data, dot
        self.drop_in_data, self.stall_after_data = drop_in_data, stall_after_data
        self.inject_after_starttls = inject_after_starttls
        self.auth_mechs = auth_mechs
        self.connections = 0
        self.active = 0
        self.max_active = 0
        self.messages = []
        self.commands = []
        self.pipelined = False
        self.auth_seen = []
        self.lock = threading.Lock()
        self.loop = None
        self.thread = None

    # ---- lifecycle ----
    def start(self):
        ready = threading.Event()

        def run():
            self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)
            self.server = self.loop.run_until_complete(
                asyncio.start_server(self._session, self.host, self.port, ssl=self.implicit_tls))
            ready.set()
            self.loop.run_forever()
            self.server.close()
            self.loop.run_until_complete(self.server.wait_closed())
            for t in asyncio.all_tasks(self.loop):
                t.cancel()
            self.loop.run_until_complete(asyncio.sleep(0))
            self.loop.close()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        if not ready.wait(5):
            raise AssertionError("receiver did not start")
        return self

    def stop(self):
        if self.loop and self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *a):
        self.stop()

    def delivered_rcpts(self):
        with self.lock:
            return [r for m in self.messages for r in m.rcpts]

    # ---- the session ----
    async def _session(self, reader, writer):
        with self.lock:
            self.connections += 1
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            await self._run(reader, writer, tls=self.implicit_tls is not None)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError, OSError):
            pass
        finally:
            with self.lock:
                self.active -= 1
            try:
                writer.close()
            except Exception:
                pass

    async def _reply(self, writer, line):
        writer.write(line.encode() + b"\r\n")
        await writer.drain()
        return not line.startswith("421")

    def _hook(self, hook, *args):
        if hook is None:
            return None
        return hook(*args) if callable(hook) else hook

    async def _run(self, reader, writer, tls):
        if not await self._reply(writer, self.greeting):
            return
        mail_from, rcpts, params = None, [], ""
        while True:
            raw = await reader.readline()
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            verb = line.split(" ", 1)[0].upper()
            with self.lock:
                self.commands.append(line if not verb == "AUTH" else "AUTH ...")
            if verb == "EHLO":
                caps = ["250-mx.test hello"]
                if self.pipelining:
                    caps.append("250-PIPELINING")
                if self.eightbitmime:
                    caps.append("250-8BITMIME")
                if self.smtputf8:
                    caps.append("250-SMTPUTF8")
                if self.starttls is not None and not tls:
                    caps.append("250-STARTTLS")
                if self.auth:
                    caps.append("250-AUTH " + self.auth_mechs)
                caps.append("250 SIZE 50000000")
                writer.write(("\r\n".join(caps) + "\r\n").encode())
                await writer.drain()
                mail_from, rcpts = None, []
            elif verb == "HELO":
                await self._reply(writer, "250 mx.test")
            elif verb == "STARTTLS" and self.starttls is not None and not tls:
                writer.write(b"220 2.0.0 go ahead\r\n" + self.inject_after_starttls)
                await writer.drain()
                await writer.start_tls(self.starttls)
                tls = True
                mail_from, rcpts = None, []
            elif verb == "AUTH" and self.auth and (tls or self.starttls is None):
                ok = await self._auth(line, reader, writer)
                await self._reply(writer, "235 2.7.0 ok" if ok else "535 5.7.8 bad credentials")
            elif verb == "MAIL":
                if reader._buffer:  # the client sent more before our reply: pipelining
                    self.pipelined = True
                r = self._hook(self.mail, line)
                if r and not r.startswith("2"):
                    if not await self._reply(writer, r):
                        return
                    continue
                mail_from = line[10:].split(">", 1)[0].lstrip("<")
                params = line.split(">", 1)[1].strip() if ">" in line else ""
                rcpts = []
                await self._reply(writer, r or "250 2.1.0 ok")
            elif verb == "RCPT":
                addr = line[8:].split(">", 1)[0].lstrip("<")
                if mail_from is None:
                    await self._reply(writer, "503 5.5.1 MAIL first")
                    continue
                r = self._hook(self.rcpt, addr)
                if r is None or r.startswith("2"):
                    rcpts.append(addr)
                if not await self._reply(writer, r or "250 2.1.5 ok"):
                    return
            elif verb == "DATA":
                if not rcpts:
                    await self._reply(writer, "554 5.5.1 no valid recipients")
                    continue
                r = self._hook(self.data, None)
                if r:
                    if not await self._reply(writer, r):
                        return
                    continue
                await self._reply(writer, "354 go ahead")
                body = await self._read_body(reader, writer)
                if body is None:
                    return
                if self.stall_after_data:
                    await asyncio.sleep(3600)
                msg = Message(mail_from, list(rcpts), body, tls, params)
                r = self._hook(self.dot, msg)
                if r is None or r.startswith("2"):
                    with self.lock:
                        self.messages.append(msg)
                if not await self._reply(writer, r or "250 2.0.0 queued"):
                    return
                mail_from, rcpts = None, []
            elif verb == "RSET":
                mail_from, rcpts = None, []
                await self._reply(writer, "250 2.0.0 ok")
            elif verb == "NOOP":
                await self._reply(writer, "250 2.0.0 ok")
            elif verb == "QUIT":
                await self._reply(writer, "221 2.0.0 bye")
                return
            else:
                await self._reply(writer, "500 5.5.2 unknown command")

    async def _read_body(self, reader, writer):
        lines = []
        while True:
            raw = await reader.readline()
            if not raw:
                return None
            if self.drop_in_data and len(lines) >= 2:
                writer.transport.abort()
                return None
            if raw == b".\r\n":
                break
            if raw.startswith(b"."):
                raw = raw[1:]
            lines.append(raw)
        return b"".join(lines)

    async def _auth(self, line, reader, writer):
        parts = line.split()
        if parts[1].upper() == "PLAIN":
            blob = parts[2] if len(parts) > 2 else None
            if blob is None:
                await self._reply(writer, "334 ")
                blob = (await reader.readline()).decode().strip()
            _, user, pw = base64.b64decode(blob).decode().split("\0")
        else:
            await self._reply(writer, "334 VXNlcm5hbWU6")
            user = base64.b64decode((await reader.readline()).strip()).decode()
            await self._reply(writer, "334 UGFzc3dvcmQ6")
            pw = base64.b64decode((await reader.readline()).strip()).decode()
        with self.lock:
            self.auth_seen.append((parts[1].upper(), user, pw))
        return self.auth.get(user) == pw


# ---- driving the server -------------------------------------------------------

def delivery_sections(dns=None, mx_port=25, **delivery):
    """[delivery] settings for a test: running, fast retries, short timeouts."""
    d = {"paused": "no", "scheduler_interval": "100ms", "retry_schedule": "300ms",
         "timeout_connect": "3s", "timeout_greeting": "5s", "timeout_mail": "5s",
         "timeout_rcpt": "5s", "timeout_data_init": "5s", "timeout_data_block": "5s",
         "timeout_data_term": "5s", "idle_timeout": "1s", "dns_timeout": "2s",
         "mx_port": str(mx_port)}
    if dns:
        d["dns_servers"] = dns
    d.update({k: str(v) for k, v in delivery.items()})
    return {"delivery": d}


def submit(srv, count, mail_from, rcpts, size=200, ingress="smtp", subject="test"):
    """Put messages into the server's spool with tests/helpers/submit_msgs."""
    from conftest import HELPERS
    db = os.path.join(srv.spool_dir, "spool.db")
    p = subprocess.run([os.path.join(HELPERS, "submit_msgs"), db, str(count), mail_from,
                        ",".join(rcpts), str(size), ingress, subject],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return p.stdout.split()


def show(srv, msg_id):
    import json
    return json.loads(srv.cli("queue", "show", msg_id, "--json").stdout)


def rcpt_states(srv, msg_id):
    return {r["email"]: r["state"] for r in show(srv, msg_id)["recipients"]}


def wait_states(srv, msg_id, want, timeout=15):
    """Wait until every recipient named in `want` has its wanted state."""
    last = {}

    def ok():
        nonlocal last
        last = rcpt_states(srv, msg_id)
        return all(last.get(k) == v for k, v in want.items())
    try:
        wait_for(ok, timeout, f"states {want}")
    except AssertionError:
        raise AssertionError(f"wanted {want}, have {last}; events: {show(srv, msg_id)['events']}")
    return show(srv, msg_id)


def events_of(msg, type_, rcpt=None):
    return [e for e in msg["events"] if e["type"] == type_ and (rcpt is None or e["recipient"] == rcpt)]


def suppressions(srv):
    """email -> reason, read straight from the spool (read-only)."""
    import sqlite3
    db = sqlite3.connect(f"file:{os.path.join(srv.spool_dir, 'spool.db')}?mode=ro", uri=True, timeout=10)
    try:
        return dict(db.execute("SELECT email, reason FROM suppressions").fetchall())
    finally:
        db.close()


class Zone:
    """dnsmasq serving `domain` with its MX on `ip`; plus the sender's
    domain src.test on `ndr_ip` (for non-delivery reports)."""

    def __init__(self, records):
        self.pre = loopback_net()
        self.dns = Dnsmasq(self.pre + "1", records(self.pre)).start()

    def stop(self):
        self.dns.stop()
