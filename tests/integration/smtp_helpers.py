"""Helpers for the SMTP submission tests: a byte-exact raw client (for the
hostile-input tests, where smtplib would "fix" what we send), TLS contexts
that trust the server's self-signed certificate, and spool readers that go
through `posthaste queue show`.
"""
import base64
import email
import email.policy
import json
import os
import re
import socket
import ssl
import subprocess
import time

from conftest import BIN, SLOW


def tls_context(srv):
    """A client context that trusts exactly the server's generated certificate."""
    ctx = ssl.create_default_context(cafile=os.path.join(srv.spool_dir, "tls-cert.pem"))
    ctx.check_hostname = True
    return ctx


def plain_auth(key, user="app"):
    return base64.b64encode(b"\0" + user.encode() + b"\0" + key.encode()).decode()


class RawSMTP:
    """A line-level SMTP client that sends exactly the bytes it is given."""

    def __init__(self, port, host="127.0.0.1", implicit_tls=None, timeout=5.0, source=None,
                 greeting=True):
        self.sock = socket.create_connection((host, port), timeout=timeout * SLOW,
                                             source_address=(source, 0) if source else None)
        self.timeout = timeout * SLOW
        if implicit_tls is not None:
            self.sock = implicit_tls.wrap_socket(self.sock, server_hostname="localhost")
        self.buf = b""
        self.greeting = self.reply() if greeting else None

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data):
        self.sock.sendall(data if isinstance(data, bytes) else data.encode())

    def _line(self):
        deadline = time.monotonic() + self.timeout
        while b"\r\n" not in self.buf:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no reply line; buffered {self.buf!r}")
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"connection closed; buffered {self.buf!r}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode("utf-8", "replace")

    def reply(self):
        """(code, text of all lines joined by newlines)."""
        lines = []
        while True:
            line = self._line()
            lines.append(line[4:])
            if len(line) < 4 or line[3] != "-":
                return int(line[:3]), "\n".join(lines)

    def cmd(self, line):
        self.send(line + "\r\n")
        return self.reply()

    def starttls(self, ctx):
        code, text = self.cmd("STARTTLS")
        assert code == 220, text
        self.sock = ctx.wrap_socket(self.sock, server_hostname="localhost")
        return code

    def closed(self, wait=3.0):
        """True when the server closes the connection within `wait` seconds."""
        self.sock.settimeout(wait * SLOW)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except (socket.timeout, TimeoutError):
            return False
        except (ConnectionError, ssl.SSLError, OSError):
            return True

    def login(self, key, ehlo="client.test"):
        code, text = self.cmd(f"EHLO {ehlo}")
        assert code == 250, text
        code, text = self.cmd(f"AUTH PLAIN {plain_auth(key)}")
        assert code == 235, text


def session(srv, key, ctx=None):
    """A raw client on the STARTTLS port, after STARTTLS, EHLO and AUTH."""
    c = RawSMTP(srv.smtp_port)
    c.cmd("EHLO client.test")
    c.starttls(ctx or tls_context(srv))
    c.login(key)
    return c


QUEUED = re.compile(r"queued as ([0-9a-z]{26})")


def queued_id(text):
    m = QUEUED.search(text)
    assert m, f"no queue id in {text!r}"
    return m.group(1)


def queue_json(srv, msg_id):
    return json.loads(srv.cli("queue", "show", msg_id, "--json").stdout)


def queue_raw(srv, msg_id):
    """The stored RFC 5322 bytes, exactly as `queue show --raw` prints them."""
    p = subprocess.run([BIN, "queue", "show", msg_id, "--raw", "-c", srv.config],
                       capture_output=True, timeout=60 * SLOW)
    assert p.returncode == 0, p.stderr
    return p.stdout


def queue_list(srv):
    return json.loads(srv.cli("queue", "list", "--json").stdout)


def parse_stored(raw):
    return email.message_from_bytes(raw, policy=email.policy.default)
