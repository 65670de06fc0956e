"""Real SMTP clients against the submission server: Python smtplib (STARTTLS
and implicit TLS), Flask-Mail, swaks (--tls and --tlsc), curl (smtp:// with
--ssl-reqd) and Nodemailer. Each sends a message with a Chinese subject and
a binary attachment; the test then reads the spool through `posthaste queue
show` and checks the envelope, the added trace headers and the exact bytes
of the subject and the attachment.
"""
import email.message
import email.policy
import os
import shutil
import smtplib
import subprocess

import pytest

from conftest import SLOW, wait_port
from smtp_helpers import (parse_stored, queue_json, queue_list, queue_raw, queued_id,
                          tls_context)

SUBJECT = "测试邮件：你好，世界"
FROM = "app@example.com"
TO = "user@example.org"
BCC = "hidden@example.net"
NODE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "node")


@pytest.fixture
def srv(make_server):
    s = make_server()
    s.key = s.create_key("--sender-domain", "example.com")
    return s


def attachment():
    # Every byte value, so any 8-bit or line-ending damage shows up.
    return bytes(range(256)) * 12


def build_message(client, bcc=False):
    m = email.message.EmailMessage()
    m["From"] = f"App <{FROM}>"
    m["To"] = TO
    if bcc:
        m["Bcc"] = BCC
    m["Subject"] = f"{SUBJECT} ({client})"
    m.set_content(f"Hello from {client}\n")
    m.add_attachment(attachment(), maintype="application", subtype="octet-stream",
                     filename="report.bin")
    return m


def check_stored(srv, msg_id, client, rcpts=(TO,), bcc_removed=False):
    """The spool holds what the client sent, plus our trace headers."""
    meta = queue_json(srv, msg_id)
    assert meta["mail_from"] == FROM
    assert sorted(r["email"] for r in meta["recipients"]) == sorted(rcpts)
    assert all(r["state"] == "queued" for r in meta["recipients"])
    assert meta["ingress"] == "smtp"
    raw = queue_raw(srv, msg_id)
    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b""), "stored with CRLF only"
    assert raw.startswith(b"Received: from "), raw[:200]
    first = raw.split(b"\r\n\r\n", 1)[0]
    assert b" with ESMTPSA id " + msg_id.encode() in first
    msg = parse_stored(raw)
    assert msg["Subject"] == f"{SUBJECT} ({client})"
    assert msg["Message-ID"] and msg["Date"]
    assert msg["Bcc"] is None
    if bcc_removed:
        assert BCC.encode() not in raw
    parts = [p for p in msg.iter_attachments()]
    assert len(parts) == 1
    assert parts[0].get_filename() == "report.bin"
    assert parts[0].get_payload(decode=True) == attachment()
    body = msg.get_body(preferencelist=("plain",))
    assert body is not None and "Hello from" in body.get_content()
    return msg


def only_message_id(srv):
    msgs = queue_list(srv)
    assert len(msgs) == 1, msgs
    return msgs[0]["id"]


def test_smtplib_starttls(srv):
    with smtplib.SMTP("127.0.0.1", srv.smtp_port, timeout=10 * SLOW) as c:
        c.starttls(context=tls_context(srv))
        c.login("anyone", srv.key)
        m = build_message("smtplib starttls", bcc=True)
        c.send_message(m)
        code, text = c.noop()
        assert code == 250
    msg_id = only_message_id(srv)
    check_stored(srv, msg_id, "smtplib starttls", rcpts=(TO, BCC), bcc_removed=True)


def test_smtplib_implicit_tls_reply_carries_id(srv):
    with smtplib.SMTP_SSL("127.0.0.1", srv.smtps_port, context=tls_context(srv),
                          timeout=10 * SLOW) as c:
        c.login("anyone", srv.key)
        c.mail(FROM)
        c.rcpt(TO)
        code, text = c.data(build_message("smtplib ssl").as_bytes(policy=email.policy.SMTP))
        assert code == 250, text
        assert text.decode().startswith("2.0.0 Ok: queued as ")
    msg_id = queued_id(text.decode())
    check_stored(srv, msg_id, "smtplib ssl")


def test_flask_mail(srv):
    flask = pytest.importorskip("flask")
    flask_mail = pytest.importorskip("flask_mail")
    app = flask.Flask("posthaste_test_app")
    app.config.update(MAIL_SERVER="127.0.0.1", MAIL_PORT=srv.smtp_port, MAIL_USE_TLS=True,
                      MAIL_USE_SSL=False, MAIL_USERNAME="flask", MAIL_PASSWORD=srv.key,
                      MAIL_DEFAULT_SENDER=("App", FROM))
    mail = flask_mail.Mail(app)

    @app.route("/signup")
    def signup():
        msg = flask_mail.Message(f"{SUBJECT} (flask)", recipients=[TO], body="Hello from Flask\n")
        msg.attach("report.bin", "application/octet-stream", attachment())
        mail.send(msg)
        return "sent"

    resp = app.test_client().get("/signup")
    assert resp.status_code == 200 and resp.data == b"sent"
    check_stored(srv, only_message_id(srv), "flask")


def write_eml(tmp_path, client):
    path = tmp_path / f"{client.replace(' ', '_')}.eml"
    path.write_bytes(build_message(client).as_bytes(policy=email.policy.SMTP))
    return path


