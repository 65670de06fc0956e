"""Receiver faults: scripted 4xx/5xx, drops, stalls, TLS handshake deaths."""
import json
import re
import socket
import threading
from collections import Counter

from rel_common import ASAN, MSGID, RelServer, free_port, log, relay_sections, spool_submit, wait_until


# ---- scenario 3: receiver faults ------------------------------------------------------------

class TlsDropper:
    """A receiver that offers STARTTLS, answers 220 to it, reads the
    ClientHello and closes: a peer dying in the TLS handshake."""

    def __init__(self):
        self.port = free_port()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.hellos = 0
        self.running = True
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def _loop(self):
        while self.running:
            try:
                c, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            try:
                self._session(c)
            except OSError:
                pass
            finally:
                c.close()

    def _session(self, c):
        c.settimeout(5)
        f = c.makefile("rb")
        c.sendall(b"220 tlsdrop.test ESMTP\r\n")
        for _ in range(10):
            line = f.readline(1024)
            if not line:
                return
            verb = line.split()[0].upper() if line.split() else b""
            if verb == b"EHLO":
                c.sendall(b"250-tlsdrop.test\r\n250 STARTTLS\r\n")
            elif verb == b"STARTTLS":
                c.sendall(b"220 2.0.0 go ahead\r\n")
                if c.recv(5):  # the TLS record header of the ClientHello
                    self.hellos += 1
                return
            else:
                c.sendall(b"250 ok\r\n")

    def stop(self):
        self.running = False
        self.thread.join(5)
        self.sock.close()


def receiver_faults(tmp_path, rounds=1):
    """A scripted receiver mixes 421/451/452/550/552/554, drops the
    connection mid-DATA, stalls past the timeout; another closes during the
    TLS handshake. Every recipient must reach the state its script implies
    and its events must carry the reason."""
    from delivery_receivers import ScriptedSMTP, events_of, rcpt_states, show
    seen = Counter()
    lock = threading.Lock()

    def nth(key):
        with lock:
            seen[key] += 1
            return seen[key]

    # local part -> (reply while failing, failing attempts (None: always), final state)
    scripts = {"ok": (None, 0, "delivered"),
               "t421": ("421 4.3.2 shutting down for a moment", 1, "delivered"),
               "t451": ("451 4.3.0 local error, try again", 2, "delivered"),
               "t452": ("452 4.2.2 mailbox over quota for now", 1, "delivered"),
               "p550": ("550 5.1.1 no such user here", None, "bounced"),
               "p552": ("552 5.2.2 mailbox full for good", None, "bounced"),
               "p554": ("554 5.7.1 rejected by policy", None, "bounced"),
               "perm451": ("451 4.4.5 never today", None, "expired")}

    def rcpt(addr):
        local = addr.split("@")[0].split("_")[0]
        reply, fails, _ = scripts.get(local, (None, 0, "delivered"))
        if reply is None:
            return None
        if fails is None or nth(("rcpt", addr)) <= fails:
            return reply
        return None

    class FaultRx(ScriptedSMTP):
        async def _read_body(self, reader, writer):
            body = await ScriptedSMTP._read_body(self, reader, writer)
            if body is None:
                return None
            m = re.search(rb"Subject: (\w+) ", body)
            kind = m.group(1).decode() if m else ""
            key = ("body", m.group(0) + (MSGID.search(body) or m).group(0))
            if kind == "drop" and nth(key) == 1:
                writer.transport.abort()  # drop the connection in the middle of DATA
                return None
            if kind == "stall" and nth(key) == 1:
                import asyncio
                await asyncio.sleep(30)  # past timeout_data_term
            return body

    def dot(msg):
        if b"Subject: dot554 " in msg.data:
            return "554 5.6.0 message content rejected"
        return None

    rx = FaultRx("127.0.0.1", free_port(), rcpt=rcpt, dot=dot).start()
    tlsd = TlsDropper().start()
    srv = RelServer(tmp_path / "srv", relay_sections(
        rx.port, max_age=f"{(8 + rounds // 2) * (2 if ASAN else 1)}s", retry_schedule="200ms", timeout_data_term="1s",
        timeout_rcpt="2s", concurrency_penalty="100ms"))
    srv.sections["domain tls.test"] = {"route": "relay", "relay_host": "127.0.0.1",
                                       "relay_port": str(tlsd.port), "relay_tls": "starttls",
                                       "tls_policy": "encrypt"}
    srv.write_config()
    try:
        srv.start_and_wait()
        expect = {}
        for r in range(rounds):
            rcpts = [f"{k}_{r}@f.test" for k in scripts]
            [mid] = spool_submit(srv, 1, rcpts, f"mixed{r}")
            expect[mid] = {a: scripts[a.split("_")[0]][2] for a in rcpts}
            for kind, state in (("drop", "delivered"), ("stall", "delivered"), ("dot554", "bounced")):
                [mid] = spool_submit(srv, 1, [f"{kind}_{r}@f.test"], kind)
                expect[mid] = {f"{kind}_{r}@f.test": state}
            [mid] = spool_submit(srv, 1, [f"hs_{r}@tls.test"], "handshake")
            expect[mid] = {f"hs_{r}@tls.test": "expired"}

        def settled():
            return all(rcpt_states(srv, mid) == want for mid, want in expect.items())
        try:
            wait_until(settled, 40 + 2 * rounds, "every recipient in its final state", 0.5)
        except AssertionError:
            bad = {mid: rcpt_states(srv, mid) for mid, want in expect.items()
                   if rcpt_states(srv, mid) != want}
            raise AssertionError(f"wrong final states: {bad}; wanted {expect}")
        reasons = check_fault_reasons(srv, expect, show, events_of)
        assert tlsd.hellos > 0, "the TLS handshake was never started"
        figures = {"messages": len(expect), "recipients": sum(len(w) for w in expect.values()),
                   "states": dict(Counter(s for w in expect.values() for s in w.values())),
                   "reasons": reasons}
        log(f"receiver faults result: {figures}")
        return figures
    finally:
        srv.kill()
        rx.stop()
        tlsd.stop()


def check_fault_reasons(srv, expect, show, events_of):
    """Each failure's events name the remote reply or the local reason."""
    reasons = {}
    for mid, want in expect.items():
        msg = show(srv, mid)
        for addr, state in want.items():
            local = addr.split("_")[0]
            evs = [e for e in msg["events"] if e.get("recipient") == addr]
            text = json.dumps(evs)
            if local in ("t421", "t451", "t452", "drop", "stall"):
                assert events_of(msg, "deferred", addr), f"{addr}: no deferred event: {text}"
            want_text = {"t421": "421", "t451": "4.3.0", "t452": "4.2.2", "p550": "5.1.1",
                         "p552": "5.2.2", "p554": "5.7.1", "perm451": "4.4.5", "dot554": "5.6.0"}
            if local in want_text:
                assert want_text[local] in text, f"{addr}: reason {want_text[local]} not in {text}"
            if state == "expired":
                assert events_of(msg, "expired", addr), f"{addr}: no expired event: {text}"
            replies = [(e.get("data") or {}).get("reply") for e in evs if e["type"] != "queued"]
            replies = [r for r in replies if r]
            failed = [r for r in replies if not r.startswith("2")]
            if failed or replies:
                reasons[local] = (failed or replies)[-1][:110]
    for local in ("drop", "stall", "hs", "perm451"):
        assert reasons.get(local), f"no reason recorded for {local}"
    assert "handshake" in reasons["hs"], reasons["hs"]
    return reasons
