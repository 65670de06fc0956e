/* cmd_misc — `version` and `help`. */
#include "cli/cli.h"

#include "core/version.h"

#include <sqlite3.h>
#include <string.h>
#include <event2/event.h>
#include <openssl/opensslv.h>

int cmd_version(int argc, char **argv)
{
    if (argc > 1 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0))
        return cli_usage("version", 0);
    if (argc > 1)
        return cli_usage("version", 1);
    printf("posthaste %s (sqlite %s, libevent %s, %s)\n", POSTHASTE_VERSION, sqlite3_libversion(),
           event_get_version(), OPENSSL_VERSION_TEXT);
    return EXIT_OK;
}

int cmd_help(int argc, char **argv)
{
    if (argc < 2) {
        cli_print_usage(stdout);
        return EXIT_OK;
    }
    if (strcmp(argv[1], "config") == 0) {
        int md = argc > 2 && strcmp(argv[2], "--markdown") == 0;
        if (!md)
            puts("Configuration keys (INI file; see README.md). Sizes take K/M/G, durations ms/s/m/h/d.");
        cfg_print_reference(stdout, md);
        return EXIT_OK;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)
        return cli_usage("help", 0);
    if (!cli_find(argv[1])) {
        cli_error("no command '%s'", argv[1]);
        cli_print_usage(stderr);
        return EXIT_USAGE;
    }
    return cli_usage(argv[1], 0);
}
