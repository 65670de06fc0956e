"""DKIM signing and message hygiene through the real submit pipeline.

Keys are minted with `posthaste dkim keygen`; the TXT record it prints is
what the verifiers see (dkimpy through its dnsfunc hook, opendkim-testmsg
through a dnsmasq serving the record inside a private network namespace),
so a wrong published record fails these tests just as it would in the wild.
Messages go through tests/helpers/submit_msg (submit_message() with the
signing worker pool and the spool's group commit, exactly as `serve` wires
them) and are read back with `posthaste queue show ID --raw`.
"""
import json
import os
import re
import shutil
import stat
import subprocess

import dkim
import pytest

from conftest import BIN, HELPERS, SLOW, Server, run_cli

MSG = (b"From: Alice <alice@example.com>\r\n"
       b"To: bob@example.org\r\n"
       b"Cc: carol@example.org\r\n"
       b"Bcc: hidden@example.org\r\n"
       b"Subject: Your receipt\r\n"
       b"Reply-To: help@example.com\r\n"
       b"List-Unsubscribe: <https://example.com/u/1>\r\n"
       b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
       b"Feedback-ID: 1:receipts:example\r\n"
       b"\r\n"
       b"Thank you for your order.\r\n"
       b"Total: 12.00\r\n")


def zone_value(line):
    """The TXT value of a printed zone line: its quoted strings joined."""
    return "".join(re.findall(r'"([^"]*)"', line))


def keygen(srv, domain, selector, alg):
    p = srv.cli("dkim", "keygen", "--domain", domain, "--selector", selector, "--alg", alg)
    line = p.stdout.strip()
    domain = domain.lower()
    assert line.startswith(f"{selector}._domainkey.{domain}. IN TXT ")
    path = os.path.join(srv.spool_dir, "dkim", f"{selector}._domainkey.{domain}.pem")
    return path, zone_value(line)


class Signer:
    """A config with DKIM keys, a DNS view of their records, and the helper."""

    def __init__(self, tmp_path, algs, domain="example.com", sender_extra=None):
        os.makedirs(tmp_path, exist_ok=True)
        self.srv = Server(tmp_path)
        self.domain = domain
        self.records = {}
        section = {}
        for alg in algs:
            sel = "r2026" if alg == "rsa" else "e2026"
            path, value = keygen(self.srv, domain, sel, alg)
            self.records[f"{sel}._domainkey.{domain}."] = value
            prefix = "dkim" if alg == "rsa" else "dkim_ed25519"
            section[f"{prefix}_selector"] = sel
            section[f"{prefix}_key_file"] = path
        section.update(sender_extra or {})
        self.srv.sections[f"sender {domain}"] = section
        self.srv.write_config()

    def dns(self, name, timeout=5):
        value = self.records.get(name.decode())
        return value.encode() if value else None

    def submit(self, msg=MSG, mail_from="alice@example.com", rcpts=("bob@example.org",),
               check=True):
        p = subprocess.run([os.path.join(HELPERS, "submit_msg"), self.srv.config, mail_from,
                            *rcpts], input=msg, capture_output=True, timeout=30 * SLOW)
        if check:
            assert p.returncode == 0, p.stderr.decode()
            return p.stdout.decode().strip()
        return p

    def stored(self, msg_id):
        p = subprocess.run([BIN, "queue", "show", msg_id, "--raw", "-c", self.srv.config],
                           capture_output=True, timeout=30 * SLOW)
        assert p.returncode == 0, p.stderr.decode()
        return p.stdout

    def show(self, msg_id):
        return json.loads(self.srv.cli("queue", "show", msg_id, "--json").stdout)

    def verify_all(self, raw):
        """dkimpy's verdict for every DKIM-Signature in raw, in order."""
        d = dkim.DKIM(raw)
        n = len(re.findall(rb"(?im)^DKIM-Signature:", raw))
        return [self._verify_one(d, i) for i in range(n)]

    def _verify_one(self, d, idx):
        # dkimpy returns False for a bad signature but raises for a body
        # hash mismatch; both are "does not verify".
        try:
            return d.verify(idx=idx, dnsfunc=self.dns)
        except dkim.ValidationError:
            return False


