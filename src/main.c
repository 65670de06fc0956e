/*
 * posthaste — command dispatch.
 *
 *   posthaste serve|keys|queue|version|help [args]
 *
 * Exit status: 0 ok, 1 runtime error, 2 usage error.
 */
#include "cli/cli.h"

#include <stdio.h>
#include <string.h>

/* The command table lives in src/cli/commands.c (so tests can link it). */

int main(int argc, char **argv)
{
    if (argc < 2) {
        cli_print_usage(stderr);
        return EXIT_USAGE;
    }
    const char *name = argv[1];
    if (strcmp(name, "--help") == 0 || strcmp(name, "-h") == 0) {
        cli_print_usage(stdout);
        return EXIT_OK;
    }
    if (strcmp(name, "--version") == 0)
        name = "version";
    const cli_command *c = cli_find(name);
    if (!c) {
        cli_error("unknown command '%s'", name);
        cli_print_usage(stderr);
        return EXIT_USAGE;
    }
    return c->run(argc - 1, argv + 1);
}
