"""benchlib — what every bench/ script shares.

What it does: builds ./posthaste and the C load generators, finds free
loopback ports, runs the systems under test side by side (a Posthaste
server with its own spool, a private Postfix instance from a temporary
config directory, Postfix's smtp-sink), measures them (CPU seconds from
/proc, peak memory sampled from /proc) and prints tables with medians.

What it owns: temporary directories under bench/out/ (or $BENCH_TMP) and
the processes it starts, which it stops by PID (Postfix through its own
`postfix -c DIR stop`, then its master's PID).

What it never does: touch the system's /etc/postfix or its mail queue,
listen on anything but 127.0.0.1, or leave a process running (atexit and
SIGINT/SIGTERM stop everything registered).

Limits: every wait is bounded in time (arguments named timeout).
"""
import atexit
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("POSTHASTE_BIN", os.path.join(ROOT, "posthaste"))
BUILD = os.path.join(ROOT, "build", "bench")
CLK_TCK = os.sysconf("SC_CLK_TCK")

_cleanups = []


def _run_cleanups(*_):
    while _cleanups:
        fn = _cleanups.pop()
        try:
            fn()
        except Exception as e:  # keep stopping the rest
            print(f"bench: cleanup failed: {e}", file=sys.stderr)


def on_exit(fn):
    """Register fn to run at exit (newest first); returns a remover."""
    _cleanups.append(fn)
    return lambda: fn in _cleanups and _cleanups.remove(fn)


def _signalled(sig, _frame):
    _run_cleanups()
    sys.exit(128 + sig)


atexit.register(_run_cleanups)
signal.signal(signal.SIGINT, _signalled)
signal.signal(signal.SIGTERM, _signalled)


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- build ------------------------------------------------------------------

def build(c_tools=()):
    """make posthaste, then compile each bench/lib/<tool>.c into build/bench/."""
    subprocess.run(["make", "-C", ROOT, "--no-print-directory", "posthaste"], check=True,
                   stdout=subprocess.DEVNULL)
    os.makedirs(BUILD, exist_ok=True)
    out = {}
    for tool in c_tools:
        src = os.path.join(ROOT, "bench", "lib", tool + ".c")
        dst = os.path.join(BUILD, tool)
        if not os.path.exists(dst) or os.path.getmtime(dst) < os.path.getmtime(src):
            subprocess.run(["gcc", "-std=c17", "-D_GNU_SOURCE", "-O2", "-Wall", "-Wextra", "-Wshadow",
                            "-Wformat=2", "-pthread", "-o", dst, src], check=True)
        out[tool] = dst
    return out


def need_packages(pkgs, commands):
    """Install Debian packages when one of `commands` is missing (root only)."""
    if all(shutil.which(c) or os.path.exists(c) for c in commands):
        return
    if os.geteuid() != 0:
        sys.exit(f"bench: needs {' '.join(commands)}; as root: apt-get install {' '.join(pkgs)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if "postfix" in pkgs:
        subprocess.run(["debconf-set-selections"], input=b"postfix postfix/main_mailer_type select No configuration\n",
                       check=True)
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *pkgs]
    if subprocess.run(cmd, env=env).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, check=True)
        subprocess.run(cmd, env=env, check=True)


def workdir(name):
    """A fresh temporary directory, removed at exit (kept with BENCH_KEEP=1)."""
    base = os.environ.get("BENCH_TMP") or os.path.join(ROOT, "bench", "out")
    os.makedirs(base, exist_ok=True)
    d = tempfile.mkdtemp(prefix=name + "-", dir=base)
    # Postfix's unprivileged daemons must reach their queue below it.
    os.chmod(d, 0o755)
    if not os.environ.get("BENCH_KEEP"):
        on_exit(lambda: shutil.rmtree(d, ignore_errors=True))
    return d


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def wait_for(pred, timeout, what, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(step)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}")


def stop_pid(pid, timeout=15.0):
    """SIGTERM one process we started, SIGKILL it after timeout."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _gone(pid):
            return
        time.sleep(0.02)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _gone(pid):
    """Exited: reaped by us (our child) or by its parent, or a zombie."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return True
    except ChildProcessError:
        pass  # not our child (Postfix's master)
    try:
        return _stat(pid)[0] == "Z"
    except OSError:
        return True


# ---- /proc measurements -------------------------------------------------------

def _stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        raw = f.read()
    return raw[raw.rindex(")") + 2:].split()  # fields from 3 (state) on


def children_map():
    kids = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                ppid = int(_stat(name)[1])
            except (OSError, ValueError, IndexError):
                continue
            kids.setdefault(ppid, []).append(int(name))
    return kids


def tree(pid):
    """pid and all its descendants (alive now)."""
    kids = children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def cpu_seconds(root):
    """CPU time of root's tree: live processes plus what root has reaped.

    A daemon that exits (Postfix's smtpd after max_idle) moves its time
    into its parent's cutime/cstime when reaped, so the sum stays whole."""
    total = 0.0
    for p in tree(root):
        try:
            f = _stat(p)
        except OSError:
            continue
        total += int(f[11]) + int(f[12])  # utime, stime
        if p == root:
            total += int(f[13]) + int(f[14])  # cutime, cstime
    return total / CLK_TCK