def sig_tags(raw, idx=0):
    fields = re.findall(rb"(?ims)^DKIM-Signature:(.*?)\r\n(?=\S)", raw)
    text = re.sub(rb"\s+", b"", fields[idx]).decode()
    return dict(t.split("=", 1) for t in text.split(";") if t)


def header_block(raw):
    return raw.split(b"\r\n\r\n", 1)[0]


@pytest.mark.parametrize("algs,expect", [
    (["rsa"], ["rsa-sha256"]),
    (["ed25519"], ["ed25519-sha256"]),
    (["rsa", "ed25519"], ["rsa-sha256", "ed25519-sha256"]),
])
def test_signed_in_spool_verifies_with_dkimpy(tmp_path, algs, expect):
    s = Signer(tmp_path, algs)
    raw = s.stored(s.submit())
    assert s.verify_all(raw) == [True] * len(expect)
    assert sorted(sig_tags(raw, i)["a"] for i in range(len(expect))) == sorted(expect)
    tags = sig_tags(raw)
    assert tags["c"] == "relaxed/relaxed" and tags["d"] == "example.com"
    assert tags["i"] == "@example.com" and int(tags["t"]) > 0 and "x" not in tags
    signed = tags["h"].lower().split(":")
    assert signed.count("from") == 2, "From must be over-signed"
    for h in ("to", "cc", "subject", "date", "message-id", "reply-to", "list-unsubscribe",
              "list-unsubscribe-post", "feedback-id"):
        assert h in signed, h
    assert "bcc" not in signed


@pytest.mark.parametrize("algs", [["rsa"], ["ed25519"]])
def test_altered_after_signing_fails(tmp_path, algs):
    s = Signer(tmp_path, algs)
    raw = s.stored(s.submit())
    assert s.verify_all(raw) == [True]
    body_changed = raw.replace(b"Total: 12.00", b"Total: 13.00")
    assert body_changed != raw and s.verify_all(body_changed) == [False]
    subject_changed = raw.replace(b"Subject: Your receipt", b"Subject: Your receipT")
    assert subject_changed != raw and s.verify_all(subject_changed) == [False]
    # A second From added below the signature breaks it (From is over-signed).
    extra_from = raw.replace(b"\r\n\r\n", b"\r\nFrom: mallory@evil.example\r\n\r\n", 1)
    assert s.verify_all(extra_from) == [False]


def test_expiry_tag(tmp_path):
    s = Signer(tmp_path, ["ed25519"], sender_extra={"dkim_expire": "2d"})
    raw = s.stored(s.submit())
    tags = sig_tags(raw)
    assert int(tags["x"]) - int(tags["t"]) == 2 * 86400
    assert s.verify_all(raw) == [True]


def test_subdomain_only_when_configured(tmp_path):
    sub_msg = MSG.replace(b"alice@example.com", b"alice@mail.example.com")
    s = Signer(tmp_path / "a", ["rsa"])
    raw = s.stored(s.submit(sub_msg, mail_from="alice@mail.example.com"))
    assert b"DKIM-Signature" not in raw
    s2 = Signer(tmp_path / "b", ["rsa"], sender_extra={"sign_subdomains": "yes"})
    raw = s2.stored(s2.submit(sub_msg, mail_from="alice@mail.example.com"))
    tags = sig_tags(raw)
    assert tags["d"] == "example.com" and tags["i"] == "@mail.example.com"
    assert s2.verify_all(raw) == [True]


def test_other_domain_not_signed(tmp_path):
    s = Signer(tmp_path, ["rsa"])
    other = MSG.replace(b"alice@example.com", b"alice@example.net")
    raw = s.stored(s.submit(other, mail_from="alice@example.net"))
    assert b"DKIM-Signature" not in raw


