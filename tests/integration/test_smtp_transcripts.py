"""Protocol transcripts: each smtp_transcripts/*.smtp file is one session
played against the real binary (format: smtp_transcripts/README.md)."""
import codecs
import glob
import os

import pytest

from smtp_helpers import RawSMTP, plain_auth, queue_list, tls_context

HERE = os.path.dirname(os.path.abspath(__file__))
FILES = sorted(glob.glob(os.path.join(HERE, "smtp_transcripts", "*.smtp")))


def load(path):
    """(config sections, steps) of a transcript file."""
    config, steps = {}, []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f.read().splitlines(), 1):
            if not line or line.startswith("#"):
                continue
            if line.startswith("!config "):
                name, value = line[len("!config "):].split("=", 1)
                section, key = name.strip().split(".", 1)
                config.setdefault(section, {})[key] = value.strip()
            else:
                steps.append((n, line))
    return config, steps


def expand(text, key):
    return text.replace("{key}", key).replace("{plain}", plain_auth(key))


def play(srv, steps, name):
    key = srv.key
    implicit = any(line == "!implicit_tls" for _, line in steps)
    c = RawSMTP(srv.smtps_port if implicit else srv.smtp_port,
                implicit_tls=tls_context(srv) if implicit else None)
    try:
        for n, line in steps:
            where = f"{name}:{n}: {line!r}"
            if line == "!implicit_tls":
                continue
            if line == "!starttls":
                assert c.cmd("EHLO client.test")[0] == 250, where
                c.starttls(tls_context(srv))
            elif line == "!auth":
                c.login(key)
            elif line.startswith("!queued "):
                assert len(queue_list(srv)) == int(line.split()[1]), where
            elif line.startswith(">>"):
                raw = codecs.decode(expand(line[2:], key), "unicode_escape").encode("latin-1")
                c.send(raw)
            elif line.startswith(">"):
                c.send(expand(line[1:], key).encode("utf-8") + b"\r\n")
            elif line == "<!closed":
                assert c.closed(), where
            elif line == "<!silence":
                c.sock.settimeout(0.5)
                try:
                    got = c.sock.recv(4096)
                except (TimeoutError, OSError):
                    got = None
                finally:
                    c.sock.settimeout(c.timeout)
                assert got is None, f"{where}: unexpected {got!r}"
            elif line.startswith("<"):
                code, text = c.reply()
                got = f"{code} {text}".replace("\n", " ")
                assert got.startswith(line[1:]), f"{where}: got {got!r}"
            else:
                raise AssertionError(f"{where}: unknown transcript line")
    finally:
        c.close()


@pytest.mark.parametrize("path", FILES, ids=[os.path.basename(p)[:-5] for p in FILES])
def test_transcript(make_server, path):
    config, steps = load(path)
    srv = make_server(config)
    srv.key = srv.create_key("--sender-domain", "example.com")
    play(srv, steps, os.path.basename(path))
