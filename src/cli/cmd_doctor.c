/* cmd_doctor — `posthaste doctor`: the pre-flight checklist. */
#include "cli/cli.h"

int cmd_doctor(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    return EXIT_RUNTIME;
}
