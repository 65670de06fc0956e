"""`posthaste sendmail`: the sendmail(8) interface, its maildrop and pickup."""
import json
import os
import subprocess
import time

from conftest import BIN, SLOW

MESSAGE = (b"Subject: nightly report\nTo: ops@example.com\nCc: Lead <lead@example.org>\n"
           b"Bcc: audit@example.net\n\nAll jobs ran.\n.\nthis line is after the dot\n")


def sendmail(srv, *args, input=MESSAGE, env=None):
    e = dict(os.environ)
    e.pop("POSTHASTE_KEY", None)
    e.update(env or {})
    return subprocess.run([BIN, "sendmail", "-C", srv.config, *args], input=input,
                          capture_output=True, env=e, timeout=30 * SLOW)


def queued(srv):
    return json.loads(srv.cli("queue", "list", "--json", "--limit", "1000").stdout)


def wait_queued(srv, count, timeout=10):
    deadline = time.monotonic() + timeout * SLOW
    while time.monotonic() < deadline:
        msgs = queued(srv)
        if len(msgs) >= count:
            return msgs
        time.sleep(0.05)
    raise AssertionError(f"expected {count} queued messages, have {len(queued(srv))}")


def raw(srv, msg_id):
    """The stored bytes, CRLF intact (text mode would translate them)."""
    p = subprocess.run([BIN, "queue", "show", msg_id, "--raw", "-c", srv.config],
                       capture_output=True, check=True)
    return p.stdout.decode()


def test_dropped_while_down_then_picked_up(make_server):
    srv = make_server(start=False)
    p = sendmail(srv, "-t", "-f", "cron@example.com", "-F", "Cron Daemon")
    assert p.returncode == 0, p.stderr
    new = os.path.join(srv.spool_dir, "maildrop", "new")
    assert len(os.listdir(new)) == 1
    srv.start()
    (m,) = wait_queued(srv, 1)
    assert m["ingress"] == "sendmail" and m["mail_from"] == "cron@example.com"
    assert sorted(r["email"] for r in m["recipients"]) == [
        "audit@example.net", "lead@example.org", "ops@example.com"]
    text = raw(srv, m["id"])
    assert 'From: "Cron Daemon" <cron@example.com>\r\n' in text
    assert "Bcc:" not in text and "audit@example.net" not in text
    assert "All jobs ran.\r\n" in text
    assert "after the dot" not in text  # a lone '.' ends input without -i
    deadline = time.monotonic() + 5 * SLOW
    while os.listdir(new) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert os.listdir(new) == []  # removed only after the commit


def test_dash_i_keeps_lone_dot_and_explicit_recipients(server):
    p = sendmail(server, "-i", "-f", "app@example.com", "someone@example.com")
    assert p.returncode == 0, p.stderr
    (m,) = wait_queued(server, 1)
    assert [r["email"] for r in m["recipients"]] == ["someone@example.com"]
    assert "\r\n.\r\nthis line is after the dot\r\n" in raw(server, m["id"])


def test_with_key_goes_through_the_api(server):
    key = server.create_key("--sender-domain", "example.com")
    p = sendmail(server, "-f", "app@example.com", "x@example.org", env={"POSTHASTE_KEY": key})
    assert p.returncode == 0, p.stderr
    (m,) = queued(server)  # acknowledged synchronously: already there
    assert m["ingress"] == "api" and m["key_id"] == key.split("_")[1]
    assert not os.listdir(os.path.join(server.spool_dir, "maildrop", "new"))
    # The key's sender domains are enforced: 77 (EX_NOPERM), nothing queued.
    p = sendmail(server, "-f", "app@other.test", "x@example.org", env={"POSTHASTE_KEY": key})
    assert p.returncode == 77, (p.returncode, p.stderr)
    assert len(queued(server)) == 1


def test_server_down_with_key_is_tempfail_and_kept(make_server):
    srv = make_server(start=False)
    key = srv.create_key()
    p = sendmail(srv, "-f", "app@example.com", "x@example.org", env={"POSTHASTE_KEY": key})
    assert p.returncode == 75, p.stderr  # EX_TEMPFAIL
    assert b"kept in" in p.stderr
    srv.start()
    (m,) = wait_queued(srv, 1)
    assert m["ingress"] == "sendmail"


def test_usage_and_bad_input(server):
    assert sendmail(server, "-Z").returncode == 64
    p = sendmail(server, "-f", "a@example.com")  # no recipients
    assert p.returncode == 64 and b"no recipients" in p.stderr
    p = sendmail(server, "-f", "a@example.com", "not-an-address")
    assert p.returncode == 64 and b"not-an-address" in p.stderr
    p = sendmail(server, "-F", 'evil"\nBcc: x@y.z', "-f", "a@example.com", "b@example.com")
    assert p.returncode == 64
    time.sleep(1.2 * SLOW)  # one pickup interval: nothing was dropped either
    assert queued(server) == []


def test_dropped_while_down_is_delivered_after_start(make_server):
    """sendmail with the server down: kept in the maildrop, delivered once serve runs."""
    from delivery_receivers import (Dnsmasq, ScriptedSMTP, delivery_sections, free_port_on,
                                    loopback_net, wait_for)
    pre = loopback_net()
    mx_ip = pre + "2"
    port = free_port_on([mx_ip])
    dns = Dnsmasq(pre + "1", ["--mx-host=s.test,mx.s.test,10", f"--host-record=mx.s.test,{mx_ip}"]).start()
    rx = ScriptedSMTP(mx_ip, port).start()
    try:
        srv = make_server(delivery_sections(dns.server, port), start=False)
        key = srv.create_key()
        p = sendmail(srv, "-f", "cron@example.com", "ops@s.test",
                     input=b"Subject: disk full\n\n/var is at 99%\n", env={"POSTHASTE_KEY": key})
        assert p.returncode == 75, p.stderr  # server down: EX_TEMPFAIL, kept for pickup
        srv.start()
        wait_for(lambda: rx.messages, 15, "delivery of the dropped message")
        (m,) = rx.messages
        assert m.rcpts == ["ops@s.test"] and b"/var is at 99%" in m.data
    finally:
        rx.stop()
        dns.stop()
