/*
 * commands — the table of `posthaste` subcommands with their usage text.
 * A new command is one entry here plus its cmd_X() in src/cli/.
 */
#include "cli/cli.h"

#include <stdio.h>
#include <string.h>

static const cli_command commands[] = {
    {"serve", cmd_serve, "run the mail server",
     "usage: posthaste serve [-c CONFIG]\n"
     "\n"
     "Run the server: SMTP submission, HTTP API, delivery, on one event loop.\n"
     "Without -c, reads $POSTHASTE_CONFIG or ./posthaste.conf when present,\n"
     "else runs on built-in defaults (spool in ./var, listeners on loopback).\n"
     "\n"
     "Signals: SIGTERM/SIGINT stop accepting, finish in-flight commits and exit;\n"
     "SIGHUP re-reads the configuration (log level and limits).\n"},
    {"keys", cmd_keys, "create, list and revoke API keys",
     "usage: posthaste keys create --name NAME [--scope send|read|admin ...]\n"
     "                             [--sender-domain D ...] [--allow-ip CIDR ...]\n"
     "                             [--rate N/s] [--require-signing] [--bulk] [-c CONFIG]\n"
     "       posthaste keys list [--json] [-c CONFIG]\n"
     "       posthaste keys revoke ID [-c CONFIG]\n"
     "\n"
     "A key (ph_<id>_<secret>) is printed once by create and never again; only a\n"
     "hash is stored. The same key is the SMTP AUTH password and the API Bearer token.\n"
     "Scopes: send (submit mail), read (status, events), admin (keys, suppressions).\n"
     "--bulk marks the key's mail as bulk: every message gets one-click unsubscribe\n"
     "headers (and must have one recipient).\n"},
    {"send", cmd_send, "send one message through the HTTP API",
     "usage: posthaste send --key-env VAR --from ADDR --to ADDR [--to ADDR ...]\n"
     "                      [--cc ADDR ...] [--bcc ADDR ...] [--subject S]\n"
     "                      [--text TEXT] [--html HTML] [--attach FILE ...] [--tag T ...]\n"
     "                      [--api URL]\n"
     "\n"
     "POST /v1/messages on a running server (default --api http://127.0.0.1:8025).\n"
     "The API key is read from the environment variable VAR, never from the command\n"
     "line. Prints the message id on success (exit 0); the API's error otherwise (exit 1).\n"},
    {"queue", cmd_queue, "inspect and manage the spool",
     "usage: posthaste queue list [--state STATE] [--limit N] [--json] [-c CONFIG]\n"
     "       posthaste queue show ID [--raw] [--json] [-c CONFIG]\n"
     "       posthaste queue retry ID|--all [-c CONFIG]\n"
     "       posthaste queue delete ID [-c CONFIG]\n"
     "       posthaste queue flush [-c CONFIG]\n"
     "       posthaste queue stats [--json] [-c CONFIG]\n"
     "       posthaste queue check [-c CONFIG]\n"
     "\n"
     "Works on the spool of a running server safely (SQLite locking).\n"
     "States: queued sending deferred delivered bounced expired suppressed cancelled.\n"
     "flush makes every deferred recipient due now (same as retry --all).\n"},
    {"dkim", cmd_dkim, "generate DKIM keys and print their DNS records",
     "usage: posthaste dkim keygen --domain D --selector S [--alg rsa|ed25519] [--bits N]\n"
     "                             [--out FILE] [-c CONFIG]\n"
     "       posthaste dkim show --domain D [-c CONFIG]\n"
     "\n"
     "keygen writes a new private key (mode 0600, never over an existing file) to\n"
     "FILE, default spool_dir/dkim/S._domainkey.D.pem, and prints the DNS TXT record\n"
     "to publish. RSA keys have 2048 bits unless --bits (2048..8192) says more;\n"
     "ed25519 is RFC 8463. show prints the records of D's configured keys ([sender D])\n"
     "and of the keys under spool_dir/dkim again.\n"},
    {"doctor", cmd_doctor, "check the configuration and DNS before going live",
     "usage: posthaste doctor [-c CONFIG] [--json]\n"
     "\n"
     "Checks TLS certificate and key, key file modes, inline secrets, the spool,\n"
     "listeners; and for every [sender] domain its SPF (authorises this server),\n"
     "DKIM (published key matches), DMARC records, and the hostname's forward-\n"
     "confirmed reverse DNS. Prints one line per check: OK (\u2713), FAIL (\u2717)\n"
     "with the fix, or UNKNOWN (?) when DNS cannot be reached. Resolvers:\n"
     "[delivery] dns_servers. Exit status 0 only when every check passes.\n"},
    {"sendmail", cmd_sendmail, "sendmail(8)-compatible submission from scripts",
     "usage: posthaste sendmail [-t] [-i] [-f SENDER] [-F NAME] [-C CONFIG] [RECIPIENT ...]\n"
     "\n"
     "Reads a message on standard input and submits it to the local server, so\n"
     "cron, PHP mail(), git send-email and scripts work unchanged.\n"
     "  -t         also send to the addresses in To:, Cc: and Bcc: (Bcc is removed)\n"
     "  -i, -oi    a line with a single '.' does not end the message\n"
     "  -f SENDER  envelope sender (default: $USER@hostname); -F NAME its display name\n"
     "  -C CONFIG  configuration file (also -c)\n"
     "The message goes to the API (POST /v1/messages/raw) with the key in [sendmail]\n"
     "key_file or $POSTHASTE_KEY. Without a key, or when the server is down, it is\n"
     "written to spool_dir/maildrop, which `serve` picks up.\n"
     "Exit: 0 accepted or dropped for pickup; 64 usage; 65 bad message; 73 cannot\n"
     "write the maildrop; 75 server down (kept in the maildrop); 77 key refused.\n"},
    {"suppress", cmd_suppress, "manage the suppression list",
     "usage: posthaste suppress add EMAIL [--scope DOMAIN] [--reason R] [-c CONFIG]\n"
     "       posthaste suppress remove EMAIL [--scope DOMAIN] [-c CONFIG]\n"
     "       posthaste suppress list [--json] [--limit N] [-c CONFIG]\n"
     "\n"
     "A suppressed address is stored as 'suppressed' and never contacted. Without\n"
     "--scope the entry applies to mail from every sender domain; with it, only to\n"
     "mail from that domain (one-click unsubscribes are scoped so).\n"
     "Reasons: hard_bounce, complaint, unsubscribe, manual (default).\n"},
    {"version", cmd_version, "print the version", "usage: posthaste version\n"},
    {"help", cmd_help, "help on a command, or on configuration",
     "usage: posthaste help [COMMAND]\n"
     "       posthaste help config [--markdown]\n"},
};
#define NCOMMANDS (sizeof commands / sizeof commands[0])

const cli_command *cli_find(const char *name)
{
    for (size_t i = 0; i < NCOMMANDS; i++)
        if (strcmp(commands[i].name, name) == 0)
            return &commands[i];
    return NULL;
}

void cli_print_usage(FILE *out)
{
    fputs("usage: posthaste COMMAND [ARGS]\n\ncommands:\n", out);
    for (size_t i = 0; i < NCOMMANDS; i++)
        fprintf(out, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fputs("\nRun 'posthaste help COMMAND' or 'posthaste COMMAND --help' for details.\n", out);
}