def pss_kb(root):
    """Proportional set size of root's tree: shared pages counted once."""
    total = 0
    for p in tree(root):
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


def rss_kb(root):
    """Resident set size of root's tree, summed (shared pages counted in each)."""
    total = 0
    for p in tree(root):
        try:
            total += status_kb(p, "VmRSS")
        except OSError:
            pass
    return total


def status_kb(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class PeakSampler:
    """Samples fn() every `every` seconds on a thread; .peak is the largest."""

    def __init__(self, fn, every=0.25):
        self.fn, self.every, self.peak = fn, every, 0
        self._stop = threading.Event()
        self._th = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.fn())
            except Exception:
                pass
            self._stop.wait(self.every)

    def __enter__(self):
        self._th.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._th.join(5)


# ---- systems under test -------------------------------------------------------

class Sink:
    """Postfix's smtp-sink on loopback; count() = messages it has received."""

    def __init__(self, d, port=None):
        self.port = port or free_port()
        self.out = os.path.join(d, f"sink-{self.port}.out")
        self.proc = None

    def start(self):
        args = ["smtp-sink", "-c"]
        if os.geteuid() == 0:
            args += ["-u", "nobody"]
        args += [f"127.0.0.1:{self.port}", "1024"]
        self.outf = open(self.out, "wb")
        self.proc = subprocess.Popen(args, stdout=self.outf, stderr=subprocess.STDOUT)
        self._remove = on_exit(self.stop)
        wait_port(self.port)
        return self

    def count(self):
        """smtp-sink -c rewrites 'sess=N quit=N mesg=N\\r' after each '.'."""
        with open(self.out, "rb") as f:
            f.seek(max(0, os.path.getsize(self.out) - 200))
            tail = f.read().decode("ascii", "replace")
        i = tail.rfind("mesg=")
        if i < 0:
            return 0
        digits = ""
        for ch in tail[i + 5:]:
            if not ch.isdigit():
                break
            digits += ch
        return int(digits or 0)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            stop_pid(self.proc.pid, 5)
            self.proc.wait(5)
        if self.proc and not self.outf.closed:
            self.outf.close()


POSTFIX_MASTER_CF = """127.0.0.1:{port} inet n - n - - smtpd
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
smtp unix - - n - - smtp
relay unix - - n - - smtp
showq unix n - n - - showq
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
"""

# Debian's shipped defaults except what a private loopback relay needs: its
# own directories, one loopback listener, no local domains, everything
# relayed to the sink. The queue is fsync'd as shipped (Postfix always
# fsyncs a queue file before smtpd's 250).
POSTFIX_MAIN_CF = """compatibility_level = 3.6
queue_directory = {d}/queue
data_directory = {d}/data
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = bench-postfix.test
mydomain = bench-postfix.test
myorigin = bench-postfix.test
mydestination =
local_recipient_maps =
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:{sink_port}
alias_maps =
alias_database =
biff = no
maillog_file = {d}/maillog
maillog_file_prefixes = {d}
"""


class Postfix:
    """A private Postfix instance: `postfix -c DIR start|stop` as root."""

    def __init__(self, d, sink_port, port=None, extra_main=""):
        self.d = os.path.join(d, "postfix")
        self.port = port or free_port()
        self.conf = os.path.join(self.d, "conf")
        for sub in ("conf", "queue", "data"):
            os.makedirs(os.path.join(self.d, sub), exist_ok=True)
        os.chmod(self.d, 0o755)
        shutil.chown(os.path.join(self.d, "data"), "postfix")
        with open(os.path.join(self.conf, "main.cf"), "w") as f:
            f.write(POSTFIX_MAIN_CF.format(d=self.d, sink_port=sink_port) + extra_main)
        with open(os.path.join(self.conf, "master.cf"), "w") as f:
            f.write(POSTFIX_MASTER_CF.format(port=self.port))
        self.master = None

    def _postfix(self, *args):
        return subprocess.run(["postfix", "-c", self.conf, *args], capture_output=True, text=True, timeout=60)

    def start(self):
        if os.geteuid() != 0:
            sys.exit("bench: Postfix's daemons switch to the postfix user: run as root")
        self._postfix("check")
        p = self._postfix("start")
        if p.returncode != 0:
            # Postfix reports to syslog, or to stderr when that is a terminal.
            why = subprocess.run(["script", "-qc", f"postfix -c {self.conf} check", "/dev/null"],
                                 capture_output=True, text=True).stdout
            raise RuntimeError(f"postfix start failed: {p.stderr} {why}")
        pidfile = os.path.join(self.d, "queue", "pid", "master.pid")
        wait_for(lambda: os.path.exists(pidfile) and open(pidfile).read().strip(), 20, "Postfix master.pid")
        self.master = int(open(pidfile).read().strip())
        on_exit(self.stop)
        wait_port(self.port)
        return self

    def pid(self):
        return self.master

    def queue_empty(self):
        """No files in Postfix's incoming/active/deferred queues."""
        for q in ("incoming", "active", "deferred", "maildrop", "hold"):
            for _root, _dirs, files in os.walk(os.path.join(self.d, "queue", q)):
                if files:
                    return False
        return True

    def version(self):
        return subprocess.run(["postconf", "-d", "-h", "mail_version"], capture_output=True,
                              text=True).stdout.strip()

    def stop(self):
        if not self.master:
            return
        self._postfix("stop")
        stop_pid(self.master, 15)
        self.master = None


