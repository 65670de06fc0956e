"""`posthaste doctor` against a real DNS server (dnsmasq on loopback).

Each test starts dnsmasq on 127.0.0.1 and a free port, serving exactly the
records the case needs (`--local` makes it answer NXDOMAIN, as an
authoritative server would, for every other name under the test domains),
points [delivery] dns_servers at it, and reads doctor's verdicts from its
--json output (and once from the text output). The "good" setup passes
every check; each broken case changes one thing and must produce the ✗
(or the ?) for that thing, with its fix, and a non-zero exit status.
"""
import datetime
import json
import os
import re
import socket
import struct
import subprocess
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import BIN, SLOW, Server, free_port

HOST = "mail.example.com"
PUBLIC_IP = "192.0.2.10"


def dns_ready(port, timeout=5.0):
    """Ask dnsmasq for HOST/A until it answers (bounded in time)."""
    qname = b"".join(bytes([len(p)]) + p.encode() for p in HOST.split(".")) + b"\0"
    query = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + qname + struct.pack(">HH", 1, 1)
    deadline = time.monotonic() + timeout * SLOW
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.1)
            try:
                s.sendto(query, ("127.0.0.1", port))
                if s.recv(512)[:2] == b"\x12\x34":
                    return True
            except OSError:
                time.sleep(0.02)
    return False


