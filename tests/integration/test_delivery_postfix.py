"""A real Postfix as the MX of pf.test.

Postfix runs from a temporary config_directory/queue_directory with its own
master.cf listening on one loopback address, delivers to a Maildir with
its virtual(8) agent, and knows exactly one mailbox (inline map), so
unknown users get Postfix's own 550 5.1.1. STARTTLS is offered with a
self-signed certificate. Started and stopped with `postfix -c DIR`; needs
root (Postfix's programs switch to the postfix user).
"""
import glob
import os
import shutil
import subprocess
import tempfile

import pytest

from delivery_receivers import (Dnsmasq, delivery_sections, events_of, free_port_on, loopback_net,
                                submit, suppressions, wait_for, wait_states)

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"

MASTER_CF = """{ip}:{port} inet n - n - - smtpd
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
virtual unix - n n - - virtual
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
tlsmgr unix - - n 1000? 1 tlsmgr
"""

MAIN_CF = """compatibility_level = 3.6
queue_directory = {d}/queue
data_directory = {d}/data
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = all
inet_protocols = ipv4
myhostname = mx.pf.test
mydomain = pf.test
myorigin = pf.test
mydestination =
mynetworks = 127.0.0.0/8
virtual_mailbox_domains = pf.test
virtual_mailbox_base = {d}/mail
virtual_mailbox_maps = inline:{{ known@pf.test=box/ }}
virtual_uid_maps = static:65534
virtual_gid_maps = static:65534
maillog_file = {d}/maillog
maillog_file_prefixes = {d}
smtputf8_enable = yes
smtpd_tls_security_level = may
smtpd_tls_cert_file = {d}/conf/cert.pem
smtpd_tls_key_file = {d}/conf/key.pem
alias_maps =
alias_database =
"""


def postfix(d, *args):
    return subprocess.run([POSTFIX, "-c", os.path.join(d, "conf"), *args], capture_output=True,
                          text=True, timeout=60)


@pytest.fixture
def pf():
    if os.geteuid() != 0 or not os.path.exists(POSTFIX):
        pytest.skip("Postfix needs root and the postfix package")
    pre = loopback_net()
    ip = pre + "2"
    port = free_port_on([ip])
    # Postfix's unprivileged daemons must reach these paths: not pytest's 0700 tmp.
    d = tempfile.mkdtemp(prefix="ph-postfix-")
    os.chmod(d, 0o755)
    for sub in ("conf", "queue", "data", "mail"):
        os.mkdir(os.path.join(d, sub))
    shutil.chown(os.path.join(d, "data"), "postfix")
    shutil.chown(os.path.join(d, "mail"), 65534, 65534)
    with open(os.path.join(d, "conf", "main.cf"), "w") as f:
        f.write(MAIN_CF.format(d=d))
    with open(os.path.join(d, "conf", "master.cf"), "w") as f:
        f.write(MASTER_CF.format(ip=ip, port=port))
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", os.path.join(d, "conf", "key.pem"), "-out",
                    os.path.join(d, "conf", "cert.pem"), "-days", "2", "-subj", "/CN=mx.pf.test"],
                   check=True, capture_output=True, timeout=30)
    dns = Dnsmasq(pre + "1", ["--mx-host=pf.test,mx.pf.test,10", f"--host-record=mx.pf.test,{ip}"]).start()
    started = False
    try:
        postfix(d, "check")
        p = postfix(d, "start")
        if p.returncode != 0:
            log = open(os.path.join(d, "maillog")).read() if os.path.exists(os.path.join(d, "maillog")) else ""
            pytest.skip(f"Postfix did not start here: {p.stderr} {log[-1000:]}")
        started = True
        yield {"dir": d, "dns": dns, "port": port}
    finally:
        if started:
            postfix(d, "stop")
        dns.stop()
        shutil.rmtree(d, ignore_errors=True)


def test_delivery_to_a_real_postfix(make_server, pf):
    srv = make_server(delivery_sections(pf["dns"].server, pf["port"], max_connections_per_domain=2))
    ids = submit(srv, 20, "app@src.test", ["known@pf.test", "nobody@pf.test"], ingress="api")
    for i in ids:
        msg = wait_states(srv, i, {"known@pf.test": "delivered", "nobody@pf.test": "bounced"}, timeout=30)
    # Postfix's own words for the unknown user, classified as a hard bounce.
    ev = events_of(msg, "bounced", "nobody@pf.test")[0]["data"]
    assert ev["code"] == 550 and ev["status"] == "5.1.1" and ev["bounce"] == "hard"
    assert "User unknown in virtual mailbox table" in ev["reply"]
    ok = events_of(msg, "delivered", "known@pf.test")[0]["data"]
    assert ok["tls"] is True and "queued as" in ok["reply"]
    assert suppressions(srv) == {"nobody@pf.test": "hard_bounce"}
    # Postfix delivered every message once into the Maildir.
    wait_for(lambda: len(glob.glob(os.path.join(pf["dir"], "mail", "box", "new", "*"))) == 20, 20,
             "20 messages in the Maildir")
    subjects = set()
    for path in glob.glob(os.path.join(pf["dir"], "mail", "box", "new", "*")):
        with open(path, "rb") as f:
            data = f.read()
        subjects.add([ln for ln in data.split(b"\n") if ln.startswith(b"Subject:")][0].strip())
    assert len(subjects) == 20
