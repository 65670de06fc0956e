"""Bad TLS: certificates and protocol versions refused as client and server."""
import os
import socket
import ssl
import threading

from rel_common import SLOW, RelServer, log, spool_submit, wait_until


# ---- scenario 5: bad TLS --------------------------------------------------------------------

def make_certs(d):
    """A test CA; CA-signed certificates for good, expired, wrong-host and
    old-protocol receivers; a self-signed one. Written as PEM files in d."""
    import datetime
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    day = datetime.timedelta(days=1)

    def write(name, cert, key):
        with open(os.path.join(d, f"{name}.pem"), "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        with open(os.path.join(d, f"{name}.key"), "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))

    def build(cn, san, issuer_name, issuer_key, key, start, end, ca=False):
        b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
             .issuer_name(issuer_name).public_key(key.public_key())
             .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end))
        if ca:
            b = b.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            b = b.add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                                critical=True)
        else:
            b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Posthaste Reliability CA")])
    ca = build("Posthaste Reliability CA", None, ca_name, ca_key, ca_key, now - day, now + 30 * day, ca=True)
    write("ca", ca, ca_key)
    plan = {"good": ("mx.good.test", now - day, now + 30 * day),
            "expired": ("mx.expired.test", now - 30 * day, now - day),
            "wronghost": ("other.test", now - day, now + 30 * day),
            "old": ("mx.old.test", now - day, now + 30 * day)}
    for name, (san, start, end) in plan.items():
        k = ec.generate_private_key(ec.SECP256R1())
        write(name, build(san, san, ca_name, ca_key, k, start, end), k)
    k = ec.generate_private_key(ec.SECP256R1())
    self_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mx.self.test")])
    write("self", build("mx.self.test", "mx.self.test", self_name, k, k, now - day, now + 30 * day), k)


def tls_ctx(d, name, old_only=False):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(os.path.join(d, f"{name}.pem"), os.path.join(d, f"{name}.key"))
    if old_only:
        _tls10_11_only(ctx)
    return ctx


def _tls10_11_only(ctx):
    """Only TLS 1.0 and 1.1, with the security level lowered so OpenSSL 3
    really speaks them (it refuses them at its default level)."""
    import warnings
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1


def old_client_ctx():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    _tls10_11_only(ctx)
    return ctx


def old_tls_really_works(d):
    """Control: our TLS 1.0/1.1-only client and server do complete a
    handshake with each other, so a refusal by Posthaste is Posthaste's."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    got = []

    def serve():
        c, _ = ls.accept()
        try:
            s = tls_ctx(d, "old", old_only=True).wrap_socket(c, server_side=True)
            got.append(s.version())
            s.close()
        except (OSError, ssl.SSLError) as e:
            got.append(str(e))
        finally:
            c.close()
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    with socket.create_connection(ls.getsockname(), timeout=5) as raw:
        s = old_client_ctx().wrap_socket(raw)
        version = s.version()
        s.close()
    t.join(5)
    ls.close()
    return version


def bad_tls(tmp_path):
    """Under tls_policy verify: expired, self-signed and wrong-host receiver
    certificates and a TLS 1.0/1.1-only receiver are deferred with a clear
    reason (a good receiver delivers); as a server, Posthaste refuses TLS
    1.0/1.1 clients on the implicit-TLS and STARTTLS ports."""
    from delivery_receivers import (Dnsmasq, ScriptedSMTP, events_of, free_port_on, loopback_net,
                                    rcpt_states, show)
    d = str(tmp_path / "certs")
    os.makedirs(d)
    make_certs(d)
    control = old_tls_really_works(d)
    assert control in ("TLSv1", "TLSv1.1"), f"the TLS 1.0/1.1 control handshake failed: {control}"
    pre = loopback_net()
    names = ["good", "expired", "self", "wronghost", "old"]
    ips = {n: pre + str(2 + i) for i, n in enumerate(names)}
    port = free_port_on(list(ips.values()))
    records = []
    for n, ip in ips.items():
        records += [f"--mx-host={n}.test,mx.{n}.test,10", f"--host-record=mx.{n}.test,{ip}"]
    dns = Dnsmasq(pre + "1", records).start()
    rxs = [ScriptedSMTP(ips[n], port, starttls=tls_ctx(d, n, old_only=(n == "old"))).start() for n in names]
    srv = RelServer(tmp_path / "srv", {"delivery": {
        "paused": "no", "tls_policy_mx": "verify", "tls_ca_file": os.path.join(d, "ca.pem"),
        "dns_servers": dns.server, "mx_port": str(port), "retry_schedule": "1h",
        "scheduler_interval": "100ms", "timeout_connect": "3s", "timeout_greeting": "3s"}})
    try:
        srv.start_and_wait()
        ids = {n: spool_submit(srv, 1, [f"u@{n}.test"], f"tls{n}")[0] for n in names}
        want = {n: ("delivered" if n == "good" else "deferred") for n in names}
        wait_until(lambda: all(rcpt_states(srv, ids[n]).get(f"u@{n}.test") == want[n] for n in names),
                   20, f"states {want}", 0.3)
        reasons = {}
        for n in names:
            if n == "good":
                continue
            ev = events_of(show(srv, ids[n]), "deferred", f"u@{n}.test")
            reasons[n] = ev[0]["data"]["reply"]
        # The TLS 1.1 receiver (Python asyncio) drops the connection without
        # an alert, so the client can only say the peer closed in the
        # handshake (an OpenSSL peer's alert would be named instead). It
        # once read "connection error: Success": errno 0 is not a reason.
        keywords = {"expired": "certificate has expired", "self": "self-signed",
                    "wronghost": "hostname mismatch", "old": "closed by the server in the tls handshake"}
        for n, k in keywords.items():
            assert k in reasons[n].lower(), f"{n}: reason does not say '{k}': {reasons[n]!r}"
            assert "success" not in reasons[n].lower(), reasons[n]
        assert sum(len(r.messages) for r in rxs[1:]) == 0, "a bad-TLS receiver got the message"
        server_side = refuse_old_clients(srv)
        figures = {"client_side": reasons, "server_side": server_side, "control": control}
        log(f"bad TLS result: {figures}")
        return figures
    finally:
        srv.kill()
        for r in rxs:
            r.stop()
        dns.stop()


def refuse_old_clients(srv):
    """TLS 1.0/1.1-only clients fail the handshake on both TLS ports."""
    out = {}
    with socket.create_connection(("127.0.0.1", srv.smtps_port), timeout=5 * SLOW) as raw:
        try:
            s = old_client_ctx().wrap_socket(raw)
            raise AssertionError(f"implicit TLS accepted {s.version()}")
        except (ssl.SSLError, ConnectionError) as e:
            out["implicit"] = str(e)[:120]
    with socket.create_connection(("127.0.0.1", srv.smtp_port), timeout=5 * SLOW) as raw:
        f = raw.makefile("rb")
        f.readline()
        raw.sendall(b"EHLO old.test\r\n")
        while not f.readline()[3:4] == b" ":
            pass
        raw.sendall(b"STARTTLS\r\n")
        assert f.readline().startswith(b"220")
        try:
            s = old_client_ctx().wrap_socket(raw)
            raise AssertionError(f"STARTTLS accepted {s.version()}")
        except (ssl.SSLError, ConnectionError) as e:
            out["starttls"] = str(e)[:120]
    return out
