"""TLS policy on outbound connections, certificates made with openssl here.

mx.s.test (scripted receiver with STARTTLS) presents either a certificate
signed by a test CA or a self-signed one; relay.s.test is a smart host
with AUTH.
"""
import os
import ssl
import subprocess

import pytest

from delivery_receivers import (Dnsmasq, ScriptedSMTP, delivery_sections, events_of, free_port_on,
                                loopback_net, show, submit, wait_for, wait_states)


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("certs"))
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=Posthaste Test CA", cwd=d)
    for name in ("mx.s.test", "relay.s.test", "other.test"):
        openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
        with open(os.path.join(d, f"{name}.ext"), "w") as f:
            f.write(f"subjectAltName=DNS:{name}\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=d)
    openssl("req", "-x509", *ec, "-keyout", "self.key", "-out", "self.pem", "-days", "2",
            "-subj", "/CN=mx.s.test", "-addext", "subjectAltName=DNS:mx.s.test", cwd=d)
    return d


def server_ctx(certs, name):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(os.path.join(certs, f"{name}.pem"), os.path.join(certs, f"{name}.key"))
    return ctx


@pytest.fixture
def env(make_server, certs):
    pre = loopback_net()
    mx_ip, relay_ip = pre + "2", pre + "3"
    port = free_port_on([mx_ip, relay_ip])
    dns = Dnsmasq(pre + "1", ["--mx-host=s.test,mx.s.test,10", f"--host-record=mx.s.test,{mx_ip}",
                              f"--host-record=relay.s.test,{relay_ip}"]).start()
    started = []

    class Env:
        ca = os.path.join(certs, "ca.pem")

        def receiver(self, cert="mx.s.test", ip=mx_ip, **kw):
            kw.setdefault("starttls", server_ctx(certs, cert) if cert else None)
            r = ScriptedSMTP(ip, port, **kw).start()
            started.append(r)
            return r

        def server(self, extra=None, **delivery):
            sections = delivery_sections(dns.server, port, **delivery)
            sections.update(extra or {})
            return make_server(sections)

    e = Env()
    e.relay_ip, e.port = relay_ip, port
    yield e
    for r in started:
        r.stop()
    dns.stop()


def test_verify_fails_against_a_self_signed_receiver(env):
    rx = env.receiver(cert="self")
    srv = env.server(tls_policy_mx="verify", retry_schedule="1h")
    [i] = submit(srv, 1, "app@src.test", ["u@s.test"])
    msg = wait_states(srv, i, {"u@s.test": "deferred"})
    reply = events_of(msg, "deferred")[0]["data"]["reply"]
    assert "certificate" in reply and "mx.s.test" in reply
    assert not rx.messages
    assert srv.stop() == 0


def test_verify_succeeds_with_the_ca_configured(env):
    rx = env.receiver()
    srv = env.server(tls_policy_mx="verify", tls_ca_file=env.ca)
    [i] = submit(srv, 1, "app@src.test", ["u@s.test"])
    msg = wait_states(srv, i, {"u@s.test": "delivered"})
    assert events_of(msg, "delivered")[0]["data"]["tls"] is True
    assert rx.messages[0].tls
    # EHLO again after STARTTLS (RFC 3207).
    assert [c.split()[0] for c in rx.commands[:3]] == ["EHLO", "STARTTLS", "EHLO"]


def test_verify_checks_the_host_name(env):
    env.receiver(cert="other.test")  # valid chain, wrong name
    srv = env.server(tls_ca_file=env.ca, retry_schedule="1h",
                     extra={"domain s.test": {"tls_policy": "verify"}})  # per-domain override
    [i] = submit(srv, 1, "app@src.test", ["u@s.test"])
    msg = wait_states(srv, i, {"u@s.test": "deferred"})
    assert "certificate" in events_of(msg, "deferred")[0]["data"]["reply"]


def test_encrypt_requires_starttls(env):
    env.receiver(cert=None)
    srv = env.server(tls_policy_mx="encrypt", retry_schedule="1h")
    [i] = submit(srv, 1, "app@src.test", ["u@s.test"])
    msg = wait_states(srv, i, {"u@s.test": "deferred"})
    assert "STARTTLS is not offered" in events_of(msg, "deferred")[0]["data"]["reply"]


def test_may_uses_tls_without_verifying_and_none_never_does(env):
    rx = env.receiver(cert="self")
    srv = env.server()  # tls_policy_mx defaults to may
    [i] = submit(srv, 1, "app@src.test", ["u@s.test"])
    wait_states(srv, i, {"u@s.test": "delivered"})
    assert rx.messages[0].tls
    srv.stop()
    srv2 = env.server(tls_policy_mx="none")
    [j] = submit(srv2, 1, "app@src.test", ["v@s.test"])
    wait_states(srv2, j, {"v@s.test": "delivered"})
    assert not rx.messages[1].tls and rx.commands.count("STARTTLS") == 1  # only the first server's


def test_bytes_injected_after_starttls_are_discarded(env):
    """A man in the middle appends a plaintext reply after "220": the client
    must drop it, not read it as the answer to its next command."""
    rx = env.receiver(inject_after_starttls=b"250-PIPELINING\r\n250 injected\r\n")
    srv = env.server(tls_policy_mx="verify", tls_ca_file=env.ca)
    [i] = submit(srv, 1, "app@src.test", ["u@s.test"])
    wait_states(srv, i, {"u@s.test": "delivered"})
    assert rx.messages[0].tls


def test_relay_with_auth_from_environment(env, monkeypatch):
    rx = env.receiver(cert="relay.s.test", ip=env.relay_ip, auth={"smtpuser": "s3cret pw"})
    monkeypatch.setenv("PH_TEST_RELAY_PW", "s3cret pw")
    srv = env.server(route="relay", relay_host="relay.s.test", relay_port=env.port,
                     relay_user="smtpuser", relay_password_env="PH_TEST_RELAY_PW", tls_ca_file=env.ca)
    [i] = submit(srv, 1, "app@src.test", ["a@anywhere.example", "b@elsewhere.example"])
    wait_states(srv, i, {"a@anywhere.example": "delivered", "b@elsewhere.example": "delivered"})
    assert rx.auth_seen == [("PLAIN", "smtpuser", "s3cret pw")]
    assert rx.messages[0].tls
    # The password never reaches the log.
    assert srv.stop() == 0
    assert "s3cret" not in open(srv.log_path, errors="replace").read()


def test_relay_auth_login_from_file_over_implicit_tls(env, tmp_path, certs):
    pw = tmp_path / "pw"
    pw.write_text("pässword\n")
    rx = env.receiver(cert=None, ip=env.relay_ip, implicit_tls=server_ctx(certs, "relay.s.test"),
                      auth={"u": "pässword"}, auth_mechs="LOGIN")
    srv = env.server(extra={"domain dest.example": {
        "route": "relay", "relay_host": "relay.s.test", "relay_port": str(env.port),
        "relay_tls": "implicit", "relay_user": "u", "relay_password_file": str(pw)}},
        tls_ca_file=env.ca)
    [i] = submit(srv, 1, "app@src.test", ["x@dest.example"])
    wait_states(srv, i, {"x@dest.example": "delivered"})
    assert rx.auth_seen == [("LOGIN", "u", "pässword")] and rx.messages[0].tls


def test_relay_verify_is_the_default(env):
    env.receiver(cert="self", ip=env.relay_ip)
    srv = env.server(route="relay", relay_host="relay.s.test", relay_port=env.port, retry_schedule="1h")
    [i] = submit(srv, 1, "app@src.test", ["a@anywhere.example"])
    msg = wait_states(srv, i, {"a@anywhere.example": "deferred"})
    assert "certificate" in events_of(msg, "deferred")[0]["data"]["reply"]


def tls11_ctx(certs):
    """A receiver that speaks only TLS 1.0/1.1."""
    import warnings
    ctx = server_ctx(certs, "mx.s.test")
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    return ctx


def test_tls_older_than_1_2_is_refused(env, certs):
    rx = env.receiver(cert=None, starttls=tls11_ctx(certs))
    srv = env.server(tls_policy_mx="encrypt", retry_schedule="1h")
    [i] = submit(srv, 1, "app@src.test", ["u@s.test"])
    msg = wait_states(srv, i, {"u@s.test": "deferred"})
    assert "TLS" in events_of(msg, "deferred")[0]["data"]["reply"]
    assert not rx.messages


def test_may_falls_back_to_plaintext_when_the_handshake_fails(env, certs):
    rx = env.receiver(cert=None, starttls=tls11_ctx(certs))
    srv = env.server()  # may
    [i] = submit(srv, 1, "app@src.test", ["u@s.test"])
    msg = wait_states(srv, i, {"u@s.test": "delivered"})
    assert events_of(msg, "delivered")[0]["data"]["tls"] is False
    assert not rx.messages[0].tls and rx.commands.count("STARTTLS") == 1 and rx.connections == 2
