#include "cli/cli.h"

#include "core/mem.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

void cli_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("posthaste: error: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

int cli_finish_list(int n, const err *e, json_t *arr)
{
    if (n < 0) {
        cli_error("%s", e->msg);
        json_decref(arr);
        return EXIT_RUNTIME;
    }
    if (arr) {
        json_dumpf(arr, stdout, JSON_INDENT(2));
        putchar('\n');
        json_decref(arr);
    }
    return EXIT_OK;
}

config *cli_load_config(const char *path)
{
    if (!path)
        path = getenv("POSTHASTE_CONFIG");
    if (!path && access("posthaste.conf", R_OK) == 0)
        path = "posthaste.conf";
    if (!path)
        return cfg_defaults();
    err e;
    config *c = cfg_load(path, &e);
    if (!c)
        cli_error("%s", e.msg);
    return c;
}

void cli_spool_opts(const config *cfg, spool_opts *o, char **path_out)
{
    *path_out = cfg_spool_path(cfg, "spool.db");
    memset(o, 0, sizeof *o);
    o->path = *path_out;
    o->synchronous_full = strcmp(cfg->spool_synchronous, "full") == 0;
    o->max_size = cfg->spool_max_size;
    o->commit_batch = (int)cfg->spool_commit_batch;
    o->busy_timeout_ms = (int)cfg->spool_busy_timeout;
}

spool *cli_open_spool(const config *cfg)
{
    if (mkdir(cfg->spool_dir, 0700) < 0 && errno != EEXIST) {
        cli_error("cannot create spool_dir %s: %s", cfg->spool_dir, strerror(errno));
        return NULL;
    }
    spool_opts o;
    char *path;
    cli_spool_opts(cfg, &o, &path);
    err e;
    spool *s = spool_open(&o, &e);
    if (!s)
        cli_error("%s", e.msg);
    free(path);
    return s;
}

spool *cli_spool_for(const char *conf_path)
{
    config *cfg = cli_load_config(conf_path);
    if (!cfg)
        return NULL;
    spool *s = cli_open_spool(cfg);
    cfg_free(cfg);
    return s;
}

const char *cli_subcommand(int argc, char **argv, const char *cmd, const char *expected, int *status)
{
    if (argc < 2) {
        cli_error("%s: missing subcommand (%s)", cmd, expected);
        *status = cli_usage(cmd, 1);
        return NULL;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        *status = cli_usage(cmd, 0);
        return NULL;
    }
    return argv[1];
}

int cli_usage(const char *cmd, int as_error)
{
    const cli_command *c = cli_find(cmd);
    FILE *out = as_error ? stderr : stdout;
    if (c)
        fputs(c->usage, out);
    return as_error ? EXIT_USAGE : EXIT_OK;
}
