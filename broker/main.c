/* mapbroker: a MAP (Multi-Agent Protocol) broker. See README.md and --help. */
#include <stdio.h>
#include <string.h>

#include "auth.h"
#include "mb.h"
#include "net.h"
#include "observe.h"

int main(int argc, char **argv)
{
    mb_config cfg;
    int rc = mb_config_load(&cfg, argc, argv);
    if (rc) {
        mb_config_free(&cfg);
        return rc > 0 ? 0 : 2;
    }
    mb_log_level = mb_log_parse_level(cfg.log_level);
    static mb_broker b;
    char err[512] = "";
    int status = 1;
    mb_info("main", "mapbroker %s starting (store %s, system id %s)", MB_VERSION, cfg.store, cfg.system_id);
    if (mb_broker_init(&b, &cfg, err, sizeof err)) {
        fprintf(stderr, "mapbroker: %s\n", err[0] ? err : "cannot start");
        goto out;
    }
    if (mb_auth_init(&b, err, sizeof err)) {
        fprintf(stderr, "mapbroker: %s\n", err[0] ? err : "cannot load credentials");
        goto out;
    }
    if (mb_net_start(&b, err, sizeof err)) {
        fprintf(stderr, "mapbroker: %s\n", err);
        goto out;
    }
    if (mb_federation_start(&b, err, sizeof err)) {
        fprintf(stderr, "mapbroker: %s\n", err);
        goto out;
    }
    mb_net_run(&b);
    mb_info("main", "shutting down");
    status = 0;
out:
    b.stopping = 1;
    mb_net_stop(&b);
    mb_auth_free(&b);
    mb_federation_free();
    mb_observe_free();
    mb_broker_free(&b);
    mb_config_free(&cfg);
    return status;
}