def test_loose_key_mode_refused(tmp_path):
    s = Signer(tmp_path, ["rsa"])
    key = s.srv.sections["sender example.com"]["dkim_key_file"]
    os.chmod(key, 0o640)
    p = s.submit(check=False)
    assert p.returncode != 0
    assert f"DKIM key {key} has mode 0640".encode() in p.stderr and b"0600" in p.stderr
    # serve refuses to start at all, naming the file.
    s.srv.start(wait_ready=False)
    try:
        assert s.srv.proc.wait(timeout=15 * SLOW) != 0
    finally:
        s.srv.kill()
    log = open(s.srv.log_path, errors="replace").read()
    assert f"DKIM key {key} has mode 0640" in log
    assert not any(line.get("event") == "ready" for line in s.srv.logs())


def test_short_rsa_key_refused(tmp_path):
    srv = Server(tmp_path)
    key = tmp_path / "short.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024",
                    "-out", str(key)], check=True, capture_output=True)
    os.chmod(key, 0o600)
    srv.sections["sender example.com"] = {"dkim_selector": "old", "dkim_key_file": str(key)}
    srv.write_config()
    p = subprocess.run([os.path.join(HELPERS, "submit_msg"), srv.config, "alice@example.com",
                        "bob@example.org"], input=MSG, capture_output=True, timeout=30 * SLOW)
    assert p.returncode != 0 and b"RSA key of 1024 bits; at least 2048" in p.stderr


def test_keygen_and_show(tmp_path):
    srv = Server(tmp_path)
    path, value = keygen(srv, "example.com", "s1", "rsa")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert value.startswith("v=DKIM1; k=rsa; p=MIIB")
    ed_path, ed_value = keygen(srv, "Example.COM", "e1", "ed25519")
    assert stat.S_IMODE(os.stat(ed_path).st_mode) == 0o600
    p = re.fullmatch(r"v=DKIM1; k=ed25519; p=([A-Za-z0-9+/=]{44})", ed_value)
    assert p, ed_value
    # show prints both records again, byte for byte.
    shown = srv.cli("dkim", "show", "--domain", "example.com").stdout.splitlines()
    assert sorted(zone_value(line) for line in shown) == sorted([value, ed_value])
    # Never overwrites a key that may already be published.
    again = srv.cli("dkim", "keygen", "--domain", "example.com", "--selector", "s1", check=False)
    assert again.returncode == 2 and "already exists" in again.stderr
    weak = srv.cli("dkim", "keygen", "--domain", "example.com", "--selector", "w",
                   "--bits", "1024", check=False)
    assert weak.returncode == 2 and "2048" in weak.stderr
    bad = srv.cli("dkim", "keygen", "--domain", "example.com", "--selector", "a b",
                  check=False)
    assert bad.returncode == 2 and "--selector" in bad.stderr
    none = srv.cli("dkim", "show", "--domain", "example.net", check=False)
    assert none.returncode == 1 and "no DKIM key for example.net" in none.stderr


def test_rsa_record_split_into_255_octet_strings(tmp_path):
    srv = Server(tmp_path)
    line = srv.cli("dkim", "keygen", "--domain", "example.com", "--selector", "big",
                   "--bits", "4096").stdout.strip()
    parts = re.findall(r'"([^"]*)"', line)
    assert len(parts) >= 3 and all(len(x) <= 255 for x in parts)


# ---- hygiene -------------------------------------------------------------

