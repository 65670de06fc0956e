/*
 * cli — the `posthaste` subcommands and what they share.
 *
 * Every command is `int cmd_X(int argc, char **argv)` returning an exit
 * status: 0 ok, 1 runtime error, 2 usage error. Errors go to stderr and
 * name what was wrong. Each command answers --help with its usage.
 */
#ifndef PH_CLI_CLI_H
#define PH_CLI_CLI_H

#include "core/config.h"
#include "spool/spool.h"

#include <jansson.h>
#include <stdio.h>

enum { EXIT_OK = 0, EXIT_RUNTIME = 1, EXIT_USAGE = 2 };

typedef struct cli_command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
    const char *usage; /* full help text */
} cli_command;

/* The command table (main.c). */
const cli_command *cli_find(const char *name);
void cli_print_usage(FILE *out);

/* Load -c PATH, or $POSTHASTE_CONFIG, or ./posthaste.conf if present, or defaults. */
config *cli_load_config(const char *path);
/* Open the configured spool (creating spool_dir); prints the error and returns NULL. */
spool *cli_open_spool(const config *cfg);
/* Load the config (as cli_load_config) and open its spool; NULL after
   printing the error. */
spool *cli_spool_for(const char *conf_path);
/* Options for a spool from the config. */
void cli_spool_opts(const config *cfg, spool_opts *o, char **path_out);
/* The SUB of "posthaste CMD SUB …", or NULL when it is missing or --help
   (usage printed, *status set to the exit code). expected lists the
   subcommands for the error message. */
const char *cli_subcommand(int argc, char **argv, const char *cmd, const char *expected, int *status);
/* Print a command's usage and return EXIT_USAGE (or EXIT_OK for --help). */
int cli_usage(const char *cmd, int as_error);
/* The end of a listing command: n rows were listed (n < 0: failed with
   e). Prints the error, or arr (when not NULL: --json) as indented JSON;
   frees arr; returns the exit status. */
int cli_finish_list(int n, const err *e, json_t *arr);
/* "error: …" on stderr. */
void cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

int cmd_serve(int argc, char **argv);
int cmd_keys(int argc, char **argv);
int cmd_send(int argc, char **argv);
int cmd_queue(int argc, char **argv);
int cmd_dkim(int argc, char **argv);
int cmd_doctor(int argc, char **argv);
int cmd_sendmail(int argc, char **argv);
int cmd_suppress(int argc, char **argv);
int cmd_version(int argc, char **argv);
int cmd_help(int argc, char **argv);

#endif