class Dns:
    def __init__(self, port, args):
        self.port = port
        cmd = ["dnsmasq", "--no-daemon", "--no-resolv", "--no-hosts", "--conf-file=/dev/null",
               "--listen-address=127.0.0.1", "--bind-interfaces", f"--port={port}",
               "--local=/example.com/", "--local=/example.net/", "--local=/in-addr.arpa/",
               *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if not dns_ready(port):
            self.stop()
            raise AssertionError("dnsmasq did not answer: " + self.proc.stderr.read().decode())

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def make_cert(dir, days_from=-1, days_to=90, other_key=False):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now + datetime.timedelta(days=days_from))
            .not_valid_after(now + datetime.timedelta(days=days_to, hours=1))
            .sign(key, hashes.SHA256()))
    if other_key:
        key = ec.generate_private_key(ec.SECP256R1())
    cert_path, key_path = os.path.join(dir, "cert.pem"), os.path.join(dir, "key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert_path, key_path


def zone_value(line):
    return "".join(re.findall(r'"([^"]*)"', line))


class Setup:
    """A server config with TLS, two DKIM keys and the records that make
    every check pass; tests override records or config, then run doctor."""

    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.srv = Server(tmp_path)
        self.dns_port = free_port()
        self.cert, self.key = make_cert(str(tmp_path))
        os.makedirs(self.srv.spool_dir, exist_ok=True)
        self.txt = {"example.com": "v=spf1 ip4:192.0.2.0/24 -all",
                    "_dmarc.example.com": "v=DMARC1; p=quarantine; rua=mailto:d@example.com"}
        section = {}
        for sel, alg, prefix in (("r1", "rsa", "dkim"), ("e1", "ed25519", "dkim_ed25519")):
            out = self.srv.cli("dkim", "keygen", "--domain", "example.com", "--selector", sel,
                               "--alg", alg).stdout
            self.txt[f"{sel}._domainkey.example.com"] = zone_value(out)
            section[f"{prefix}_selector"] = sel
            section[f"{prefix}_key_file"] = os.path.join(
                self.srv.spool_dir, "dkim", f"{sel}._domainkey.example.com.pem")
        self.srv.sections["server"].update(hostname=HOST, tls_cert_file=self.cert,
                                           tls_key_file=self.key)
        self.srv.sections["delivery"]["dns_servers"] = f"127.0.0.1:{self.dns_port}"
        self.srv.sections["doctor"] = {"public_ips": PUBLIC_IP, "dns_timeout": "500ms"}
        self.srv.sections["sender example.com"] = section
        self.hosts = [f"--host-record={HOST},{PUBLIC_IP}"]  # A and the matching PTR
        self.dns = None

    def run(self, *extra, json_out=True):
        self.srv.write_config()
        if self.dns is None:
            args = [f"--txt-record={k},{v}" for k, v in self.txt.items() if v is not None]
            self.dns = Dns(self.dns_port, args + self.hosts)
        p = subprocess.run([BIN, "doctor", "-c", self.srv.config, *(["--json"] if json_out else []),
                            *extra], capture_output=True, text=True, timeout=60 * SLOW)
        if json_out:
            report = json.loads(p.stdout)
            assert report["ok"] == (p.returncode == 0)
            return p.returncode, report["checks"]
        return p.returncode, p.stdout

    def close(self):
        if self.dns:
            self.dns.stop()


@pytest.fixture
def setup(tmp_path):
    s = Setup(tmp_path)
    yield s
    s.close()


def find(checks, check, status=None):
    hits = [c for c in checks if c["check"] == check and (status is None or c["status"] == status)]
    assert hits, f"no {check}/{status} in {json.dumps(checks, indent=1)}"
    return hits


def failed(checks):
    return {c["check"] for c in checks if c["status"] != "ok"}


def test_all_good(setup):
    rc, checks = setup.run()
    assert rc == 0, json.dumps(checks, indent=1)
    assert all(c["status"] == "ok" for c in checks)
    assert re.search(r"matches its key, (89|90) days left", find(checks, "tls_cert")[0]["detail"])
    assert "1.2" in find(checks, "tls_version")[0]["detail"]
    assert len(find(checks, "dkim")) == 2 and "p=quarantine" in find(checks, "dmarc")[0]["detail"]
    assert "forward-confirmed" in find(checks, "ptr")[0]["detail"]
    rc, text = setup.run(json_out=False)
    assert rc == 0 and text.count("\u2713") == len(checks) and "\u2717" not in text


@pytest.mark.parametrize("spf,why,fix", [
    (None, "no SPF record", 'publish example.com. IN TXT "v=spf1 ip4:192.0.2.10 -all"'),
    ("v=spf1 ip4:198.51.100.0/24 -all", "does not authorise ip4:192.0.2.10",
     "add ip4:192.0.2.10 to the SPF record of example.com"),
    ("v=spf1 ~all", "does not authorise ip4:192.0.2.10", "add ip4:192.0.2.10"),
    ("v=spf1 include:_spf.example.net -all", "include:_spf.example.net has no SPF record",
     "correct the SPF record"),
    ("v=spf1 ip4:192.0.2.10 bogus:x -all", "unknown SPF term", "correct the SPF record"),
])
def test_spf_broken(setup, spf, why, fix):
    setup.txt["example.com"] = spf
    rc, checks = setup.run()
    assert rc == 1 and failed(checks) == {"spf"}
    c = find(checks, "spf", "fail")[0]
    assert why in c["detail"] and fix in c["fix"]


def test_spf_two_records(setup):
    setup.hosts.append("--txt-record=example.com,v=spf1 a -all")
    rc, checks = setup.run()
    assert rc == 1 and "publishes 2 SPF records" in find(checks, "spf", "fail")[0]["detail"]


def test_spf_include_mx_and_a_evaluated(setup):
    setup.txt["example.com"] = "v=spf1 include:_spf.example.net -all"
    setup.txt["_spf.example.net"] = "v=spf1 mx:example.net a:relay.example.net/28 -all"
    setup.hosts += ["--mx-host=example.net,mx.example.net,10",
                    "--host-record=mx.example.net,198.51.100.7",
                    "--host-record=relay.example.net,192.0.2.1"]  # /28 covers .10
    rc, checks = setup.run()
    assert rc == 0, json.dumps(checks, indent=1)
    setup.srv.sections["doctor"]["public_ips"] = "192.0.2.99"  # outside the /28
    rc, checks = setup.run()
    assert "does not authorise ip4:192.0.2.99" in find(checks, "spf", "fail")[0]["detail"]


def test_spf_every_public_address_ipv6_too(setup):
    setup.srv.sections["doctor"]["public_ips"] = "192.0.2.10, 2001:db8::25"
    rc, checks = setup.run()
    c = find(checks, "spf", "fail")[0]
    assert "does not authorise ip6:2001:db8::25" in c["detail"] and "192.0.2.10" not in c["detail"]
    setup.dns.stop()
    setup.dns = None
    setup.txt["example.com"] = "v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 -all"
    rc, checks = setup.run()
    assert find(checks, "spf", "ok")


def test_spf_lookup_limit(setup):
    # example.com -> l1 -> ... -> l11: eleven DNS-querying terms.
    setup.txt["example.com"] = "v=spf1 include:l1.example.net -all"
    for i in range(1, 11):
        setup.txt[f"l{i}.example.net"] = f"v=spf1 include:l{i + 1}.example.net -all"
    setup.txt["l11.example.net"] = "v=spf1 ip4:192.0.2.10 -all"
    rc, checks = setup.run()
    assert "more than 10 DNS-querying terms" in find(checks, "spf", "fail")[0]["detail"]
    # Ten are fine.
    setup.txt["l10.example.net"] = "v=spf1 ip4:192.0.2.10 -all"
    del setup.txt["l11.example.net"]
    setup.dns.stop()
    setup.dns = None
    rc, checks = setup.run()
    assert rc == 0, json.dumps(checks, indent=1)


def test_bounce_domain_spf_checked(setup):
    setup.srv.sections["sender example.com"]["bounce_domain"] = "bounce.example.com"
    rc, checks = setup.run()
    assert "SPF bounce.example.com: no SPF record" in find(checks, "spf", "fail")[0]["detail"]


def test_dkim_missing_wrong_revoked(setup):
    rsa = setup.txt["r1._domainkey.example.com"]
    setup.txt["r1._domainkey.example.com"] = None
    setup.txt["e1._domainkey.example.com"] = "v=DKIM1; k=ed25519; p="
    rc, checks = setup.run()
    assert rc == 1 and failed(checks) == {"dkim"}
    missing, revoked = find(checks, "dkim", "fail")
    assert "r1._domainkey.example.com: no DKIM key record" in missing["detail"]
    assert zone_value(missing["fix"]) == rsa  # the exact record to publish
    assert "p= is empty: revoked" in revoked["detail"]


def test_dkim_different_key(setup, tmp_path):
    (tmp_path / "other").mkdir()
    other = Server(tmp_path / "other")
    out = other.cli("dkim", "keygen", "--domain", "example.com", "--selector", "r1").stdout
    setup.txt["r1._domainkey.example.com"] = zone_value(out)
    rc, checks = setup.run()
    c = find(checks, "dkim", "fail")[0]
    assert "publishes a different key than" in c["detail"]


def test_dkim_wrong_key_type(setup):
    setup.txt["e1._domainkey.example.com"] = setup.txt["e1._domainkey.example.com"].replace(
        "k=ed25519", "k=rsa")
    rc, checks = setup.run()
    assert "under the wrong k=" in find(checks, "dkim", "fail")[0]["detail"]


def test_dmarc_missing_and_inherited(setup):
    setup.txt["_dmarc.example.com"] = None
    rc, checks = setup.run()
    c = find(checks, "dmarc", "fail")[0]
    assert "no DMARC record" in c["detail"] and "_dmarc.example.com" in c["fix"]
    # A subdomain sender inherits the organisational domain's policy.
    setup.dns.stop()
    setup.dns = None
    setup.txt["_dmarc.example.com"] = "v=DMARC1; p=reject"
    sub = dict(setup.srv.sections.pop("sender example.com"))
    setup.srv.sections["sender news.example.com"] = sub
    for sel in ("r1", "e1"):
        setup.txt[f"{sel}._domainkey.news.example.com"] = setup.txt[f"{sel}._domainkey.example.com"]
    setup.txt["news.example.com"] = setup.txt["example.com"]
    rc, checks = setup.run()
    assert "p=reject (from _dmarc.example.com)" in find(checks, "dmarc", "ok")[0]["detail"]


def test_ptr_mismatch_and_unresolvable_host(setup):
    setup.hosts = [f"--address=/{HOST}/{PUBLIC_IP}",
                   "--ptr-record=10.2.0.192.in-addr.arpa,vps-123.example.net"]
    rc, checks = setup.run()
    c = find(checks, "ptr", "fail")[0]
    assert f"PTR of {PUBLIC_IP} is vps-123.example.net, not {HOST}" in c["detail"]
    assert failed(checks) == {"ptr"}
    setup.dns.stop()
    setup.dns = None
    setup.hosts = []
    rc, checks = setup.run()
    assert f"hostname {HOST} does not resolve" in find(checks, "helo", "fail")[0]["detail"]


def test_offline_is_unknown_not_failed(setup):
    setup.srv.sections["delivery"]["dns_servers"] = f"127.0.0.1:{free_port()}"
    setup.dns = Dns(setup.dns_port, [])  # running, but not the one configured
    rc, checks = setup.run()
    assert rc == 1
    dns = [c for c in checks if c["group"] == "dns"]
    assert dns and all(c["status"] == "unknown" for c in dns)
    assert all("cannot resolve" in c["detail"] for c in dns)
    rc, text = setup.run(json_out=False)
    assert "? dns" in text and "\u2717 dns" not in text


@pytest.mark.parametrize("case,check,why,fix", [
    ("expired", "tls_cert", "has expired", "renew"),
    ("expiring", "tls_cert", "expires in 4 days", "renew"),
    ("mismatch", "tls_cert", "do not match", "private key that belongs"),
    ("tls_key_mode", "key_mode", "has mode 0644", "chmod 600"),
    ("dkim_key_mode", "key_mode", "has mode 0640", "chmod 600"),
    ("inline", "inline_secrets", "'relay_user' holds a secret inline", "relay_user_file"),
    ("spool", "spool", "No such file or directory", "mkdir"),
    ("plaintext_auth", "listener", "allows AUTH before STARTTLS", "allow_plaintext_auth = no"),
    ("api_public", "listener", "public without TLS", "tls = yes"),
    ("no_cert", "tls_cert", "no TLS certificate configured", "tls_cert_file"),
])
def test_config_failures(setup, case, check, why, fix):
    server = setup.srv.sections["server"]
    if case in ("expired", "expiring", "mismatch"):
        d = setup.tmp / case
        d.mkdir()
        args = {"expired": dict(days_from=-30, days_to=-2), "expiring": dict(days_to=4),
                "mismatch": dict(other_key=True)}[case]
        server["tls_cert_file"], server["tls_key_file"] = make_cert(str(d), **args)
    elif case == "tls_key_mode":
        os.chmod(setup.key, 0o644)
    elif case == "dkim_key_mode":
        os.chmod(setup.srv.sections["sender example.com"]["dkim_key_file"], 0o640)
    elif case == "inline":
        setup.srv.sections["delivery"]["relay_user"] = "ph_abcdefghijkl_" + "s" * 32
    elif case == "spool":
        server["spool_dir"] = str(setup.tmp / "missing")
    elif case == "plaintext_auth":
        setup.srv.sections["smtp"].update(listen=f"0.0.0.0:{free_port()}",
                                         allow_plaintext_auth="yes")
    elif case == "api_public":
        setup.srv.sections["api"]["listen"] = f"0.0.0.0:{free_port()}"
    elif case == "no_cert":
        del server["tls_cert_file"], server["tls_key_file"]
    rc, checks = setup.run()
    assert rc == 1
    c = find(checks, check, "fail")[0]
    assert why in c["detail"] and fix in c["fix"], c
    if case == "dkim_key_mode":
        assert "dkim_keys" in failed(checks)  # serve would refuse to start too


def test_no_sender_domain(setup):
    del setup.srv.sections["sender example.com"]
    rc, checks = setup.run()
    assert rc == 1 and "no [sender] domain" in find(checks, "senders", "fail")[0]["detail"]
