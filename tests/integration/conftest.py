"""Shared harness for integration tests.

Every test drives the real `posthaste` binary (POSTHASTE_BIN, set by the
Makefile) on free loopback ports with a temporary spool, and stops what it
started by PID. Nothing here fakes the server.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("POSTHASTE_BIN", os.path.join(ROOT, "posthaste"))
HELPERS = os.environ.get("POSTHASTE_HELPERS", os.path.join(ROOT, "build", "helpers"))
ASAN = os.environ.get("POSTHASTE_ASAN") == "1"
# Sanitizer builds are several times slower; scale waits, not loop counts.
SLOW = 4 if ASAN else 1


def free_port(host="127.0.0.1"):
    """A port that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_port(host, port, timeout=10.0):
    deadline = time.monotonic() + timeout * SLOW
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.02)
    return False


def run_cli(*args, config=None, input=None, check=True, env=None, timeout=60):
    """Run `posthaste ARGS` and return the CompletedProcess (text mode)."""
    cmd = [BIN, *args]
    if config:
        cmd += ["-c", config]
    p = subprocess.run(cmd, input=input, capture_output=True, text=True,
                       env=env, timeout=timeout * SLOW)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd} exited {p.returncode}: {p.stderr}")
    return p


class Server:
    """One `posthaste serve` process with its own config and spool."""

    def __init__(self, tmpdir, extra=None):
        self.dir = str(tmpdir)
        self.spool_dir = os.path.join(self.dir, "spool")
        self.smtp_port = free_port()
        self.smtps_port = free_port()
        self.api_port = free_port()
        self.sections = {
            "server": {"spool_dir": self.spool_dir, "hostname": "posthaste.test",
                       "log_level": "debug"},
            "smtp": {"listen": f"127.0.0.1:{self.smtp_port}",
                     "listen_tls": f"127.0.0.1:{self.smtps_port}"},
            "api": {"listen": f"127.0.0.1:{self.api_port}",
                    "public_url": f"http://127.0.0.1:{self.api_port}"},
            "delivery": {"paused": "yes"},
        }
        for section, values in (extra or {}).items():
            self.sections.setdefault(section, {}).update(values)
        self.config = os.path.join(self.dir, "posthaste.conf")
        self.log_path = os.path.join(self.dir, "server.log")
        self.proc = None
        self.write_config()

    def write_config(self):
        with open(self.config, "w") as f:
            for section, values in self.sections.items():
                f.write(f"[{section}]\n")
                for k, v in values.items():
                    f.write(f"{k} = {v}\n")
                f.write("\n")

    @property
    def api_url(self):
        return f"http://127.0.0.1:{self.api_port}"

    def start(self, wait_ready=True, attempts=3):
        for attempt in range(attempts):
            self.log = open(self.log_path, "ab")
            self.proc = subprocess.Popen([BIN, "serve", "-c", self.config],
                                         stdout=self.log, stderr=self.log)
            if not wait_ready:
                return self
            try:  # this process's ready line, not one from an earlier start
                self.wait_log("ready", timeout=15, pred=lambda l: l.get("pid") == self.proc.pid)
                return self
            except AssertionError as e:
                # free_port() can race with another process taking the port;
                # only then pick new ports and try again.
                if "cannot bind" not in str(e) or attempt == attempts - 1:
                    raise
                self.proc.wait()
                self.log.close()
                self.repick_ports()
        return self

    def repick_ports(self):
        self.smtp_port, self.smtps_port, self.api_port = free_port(), free_port(), free_port()
        self.sections["smtp"]["listen"] = f"127.0.0.1:{self.smtp_port}"
        self.sections["smtp"]["listen_tls"] = f"127.0.0.1:{self.smtps_port}"
        self.sections["api"]["listen"] = f"127.0.0.1:{self.api_port}"
        self.sections["api"]["public_url"] = f"http://127.0.0.1:{self.api_port}"
        self.write_config()

    def logs(self):
        with open(self.log_path, "rb") as f:
            lines = []
            for raw in f.read().decode("utf-8", "replace").splitlines():
                try:
                    lines.append(json.loads(raw))
                except ValueError:
                    lines.append({"event": "_raw", "text": raw})
            return lines

    def wait_log(self, event, timeout=10, pred=None):
        deadline = time.monotonic() + timeout * SLOW
        while time.monotonic() < deadline:
            for line in self.logs():
                if line.get("event") == event and (pred is None or pred(line)):
                    return line
            if self.proc and self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode} before '{event}':\n"
                                     + open(self.log_path, errors="replace").read()[-4000:])
            time.sleep(0.02)
        raise AssertionError(f"no '{event}' log line within {timeout}s:\n"
                             + open(self.log_path, errors="replace").read()[-4000:])

    def cli(self, *args, **kw):
        return run_cli(*args, config=self.config, **kw)

    def create_key(self, *args):
        """Create an API key (default scope send) and return the token."""
        p = self.cli("keys", "create", "--name", "test", *args)
        return p.stdout.strip()

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, timeout=20):
        """SIGTERM and wait; returns the exit status."""
        if not self.proc or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout * SLOW)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("server did not stop within the timeout after SIGTERM")
        finally:
            self.log.close()

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if not self.log.closed:
            self.log.close()


@pytest.fixture
def make_server(tmp_path):
    """Factory: make_server(extra_config_sections) -> started Server."""
    started = []

    def make(extra=None, start=True, subdir=None):
        d = tmp_path / (subdir or f"srv{len(started)}")
        d.mkdir(exist_ok=True)
        srv = Server(d, extra)
        if start:
            srv.start()
        started.append(srv)
        return srv

    yield make
    for srv in started:
        if srv.proc and srv.proc.poll() is None:
            srv.kill()


@pytest.fixture
def server(make_server):
    """A started server on defaults (delivery paused) with free loopback ports."""
    return make_server()
