"""The posthaste command line: help, exit codes, config errors, keys, queue."""
import json
import os
import sqlite3
import subprocess

from conftest import BIN, ROOT, run_cli

COMMANDS = ["serve", "keys", "queue", "send", "sendmail", "dkim", "doctor", "suppress", "version", "help"]


def test_help_and_usage_exit_codes():
    assert run_cli("--help").returncode == 0
    p = subprocess.run([BIN], capture_output=True, text=True)
    assert p.returncode == 2 and "usage: posthaste" in p.stderr
    p = run_cli("frobnicate", check=False)
    assert p.returncode == 2 and "unknown command 'frobnicate'" in p.stderr
    for cmd in COMMANDS:
        h = run_cli("help", cmd)
        assert h.stdout.startswith("usage: posthaste"), cmd
        assert run_cli(cmd, "--help").stdout == h.stdout, cmd
    assert run_cli("keys", "create", "--bogus", check=False).returncode == 2
    assert run_cli("queue", "show", check=False).returncode == 2
    assert "posthaste 0." in run_cli("version").stdout


def write(tmp_path, text):
    p = tmp_path / "posthaste.conf"
    p.write_text(text)
    return str(p)


def test_config_errors_name_file_and_line(tmp_path):
    conf = write(tmp_path, "[server]\nspool_dir = x\n[smtp]\nmax_recipients = many\n")
    p = run_cli("queue", "stats", config=conf, check=False)
    assert p.returncode == 1
    assert f"{conf}:4: [smtp] max_recipients: must be an integer" in p.stderr
    conf = write(tmp_path, "[smtp]\nlisten_plain = 1\n")
    p = run_cli("serve", config=conf, check=False)
    assert p.returncode == 1 and ":2: unknown key 'listen_plain' in section [smtp]" in p.stderr


def test_every_config_key_is_documented_in_readme():
    ref = run_cli("help", "config", "--markdown").stdout.strip()
    readme = open(os.path.join(ROOT, "README.md")).read()
    assert ref in readme, "README's configuration reference is stale: run scripts/gen-readme-config"


def test_keys_lifecycle(tmp_path):
    conf = write(tmp_path, f"[server]\nspool_dir = {tmp_path}/spool\n")
    p = run_cli("keys", "create", "--name", "shop", "--scope", "send", "--scope", "read",
                "--sender-domain", "shop.example", "--allow-ip", "127.0.0.0/8",
                "--rate", "5/s", config=conf)
    token = p.stdout.strip()
    assert token.startswith("ph_") and len(token) == 48
    key_id = token.split("_")[1]
    listed = json.loads(run_cli("keys", "list", "--json", config=conf).stdout)
    assert [k["id"] for k in listed] == [key_id]
    k = listed[0]
    assert k["scopes"] == "send,read" and k["sender_domains"] == "shop.example"
    assert k["allow_ips"] == "127.0.0.0/8" and k["rate"] == 5.0 and not k["revoked"]
    # The secret is shown once and stored nowhere.
    secret = token.split("_")[2]
    assert secret not in run_cli("keys", "list", config=conf).stdout
    con = sqlite3.connect(f"{tmp_path}/spool/spool.db")
    dump = "\n".join(con.iterdump())
    con.close()
    assert secret not in dump
    assert run_cli("keys", "revoke", key_id, config=conf).returncode == 0
    assert json.loads(run_cli("keys", "list", "--json", config=conf).stdout)[0]["revoked"]
    p = run_cli("keys", "revoke", key_id, config=conf, check=False)
    assert p.returncode == 1 and "no active key" in p.stderr


def test_keys_create_rejects_bad_input(tmp_path):
    conf = write(tmp_path, f"[server]\nspool_dir = {tmp_path}/spool\n")
    cases = [
        (["--scope", "root"], "unknown scope 'root'"),
        (["--allow-ip", "10.0.0.0/33"], "not an IP address or CIDR"),
        (["--rate", "fast"], "not a rate"),
        ([], "--name is required"),
    ]
    for args, message in cases:
        extra = [] if not args or args[0] == "--name" else ["--name", "x"]
        p = run_cli("keys", "create", *extra, *args, config=conf, check=False)
        assert p.returncode == 2, args
        assert message in p.stderr, (args, p.stderr)
    # Nothing was created by the refused commands.
    assert json.loads(run_cli("keys", "list", "--json", config=conf).stdout) == []


def test_queue_commands_on_empty_and_missing(tmp_path):
    conf = write(tmp_path, f"[server]\nspool_dir = {tmp_path}/spool\n")
    stats = json.loads(run_cli("queue", "stats", "--json", config=conf).stdout)
    assert stats["queued"] == 0 and set(stats) >= {"queued", "deferred", "delivered", "bounced"}
    assert json.loads(run_cli("queue", "list", "--json", config=conf).stdout) == []
    p = run_cli("queue", "show", "01nosuchmessage0000000000x", config=conf, check=False)
    assert p.returncode == 1 and "no message" in p.stderr
    p = run_cli("queue", "delete", "01nosuchmessage0000000000x", config=conf, check=False)
    assert p.returncode == 1
    p = run_cli("queue", "list", "--state", "weird", config=conf, check=False)
    assert p.returncode == 2 and "unknown state" in p.stderr
    assert run_cli("queue", "check", config=conf).stdout.strip() == "ok"


def test_suppress_command(tmp_path):
    conf = write(tmp_path, f"[server]\nspool_dir = {tmp_path}/spool\n")
    assert run_cli("suppress", "add", "Ann@Example.ORG", "--reason", "complaint", config=conf).returncode == 0
    assert run_cli("suppress", "add", "bob@example.org", "--scope", "shop.example", config=conf).returncode == 0
    listed = json.loads(run_cli("suppress", "list", "--json", config=conf).stdout)
    assert [(x["email"], x["scope"], x["reason"]) for x in listed] == [
        ("ann@example.org", "", "complaint"), ("bob@example.org", "shop.example", "manual")]
    p = run_cli("suppress", "add", "not-an-address", config=conf, check=False)
    assert p.returncode == 2 and "not-an-address" in p.stderr
    p = run_cli("suppress", "add", "c@example.org", "--reason", "because", config=conf, check=False)
    assert p.returncode == 2 and "--reason" in p.stderr
    assert run_cli("suppress", "remove", "ann@example.org", config=conf).returncode == 0
    p = run_cli("suppress", "remove", "ann@example.org", config=conf, check=False)
    assert p.returncode == 1 and "not suppressed" in p.stderr
    assert [x["email"] for x in json.loads(run_cli("suppress", "list", "--json", config=conf).stdout)] == [
        "bob@example.org"]
