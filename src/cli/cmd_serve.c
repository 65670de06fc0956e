/* cmd_serve — `posthaste serve`: wire the components into the server. */
#include "cli/cli.h"

#include "core/server.h"
#include "ingress/maildrop.h"
#include "outcome/alerts.h"
#include "outcome/outcome.h"
#include "outcome/webhooks.h"
#include "delivery/delivery.h"
#include "ingress/http_api.h"
#include "ingress/smtp_server.h"
#include "submit/submit.h"

#include <getopt.h>
#include <string.h>

/* Every subsystem that runs inside `serve`, in start order. */
static const server_component *const components[] = {
    &outcome_component, /* first: owns srv->metrics */
    &submit_component,
    &smtps_component,
    &api_component,
    &delivery_component,
    &maildrop_component,
    &webhooks_component,
    &alerts_component,
};

int cmd_serve(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, 0, 'c'}, {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    const char *conf = NULL;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        if (c == 'c')
            conf = optarg;
        else if (c == 'h')
            return cli_usage("serve", 0);
        else
            return cli_usage("serve", 1);
    }
    if (optind < argc) {
        cli_error("serve: unexpected argument '%s'", argv[optind]);
        return EXIT_USAGE;
    }
    config *cfg = cli_load_config(conf);
    if (!cfg)
        return EXIT_RUNTIME;
    return server_run(cfg, components, sizeof components / sizeof components[0]) ? EXIT_RUNTIME
                                                                                  : EXIT_OK;
}