class Posthaste:
    """`posthaste serve` with a private spool, relaying to a sink."""

    def __init__(self, d, sink_port=None, dkim=None, sections=None):
        self.d = os.path.join(d, "posthaste")
        os.makedirs(self.d, exist_ok=True)
        self.smtp_port = free_port()
        self.api_port = free_port()
        self.spool_dir = os.path.join(self.d, "spool")
        self.sections = {
            "server": {"spool_dir": self.spool_dir, "hostname": "bench-posthaste.test",
                       "log_file": os.path.join(self.d, "server.log")},
            # Every load generator connects from 127.0.0.1: the per-address
            # limit (default 50) would refuse runs with more sessions.
            "smtp": {"listen": f"127.0.0.1:{self.smtp_port}", "listen_tls": "",
                     "allow_plaintext_auth": "yes", "max_connections_per_ip": "2000"},
            "api": {"listen": f"127.0.0.1:{self.api_port}",
                    "public_url": f"http://127.0.0.1:{self.api_port}"},
            "delivery": {},
        }
        if sink_port:
            self.sections["delivery"].update({
                "route": "relay", "relay_host": "127.0.0.1", "relay_port": str(sink_port),
                "relay_tls": "none", "tls_policy_relay": "none"})
        for sec, vals in (sections or {}).items():
            self.sections.setdefault(sec, {}).update(vals)
        self.config = os.path.join(self.d, "posthaste.conf")
        self.proc = None
        self.dkim = dkim
        self.key_file = os.path.join(self.d, "api.key")

    def _write_config(self):
        with open(self.config, "w") as f:
            for sec, vals in self.sections.items():
                f.write(f"[{sec}]\n")
                for k, v in vals.items():
                    f.write(f"{k} = {v}\n")
                f.write("\n")

    def cli(self, *args, timeout=120):
        p = subprocess.run([BIN, *args, "-c", self.config], capture_output=True, text=True, timeout=timeout)
        if p.returncode != 0:
            raise RuntimeError(f"posthaste {' '.join(args)}: {p.stderr.strip()}")
        return p.stdout

    def _keygen(self, alg, selector):
        path = os.path.join(self.d, f"{selector}.pem")
        self.cli("dkim", "keygen", "--domain", "example.com", "--selector", selector, "--alg", alg,
                 "--out", path)
        return path

    def prepare(self):
        """Config, DKIM keys, an API key (password file 0600 for smtpload)."""
        self._write_config()
        sender = {}
        if self.dkim in ("rsa", "dual"):
            sender.update(dkim_selector="rsa1", dkim_key_file=self._keygen("rsa", "rsa1"))
        if self.dkim in ("ed25519", "dual"):
            sender.update(dkim_ed25519_selector="ed1", dkim_ed25519_key_file=self._keygen("ed25519", "ed1"))
        if sender:
            self.sections["sender example.com"] = sender
            self._write_config()
        token = self.cli("keys", "create", "--name", "bench", "--scope", "send", "--scope", "read").strip()
        fd = os.open(self.key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        self.token = token
        return self

    def start(self, timeout=60):
        self._write_config()
        self.proc = subprocess.Popen([BIN, "serve", "-c", self.config], stdout=subprocess.DEVNULL,
                                     stderr=open(os.path.join(self.d, "stderr.log"), "ab"))
        on_exit(self.stop)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"posthaste serve exited {self.proc.returncode}: "
                                   + open(os.path.join(self.d, "stderr.log")).read()[-2000:])
            try:
                with socket.create_connection(("127.0.0.1", self.smtp_port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("posthaste serve did not listen in time")

    def pid(self):
        return self.proc.pid

    def stop(self, timeout=30):
        if self.proc and self.proc.poll() is None:
            stop_pid(self.proc.pid, timeout)
            self.proc.wait(5)

    def queue_stats(self):
        return json.loads(self.cli("queue", "stats", "--json"))


# ---- statistics and tables ---------------------------------------------------------

def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(v, digits=1):
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if isinstance(v, int):
        return f"{v:,}"
    return f"{v:,.{digits}f}"


def table(headers, rows):
    """A GitHub-flavoured Markdown table (what docs/BENCHMARKS.md holds)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(fmt(c) for c in r) + " |")
    return "\n".join(lines)


def machine():
    """One line describing the machine and the versions measured."""
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        mem = f"{int(open('/proc/meminfo').readline().split()[1]) // 1024} MiB RAM"
    except (OSError, ValueError):
        pass
    ver = subprocess.run([BIN, "version"], capture_output=True, text=True).stdout.strip()
    return f"{os.cpu_count()} CPUs ({cpu}), {mem}, Linux {os.uname().release}; {ver}"