def test_hygiene_bcc_message_id_date_folding(tmp_path):
    s = Signer(tmp_path, ["rsa"])
    long_subject = b"Subject: " + b" ".join([b"word%02d" % i for i in range(40)])
    msg = (b"From: Alice <alice@example.com>\r\nTo: bob@example.org\r\n"
           b"Bcc: hidden@example.org,\r\n other-hidden@example.org\r\n" + long_subject +
           b"\r\n\r\nCaf\xc3\xa9\r\n")
    raw = s.stored(s.submit(msg, rcpts=("bob@example.org", "hidden@example.org")))
    head = header_block(raw)
    assert b"hidden@example.org" not in raw and not re.search(rb"(?im)^bcc:", raw)
    assert re.search(rb"(?m)^Message-ID: <[0-9a-f]{32}@posthaste\.test>\r$", head)
    assert re.search(rb"(?m)^Date: \w{3}, \d{1,2} \w{3} \d{4} \d\d:\d\d:\d\d [+-]\d{4}\r$", head)
    assert re.search(rb"(?m)^MIME-Version: 1\.0\r$", head)
    assert b"Content-Type: text/plain; charset=utf-8" in head
    for line in head.split(b"\r\n"):
        if not line.startswith(b"DKIM-Signature") and not line.startswith(b"\t"):
            assert len(line) <= 78, line
    # Folding only inserted CRLF before existing white space: same words.
    subject = re.search(rb"(?ms)^Subject: (.*?)\r\n(?=\S)", head + b"\r\n.").group(1)
    assert re.sub(rb"\r\n", b"", subject) == long_subject[len(b"Subject: "):]
    assert s.verify_all(raw) == [True]


def test_existing_message_id_and_date_kept(tmp_path):
    s = Signer(tmp_path, ["ed25519"])
    msg = MSG.replace(b"\r\n\r\n", b"\r\nMessage-ID: <mine@example.com>\r\n"
                      b"Date: Tue, 1 Dec 2026 10:00:00 +0000\r\n\r\n", 1)
    head = header_block(s.stored(s.submit(msg)))
    assert len(re.findall(rb"(?im)^Message-ID:", head)) == 1 and b"<mine@example.com>" in head
    assert len(re.findall(rb"(?im)^Date:", head)) == 1 and b"Tue, 1 Dec 2026 10:00:00" in head
    assert b"MIME-Version" not in head  # plain ASCII text needs no MIME


def test_unfoldable_header_refused(tmp_path):
    s = Signer(tmp_path, ["rsa"])
    msg = MSG.replace(b"Subject: Your receipt", b"Subject: " + b"x" * 1000)
    p = s.submit(msg, check=False)
    assert p.returncode != 0
    assert b"header Subject: a line of 1001 octets cannot be folded to 998" in p.stderr
    assert json.loads(s.srv.cli("queue", "list", "--json").stdout) == []


def test_bounce_domain_return_path(tmp_path):
    s = Signer(tmp_path, ["rsa"], sender_extra={"bounce_domain": "bounce.example.com"})
    msg_id = s.submit()
    shown = s.show(msg_id)
    assert shown["mail_from"] == f"bounces+{msg_id}@bounce.example.com"
    assert shown["meta"]["original_sender"] == "alice@example.com"
    # The null reverse-path stays null (never rewrite a bounce's sender).
    null_id = s.submit(mail_from="")
    assert s.show(null_id)["mail_from"] == ""


# ---- second verifier: opendkim-testmsg -------------------------------------

def can_unshare():
    if not (shutil.which("unshare") and shutil.which("ip") and shutil.which("dnsmasq")):
        return False
    p = subprocess.run(["unshare", "-r", "-n", "-m", "true"], capture_output=True)
    return p.returncode == 0


NS_SCRIPT = r"""
set -e
ip link set lo up
mount --bind "$RESOLV" /etc/resolv.conf
# --no-daemon: stay in the foreground and never switch users (the
# namespace maps only root, so dropping to nobody/dip would fail).
dnsmasq --no-daemon --no-resolv --no-hosts --conf-file=/dev/null \
  --listen-address=127.0.0.1 --bind-interfaces --port=53 $TXT 2>/dev/null &
DNS=$!
i=0
until [ $i -ge 100 ] || grep -q ':0035 00000000:0000 07' /proc/net/udp; do i=$((i+1)); sleep 0.05; done
set +e
opendkim-testmsg < "$MSG"
echo "status=$?"
kill $DNS
"""


