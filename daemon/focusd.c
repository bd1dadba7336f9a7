/* focusd: the daemon's entry point. It reads the command line and the configuration, then
 * hands over to the reactor, which runs until SIGTERM or SIGINT. Exit status: 0 after a clean
 * stop, 1 when serving failed (a socket, the job store, no model loadable), 2 for a bad
 * command line or configuration. See focusd(8) and focusd.conf(5). */
#include "common/err.h"
#include "daemon/config.h"
#include "daemon/daemon.h"
#include "daemon/log.h"

int main(int argc, char **argv)
{
    struct config_overrides ov;
    int rc = config_parse_args(argc, argv, &ov);
    if (rc) {
        if (rc < 0) log_err("%s", err_msg());
        config_overrides_free(&ov);
        return rc < 0 ? 2 : 0;
    }
    struct config *cfg;
    if (config_load(&ov, &cfg) < 0) {
        log_err("%s", err_msg());
        config_overrides_free(&ov);
        return 2;
    }
    log_info("focusd %s starting: %zu model(s), state in %s", FOCUS_VERSION, cfg->n_models,
             cfg->state_dir);
    rc = reactor_run(cfg, &ov);
    /* A reload may have replaced the configuration the reactor holds. */
    config_free(D.cfg);
    config_overrides_free(&ov);
    return rc ? 1 : 0;
}