@pytest.mark.parametrize("mode,port_attr", [("--tls", "smtp_port"), ("--tlsc", "smtps_port")])
def test_swaks(srv, tmp_path, mode, port_attr):
    if not shutil.which("swaks"):
        pytest.skip("swaks is not installed (scripts/deps installs it)")
    eml = write_eml(tmp_path, f"swaks {mode}")
    p = subprocess.run(["swaks", "--server", f"127.0.0.1:{getattr(srv, port_attr)}", mode,
                        "--auth", "PLAIN", "--auth-user", "swaks", "--auth-password", srv.key,
                        "--from", FROM, "--to", TO, "--data", f"@{eml}", "--timeout", "10"],
                       capture_output=True, text=True, timeout=30 * SLOW)
    assert p.returncode == 0, p.stdout + p.stderr
    msg_id = queued_id(p.stdout)
    check_stored(srv, msg_id, f"swaks {mode}")


def test_curl_starttls(srv, tmp_path):
    eml = write_eml(tmp_path, "curl")
    cert = os.path.join(srv.spool_dir, "tls-cert.pem")
    p = subprocess.run(["curl", "-sS", "--ssl-reqd", "--cacert", cert,
                        f"smtp://127.0.0.1:{srv.smtp_port}", "--mail-from", FROM, "--mail-rcpt", TO,
                        "--user", f"curl:{srv.key}", "--upload-file", str(eml), "-v",
                        "--max-time", "20"],
                       capture_output=True, text=True, timeout=30 * SLOW)
    assert p.returncode == 0, p.stderr
    assert "STARTTLS" in p.stderr
    msg_id = queued_id(p.stderr)
    check_stored(srv, msg_id, "curl")


def node_modules(tmp_path_factory):
    """Install Nodemailer from the lockfile into a per-user cache (once)."""
    if not shutil.which("node") or not shutil.which("npm"):
        pytest.skip("node/npm not installed (scripts/deps installs them)")
    cache = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
                         "posthaste-test-node")
    os.makedirs(cache, exist_ok=True)
    lock = open(os.path.join(NODE_DIR, "package-lock.json")).read()
    stamp = os.path.join(cache, "package-lock.json")
    if not (os.path.exists(stamp) and open(stamp).read() == lock and
            os.path.isdir(os.path.join(cache, "node_modules", "nodemailer"))):
        for name in ("package.json", "package-lock.json"):
            shutil.copy(os.path.join(NODE_DIR, name), cache)
        p = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--prefix", cache],
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stdout + p.stderr
    return os.path.join(cache, "node_modules")


@pytest.mark.parametrize("secure", [0, 1])
def test_nodemailer(srv, tmp_path, tmp_path_factory, secure):
    modules = node_modules(tmp_path_factory)
    att = tmp_path / "report.bin"
    att.write_bytes(attachment())
    client = f"nodemailer {'ssl' if secure else 'starttls'}"
    env = dict(os.environ, NODE_PATH=modules)
    p = subprocess.run(["node", os.path.join(NODE_DIR, "send.js"),
                        str(srv.smtps_port if secure else srv.smtp_port), str(secure),
                        os.path.join(srv.spool_dir, "tls-cert.pem"), srv.key,
                        f"App <{FROM}>", TO, f"{SUBJECT} ({client})", str(att)],
                       capture_output=True, text=True, env=env, timeout=60 * SLOW)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.startswith("250 2.0.0 Ok: queued as"), p.stdout
    check_stored(srv, queued_id(p.stdout), client)


def test_self_signed_pair_generated_once(make_server):
    """No certificate configured: serve makes one under spool_dir, key 0600, warns,
    and reuses it on the next start."""
    s = make_server()
    line = s.wait_log("tls_self_signed_generated")
    assert "trust" in line["hint"]
    cert = os.path.join(s.spool_dir, "tls-cert.pem")
    key = os.path.join(s.spool_dir, "tls-key.pem")
    assert os.stat(key).st_mode & 0o077 == 0
    before = open(cert, "rb").read()
    s.stop()
    s.start()
    s.wait_log("tls_self_signed")
    assert wait_port("127.0.0.1", s.smtps_port)
    assert open(cert, "rb").read() == before
    with smtplib.SMTP_SSL("127.0.0.1", s.smtps_port, context=tls_context(s),
                          timeout=10 * SLOW) as c:
        assert c.noop()[0] == 250


def test_configured_certificate_and_key_mode(make_server, tmp_path):
    d = tmp_path / "pki"
    d.mkdir()
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    os.chmod(key, 0o644)
    s = make_server({"server": {"tls_cert_file": str(cert), "tls_key_file": str(key)}},
                    start=False)
    s.start(wait_ready=False)
    assert s.proc.wait(timeout=15 * SLOW) != 0
    s.log.close()
    failed = [l for l in s.logs() if l.get("event") == "startup_failed"]
    assert failed and "readable by group or others" in failed[0]["error"]
    os.chmod(key, 0o600)
    s.start()
    ctx = __import__("ssl").create_default_context(cafile=str(cert))
    with smtplib.SMTP("127.0.0.1", s.smtp_port, timeout=10 * SLOW) as c:
        c.starttls(context=ctx)
        assert c.ehlo()[0] == 250
    assert not os.path.exists(os.path.join(s.spool_dir, "tls-cert.pem"))