def opendkim_verify(s, raw, tmp_path):
    """Run opendkim-testmsg with s.records served by dnsmasq on 127.0.0.1:53
    inside a private user+network+mount namespace (so /etc/resolv.conf can
    point at it without touching the machine). Returns its exit status."""
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\n")
    msg = tmp_path / "msg.eml"
    msg.write_bytes(raw)
    txt = " ".join(f"--txt-record={name.rstrip('.')},'{value}'"
                   for name, value in s.records.items())
    env = dict(os.environ, RESOLV=str(resolv), MSG=str(msg), TXT="")
    script = NS_SCRIPT.replace("$TXT", txt)
    p = subprocess.run(["unshare", "-r", "-n", "-m", "sh", "-c", script], env=env,
                       capture_output=True, text=True, timeout=30 * SLOW)
    m = re.search(r"status=(\d+)", p.stdout)
    assert m, p.stdout + p.stderr
    return int(m.group(1)), p.stderr


@pytest.mark.skipif(not can_unshare(), reason="needs unshare -rnm, ip and dnsmasq")
@pytest.mark.parametrize("algs", [["rsa"], ["ed25519"]])
def test_opendkim_testmsg_verifies(tmp_path, algs):
    s = Signer(tmp_path / "s", algs)
    raw = s.stored(s.submit())
    status, err = opendkim_verify(s, raw, tmp_path)
    assert status == 0, err
    bad = raw.replace(b"Total: 12.00", b"Total: 99.00")
    status, err = opendkim_verify(s, bad, tmp_path)
    assert status != 0 and "signature" in err.lower()


@pytest.mark.parametrize("body", [
    b"",
    b"\r\n\r\n\r\n",
    b"trailing spaces   \r\n\ttabs\t and  runs \t\r\n\r\n\r\n",
    b"no final newline",
    b"a\r\n \r\n\t\r\nb\r\n \r\n",
    b"x" * 3000 + b"  \r\n",
])
def test_ed25519_matches_libopendkim_canonicalization(tmp_path, body):
    """Ed25519 (and, by default, RSA) is signed by our own relaxed
    canonicalizer (libopendkim leaks its Ed25519 keys and re-parses RSA keys
    per message); with RSA signed by libopendkim itself, the two body hashes
    of a dual signature must be equal for the same bytes, and both verify."""
    s = Signer(tmp_path, ["rsa", "ed25519"])
    s.srv.sections["dkim"] = {"rsa_signer": "opendkim"}
    s.srv.write_config()
    msg = MSG.split(b"\r\n\r\n", 1)[0] + b"\r\nSubject:  spaced   out \t subject\r\n\r\n" + body
    msg = msg.replace(b"Subject: Your receipt\r\n", b"")
    raw = s.stored(s.submit(msg))
    tags = [sig_tags(raw, i) for i in range(2)]
    assert {t["a"] for t in tags} == {"rsa-sha256", "ed25519-sha256"}
    assert tags[0]["bh"] == tags[1]["bh"]
    assert s.verify_all(raw) == [True, True]


def test_client_signatures_kept_verbatim(tmp_path):
    s = Signer(tmp_path, ["ed25519"])
    upstream = (b"DKIM-Signature: v=1; a=rsa-sha256; c=simple/simple; d=upstream.example; s=x; "
                b"h=from:subject; bh=" + b"A" * 44 + b"; b=" + b"B" * 120 + b"\r\n")
    long_subject = b"Subject: " + b"word " * 30 + b"\r\n"
    msg = upstream + MSG.replace(b"Subject: Your receipt\r\n", long_subject)
    raw = s.stored(s.submit(msg))
    assert upstream in raw                       # not refolded
    assert long_subject not in raw               # ordinary fields still are
    assert s.verify_all(raw)[0] is True          # ours, prepended first


@pytest.mark.parametrize("signer", ["openssl", "opendkim"])
def test_both_rsa_signers_verify(tmp_path, signer):
    """rsa_signer = openssl (default, key parsed once) and = opendkim (the
    reference library) produce signatures both verifiers accept."""
    s = Signer(tmp_path, ["rsa"])
    s.srv.sections["dkim"] = {"rsa_signer": signer}
    s.srv.write_config()
    raw = s.stored(s.submit())
    assert sig_tags(raw)["a"] == "rsa-sha256"
    assert s.verify_all(raw) == [True]
    assert max(len(l) for l in raw.split(b"\r\n")) <= 998
