"""Disk full: the spool on a tmpfs mounted by the test."""
import json
import os
import random
import smtplib
import subprocess

import requests

from rel_common import SLOW, Ledger, RelServer, Sink, body_text, log, relay_sections, wait_until


# ---- scenario 2: disk full ------------------------------------------------------------------

class Tmpfs:
    """A tmpfs of `size` mounted at `path` by this test and unmounted by it."""

    def __init__(self, path, size):
        self.path = str(path)
        self.size = size
        self.mounted = False

    def mount(self):
        os.makedirs(self.path, exist_ok=True)
        p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size},mode=0700", "tmpfs",
                            self.path], capture_output=True, text=True)
        if p.returncode != 0:
            return p.stderr.strip() or f"mount exited {p.returncode}"
        self.mounted = True
        return None

    def free(self):
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def umount(self):
        if self.mounted:
            if subprocess.run(["umount", self.path], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", self.path], capture_output=True)
            self.mounted = False


def fill(path, leave):
    """Write a ballast file so that about `leave` bytes stay free."""
    st = os.statvfs(os.path.dirname(path))
    n = st.f_bavail * st.f_frsize - leave
    with open(path, "wb") as f:
        chunk = b"\0" * (1 << 20)
        while n > 0:
            f.write(chunk[:min(n, len(chunk))])
            n -= len(chunk)
    return os.path.getsize(path)


def smtp_submit_one(srv, key, mid, rcpts, size, rng):
    """(code, text) of DATA for one message over a fresh SMTP session."""
    msg = (f"From: app@src.test\r\nTo: list@r.test\r\nSubject: disk\r\nMessage-ID: {mid}\r\n\r\n"
           + body_text(size, rng)).encode()
    with smtplib.SMTP("127.0.0.1", srv.smtp_port, timeout=30 * SLOW) as c:
        c.ehlo("rel.test")
        c.login("app", key)
        c.mail("app@src.test")
        for r in rcpts:
            code, text = c.rcpt(r)
            if code != 250:
                return code, text.decode()
        code, text = c.data(msg)
        return code, text.decode()


def http_submit_one(srv, key, mid, rcpts, size, rng):
    req = {"from": "app@src.test", "to": rcpts, "subject": "disk", "text": body_text(size, rng),
           "headers": {"Message-ID": mid}}
    r = requests.post(srv.api_url + "/v1/messages", json=req, timeout=30 * SLOW,
                      headers={"Authorization": f"Bearer {key}"})
    return r.status_code, r.text


def disk_full(tmp_path, fs_size="24m", leave=3 << 20, msg_size=48 * 1024, max_messages=400,
              after=20):
    """The spool on a small tmpfs; a ballast file leaves a few MB; SMTP and
    HTTP load until the disk is full: 452 4.3.1 / 507, nothing acknowledged
    lost, integrity_check ok; ballast removed: accepted and delivered again
    by the same process. Returns figures, or a skip reason string."""
    fs = Tmpfs(tmp_path / "disk", fs_size)
    why = fs.mount()
    if why:
        return f"cannot mount a tmpfs here ({why})"
    sink = Sink().start()
    srv = None
    rng = random.Random(7)
    try:
        srv = RelServer(tmp_path / "srv", relay_sections(sink.port))
        srv.spool_dir = os.path.join(fs.path, "spool")
        srv.sections["server"]["spool_dir"] = srv.spool_dir
        srv.write_config()
        srv.start_and_wait()
        pid = srv.proc.pid
        key = srv.create_key()
        ballast = os.path.join(fs.path, "ballast")
        fill(ballast, leave)
        ledger = Ledger()
        refusals = {"smtp": None, "http": None}
        n = 0
        # Alternate SMTP and HTTP until each has been refused for space.
        while n < max_messages and not all(refusals.values()):
            mid = f"<disk.{n}@rel.test>"
            rcpts = [f"d{n}.{k}@r.test" for k in range(rng.randint(1, 3))]
            via = "smtp" if n % 2 == 0 else "http"
            if via == "smtp":
                code, text = smtp_submit_one(srv, key, mid, rcpts, msg_size, rng)
                ok, full = code == 250, code == 452
            else:
                code, text = http_submit_one(srv, key, mid, rcpts, msg_size, rng)
                ok, full = code == 202, code == 507
            if ok:
                ledger.ack(mid, rcpts)
            elif full:
                refusals[via] = (code, text)
            else:
                raise AssertionError(f"{via} answered {code} {text!r} while filling the disk")
            n += 1
        assert all(refusals.values()), f"the disk never filled after {n} messages: {refusals}"
        scode, stext = refusals["smtp"]
        assert stext.startswith("4.3.1"), f"SMTP refusal is not 452 4.3.1: {scode} {stext}"
        hbody = json.loads(refusals["http"][1])
        assert "error" in hbody, hbody
        log(f"disk full: {len(ledger.acked)} accepted before full, free {fs.free()} bytes; "
            f"SMTP {scode} {stext!r}; HTTP 507 {hbody['error']}")
        # The server is still alive and answering while full.
        assert srv.proc.poll() is None
        with smtplib.SMTP("127.0.0.1", srv.smtp_port, timeout=10 * SLOW) as c:
            assert c.noop()[0] == 250
        rc, text, direct = srv.integrity()
        assert direct == "ok", f"integrity_check while full: {direct}"
        # Free the space: the same process accepts and delivers again.
        os.unlink(ballast)
        for k in range(after):
            mid = f"<after.{k}@rel.test>"
            rcpts = [f"a{k}@r.test"]
            if k % 2 == 0:
                code, text = smtp_submit_one(srv, key, mid, rcpts, msg_size, rng)
                assert code == 250, (code, text)
            else:
                code, text = http_submit_one(srv, key, mid, rcpts, msg_size, rng)
                assert code == 202, (code, text)
            ledger.ack(mid, rcpts)
        want = ledger.pairs()
        wait_until(lambda: not [p for p in want if sink.handler.snapshot().get(p, 0) == 0], 60,
                   "every acknowledged message delivered after space was freed")
        assert srv.proc.pid == pid and srv.proc.poll() is None, "the server restarted"
        rc, text, direct = srv.integrity()
        assert rc == 0 and direct == "ok", (text, direct)
        figures = {"accepted_before_full": len(ledger.acked) - after, "smtp_refusal": f"{scode} {stext}",
                   "http_refusal": 507, "accepted_after_free": after, "lost": 0, "integrity": direct}
        log(f"disk full result: {figures}")
        return figures
    finally:
        if srv:
            srv.kill()
        sink.stop()
        fs.umount()
