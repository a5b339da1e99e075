/* echo_agent - the smallest useful MAP agent.
 *
 * Connects to a broker as an agent, registers itself (default id "echo") and
 * answers every map/message with the same payload, sent back to the sender as a
 * result (meta.isResult:true, meta.correlationId copied from the request or set
 * to its message id, meta.mail copied so a reply inside a conversation is
 * recorded there too). A stop request from the broker (map/agents/stop, which
 * arrives as a system message) ends it. With --once it exits after the first
 * echo (exit 0), or with exit 1 if none happened within --timeout seconds; CTest
 * runs it that way against a real broker.
 *
 *   echo_agent [--url ws://127.0.0.1:7420] [--token KEY] [--id echo] [--once] [--timeout 30]
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mapclient.h"

static volatile sig_atomic_t stop_flag;
static void on_signal(int sig) { (void)sig; stop_flag = 1; }

static int echoes;

static void on_message(mc_client *c, json_t *msg, void *arg)
{
    (void)arg;
    const char *from = json_string_value(json_object_get(msg, "from"));
    json_t *payload = json_object_get(msg, "payload");
    json_t *meta = json_object_get(msg, "meta");
    if (from && !strcmp(from, "system")) {
        const char *type = json_string_value(json_object_get(payload, "type"));
        if (type && !strcmp(type, "map/agents/stop")) {
            printf("echo_agent: stop requested\n");
            stop_flag = 1;
        }
        return;
    }
    if (json_is_true(json_object_get(meta, "isResult")))
        return; /* never answer answers */
    json_t *extra = NULL;
    if (json_object_get(meta, "mail"))
        extra = json_pack("{s:O}", "mail", json_object_get(meta, "mail"));
    mp_err e;
    int rc = mc_reply(c, msg, payload ? json_incref(payload) : json_null(), extra, 5000, NULL, &e);
    char *txt = json_dumps(payload ? payload : json_null(), JSON_COMPACT | JSON_ENCODE_ANY);
    if (rc)
        fprintf(stderr, "echo_agent: reply to %s failed: %s (%d)\n", from ? from : "?", e.message, rc);
    else {
        printf("echo_agent: echoed %s to %s\n", txt ? txt : "?", from ? from : "?");
        echoes++;
    }
    free(txt);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    mc_options o;
    memset(&o, 0, sizeof o);
    o.participant_type = MC_PT_AGENT;
    o.agent_id = "echo";
    o.name = "echo";
    o.agent_role = "echo";
    int once = 0, timeout_s = 30;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--url") && i + 1 < argc)
            o.url = argv[++i];
        else if (!strcmp(argv[i], "--token") && i + 1 < argc)
            o.auth_token = argv[++i];
        else if (!strcmp(argv[i], "--id") && i + 1 < argc)
            o.agent_id = o.name = argv[++i];
        else if (!strcmp(argv[i], "--timeout") && i + 1 < argc)
            timeout_s = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--once"))
            once = 1;
        else {
            fprintf(stderr, "usage: echo_agent [--url URL] [--token KEY] [--id ID] [--once] [--timeout SECONDS]\n");
            return 2;
        }
    }
    o.on_message = on_message;
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    mp_err e;
    mc_client *c = mc_client_new(&o, &e);
    if (!c) {
        fprintf(stderr, "echo_agent: %s\n", e.message);
        return 2;
    }
    if (mc_connect(c, 5000, &e)) {
        fprintf(stderr, "echo_agent: %s\n", e.message);
        mc_client_free(c);
        return 3;
    }
    printf("echo_agent: registered as %s\n", mc_agent_id(c));
    fflush(stdout);
    time_t deadline = time(NULL) + timeout_s;
    int rc = 0;
    while (!stop_flag && !(once && echoes > 0)) {
        if (mc_service(c, 200) == MC_ERR_CLOSED) {
            rc = 3;
            break;
        }
        if (once && time(NULL) > deadline) {
            fprintf(stderr, "echo_agent: no message within %d s\n", timeout_s);
            rc = 1;
            break;
        }
    }
    mc_close(c, 2000);
    mc_client_free(c);
    return rc;
}
