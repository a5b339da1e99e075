/* test_reconnect - libmapclient reconnect + catch-up across broker crashes.
 *
 *   test_reconnect BROKER DBFILE [MAPCTL]
 *
 * Starts BROKER on a free port with a SQLite store at DBFILE, connects an agent
 * client A (reconnect on) subscribed to scope_created events, and a writer B.
 * Scenario: B creates scopes 1-3 (live), the broker is killed with SIGKILL and
 * restarted on the same port and DB, a new writer creates 4-6 while A is still
 * disconnected (A is single-threaded and not serviced meanwhile, so it cannot
 * reconnect before they exist), then A is serviced: it must reconnect,
 * re-register its agent id, re-subscribe and replay 4-6, then get 7-8 live; a
 * second crash/restart adds 9. Every scope must arrive exactly once, in order,
 * 4-6 and 9 marked as replayed.
 * With MAPCTL, also checks `mapctl --json tail CONV --count 6` across a crash:
 * turns 1-2 before, 3-4 while the broker is back, 5-6 later: exactly six lines,
 * in order, no duplicates.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "mapclient.h"
#include "mp_ulid.h"

static int failures;
#define CHECK(cond, ...)                                                                                              \
    do {                                                                                                              \
        if (cond) {                                                                                                   \
            printf("ok: ");                                                                                           \
        } else {                                                                                                      \
            printf("FAIL: ");                                                                                         \
            failures++;                                                                                               \
        }                                                                                                             \
        printf(__VA_ARGS__);                                                                                          \
        printf("\n");                                                                                                 \
        fflush(stdout);                                                                                               \
    } while (0)

static const char *broker_path, *db_path;
static int port;
static pid_t broker_pid;
static char url[64];

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) || getsockname(fd, (struct sockaddr *)&a, &len))
        return -1;
    close(fd);
    return ntohs(a.sin_port);
}

static int port_open(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int ok = fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
    if (fd >= 0)
        close(fd);
    return ok;
}

static int start_broker(void)
{
    char portarg[16], store[1024], logpath[1100];
    snprintf(portarg, sizeof portarg, "%d", port);
    snprintf(store, sizeof store, "sqlite:%s", db_path);
    snprintf(logpath, sizeof logpath, "%s.log", db_path);
    broker_pid = fork();
    if (broker_pid == 0) {
        int fd = open(logpath, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execl(broker_path, broker_path, "--store", store, "--port", portarg, "--log-level", "info", (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 200; i++) {
        if (port_open())
            return 0;
        int st;
        if (waitpid(broker_pid, &st, WNOHANG) == broker_pid)
            return -1;
        usleep(25000);
    }
    return -1;
}

static void kill_broker(int sig)
{
    if (broker_pid <= 0)
        return;
    kill(broker_pid, sig);
    int st;
    waitpid(broker_pid, &st, 0);
    broker_pid = 0;
}

/* ---- subscriber state ---- */

#define MAXEV 64
static struct {
    char scope[64];
    char eid[40];
    int replayed;
} got[MAXEV];
static int ngot;

static void on_scope_event(mc_client *c, mc_sub *sub, const mc_event *ev, void *arg)
{
    const char *sid = json_string_value(json_object_get(json_object_get(ev->event, "data"), "scopeId"));
    if (!sid || strncmp(sid, "recon-s", 7) || ngot >= MAXEV)
        return;
    snprintf(got[ngot].scope, sizeof got[ngot].scope, "%s", sid);
    snprintf(got[ngot].eid, sizeof got[ngot].eid, "%s", ev->event_id);
    got[ngot].replayed = ev->replayed;
    ngot++;
}

static int pump_until(mc_client *c, int *counter, int want, int ms)
{
    int64_t end = mp_mono_us() + (int64_t)ms * 1000;
    while (*counter < want && mp_mono_us() < end)
        mc_service(c, 50);
    return *counter >= want;
}

static mc_client *writer(void)
{
    mc_options o;
    memset(&o, 0, sizeof o);
    o.url = url;
    o.participant_type = MC_PT_AGENT;
    o.agent_id = "recon-writer";
    o.reconnect = MC_RECONNECT_OFF;
    mp_err e;
    mc_client *w = mc_client_new(&o, &e);
    if (!w || mc_connect(w, 5000, &e)) {
        printf("writer connect failed: %s\n", e.message);
        mc_client_free(w);
        return NULL;
    }
    return w;
}

static void create_scope(mc_client *w, int n)
{
    char id[32];
    snprintf(id, sizeof id, "recon-s%d", n);
    mp_err e;
    int rc = mc_call(w, "map/scopes/create", json_pack("{s:s, s:s}", "scopeId", id, "name", id), 5000, NULL, &e);
    CHECK(rc == 0, "create scope %s (%s)", id, rc ? e.message : "ok");
}

static void close_writer(mc_client *w)
{
    mc_close(w, 1000);
    mc_client_free(w);
}

static void scenario_subscription(void)
{
    mc_options o;
    memset(&o, 0, sizeof o);
    o.url = url;
    o.participant_type = MC_PT_AGENT;
    o.agent_id = "recon-agent";
    o.agent_role = "observer";
    o.backoff_initial_ms = 200;
    o.backoff_max_ms = 1000;
    mp_err e;
    mc_client *a = mc_client_new(&o, &e);
    CHECK(a && mc_connect(a, 5000, &e) == 0, "A connects");
    if (!a)
        return;
    int rc = mc_subscribe(a, json_pack("{s:[s]}", "eventTypes", "scope_created"), on_scope_event, NULL, 5000, NULL, &e);
    CHECK(rc == 0, "A subscribes");

    mc_client *w = writer();
    if (!w)
        return;
    for (int i = 1; i <= 3; i++)
        create_scope(w, i);
    CHECK(pump_until(a, &ngot, 3, 10000), "A got 3 live events (got %d)", ngot);
    close_writer(w);

    kill_broker(SIGKILL);
    for (int i = 0; i < 10; i++) /* let A notice the drop */
        mc_service(a, 20);
    CHECK(mc_get_state(a) != MC_STATE_READY, "A noticed the crash");
    CHECK(start_broker() == 0, "broker restarted on the same port and DB");
    w = writer();
    if (!w)
        return;
    for (int i = 4; i <= 6; i++)
        create_scope(w, i);
    CHECK(pump_until(a, &ngot, 6, 15000), "A caught up to 6 events after the restart (got %d)", ngot);
    int ready_wait = 0;
    while (mc_get_state(a) != MC_STATE_READY && ready_wait++ < 200)
        mc_service(a, 20);
    CHECK(mc_connect_count(a) == 2, "A reconnected once (connects=%u)", mc_connect_count(a));
    CHECK(mc_agent_id(a) && !strcmp(mc_agent_id(a), "recon-agent"), "A re-registered agent id %s",
          mc_agent_id(a) ? mc_agent_id(a) : "(none)");
    json_t *res = NULL;
    rc = mc_call(a, "map/agents/get", json_pack("{s:s}", "agentId", "recon-agent"), 5000, &res, &e);
    const char *owner = json_string_value(json_object_get(json_object_get(res, "agent"), "ownerId"));
    CHECK(rc == 0 && owner && mc_participant_id(a) && !strcmp(owner, mc_participant_id(a)),
          "recon-agent is owned by A's new session (owner %s)", owner ? owner : "?");
    json_decref(res);
    for (int i = 7; i <= 8; i++)
        create_scope(w, i);
    CHECK(pump_until(a, &ngot, 8, 10000), "A got 8 events (got %d)", ngot);
    close_writer(w);

    kill_broker(SIGKILL);
    for (int i = 0; i < 10; i++)
        mc_service(a, 20);
    CHECK(start_broker() == 0, "second restart");
    w = writer();
    if (w) {
        create_scope(w, 9);
        close_writer(w);
    }
    CHECK(pump_until(a, &ngot, 9, 15000), "A got 9 events (got %d)", ngot);
    /* a little longer: nothing more may arrive */
    for (int i = 0; i < 20; i++)
        mc_service(a, 25);

    CHECK(ngot == 9, "exactly 9 events delivered (got %d)", ngot);
    for (int i = 0; i < ngot; i++) {
        char want[32];
        snprintf(want, sizeof want, "recon-s%d", i + 1);
        int should_replay = (i + 1 >= 4 && i + 1 <= 6) || i + 1 == 9;
        CHECK(!strcmp(got[i].scope, want) && (i == 0 || strcmp(got[i - 1].eid, got[i].eid) < 0),
              "event %d is %s (%s, eventId %s)", i + 1, got[i].scope, got[i].replayed ? "replayed" : "live", got[i].eid);
        CHECK(got[i].replayed == should_replay, "event %d delivered %s", i + 1, should_replay ? "by catch-up" : "live");
    }
    mc_close(a, 1000);
    mc_client_free(a);
}

/* ---- mapctl tail across a crash ---- */

static int count_lines(const char *path, char lines[][32], int max)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    char buf[8192];
    int n = 0;
    while (fgets(buf, sizeof buf, f) && n < max) {
        const char *p = strstr(buf, "\"text\":\"t");
        if (!p)
            continue;
        p += 8;
        int k = 0;
        while (p[k] && p[k] != '"' && k < 31)
            k++;
        memcpy(lines[n], p, (size_t)k);
        lines[n][k] = '\0';
        n++;
    }
    fclose(f);
    return n;
}

static void post_turn(mc_client *w, const char *conv, int n)
{
    char text[16];
    snprintf(text, sizeof text, "t%d", n);
    mp_err e;
    int rc = mc_mail_turn(
        w, json_pack("{s:s, s:s, s:{s:s}}", "conversationId", conv, "contentType", "text", "content", "text", text),
        5000, NULL, &e);
    CHECK(rc == 0, "turn %s recorded (%s)", text, rc ? e.message : "ok");
}

static void scenario_tail(const char *mapctl)
{
    mc_client *w = writer();
    if (!w)
        return;
    json_t *res = NULL;
    mp_err e;
    int rc = mc_mail_create(w, json_pack("{s:s}", "subject", "tail test"), 5000, &res, &e);
    CHECK(rc == 0, "conversation created (%s)", rc ? e.message : "ok");
    if (rc) {
        close_writer(w);
        return;
    }
    char conv[128];
    snprintf(conv, sizeof conv, "%s", json_string_value(json_object_get(json_object_get(res, "conversation"), "id")));
    json_decref(res);
    post_turn(w, conv, 1);
    post_turn(w, conv, 2);
    close_writer(w);

    char out[1100];
    snprintf(out, sizeof out, "%s.tail", db_path);
    unlink(out);
    pid_t tp = fork();
    if (tp == 0) {
        int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(fd, 1);
        execl(mapctl, mapctl, "--url", url, "--json", "tail", conv, "--count", "6", (char *)NULL);
        _exit(127);
    }
    char lines[16][32];
    int n = 0;
    for (int i = 0; i < 200 && (n = count_lines(out, lines, 16)) < 2; i++)
        usleep(50000);
    CHECK(n == 2, "tail printed the history (2 turns, got %d)", n);
    kill_broker(SIGKILL);
    CHECK(start_broker() == 0, "broker restarted under tail");
    w = writer();
    if (w) {
        post_turn(w, conv, 3);
        post_turn(w, conv, 4);
    }
    for (int i = 0; i < 200 && (n = count_lines(out, lines, 16)) < 4; i++)
        usleep(50000);
    if (w) {
        post_turn(w, conv, 5);
        post_turn(w, conv, 6);
        close_writer(w);
    }
    int st = -1;
    for (int i = 0; i < 300; i++) {
        if (waitpid(tp, &st, WNOHANG) == tp)
            break;
        st = -1;
        usleep(50000);
    }
    if (st == -1) {
        kill(tp, SIGKILL);
        waitpid(tp, &st, 0);
        CHECK(0, "mapctl tail finished by itself");
    } else {
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "mapctl tail exited 0 (status %d)", st);
    }
    usleep(200000);
    n = count_lines(out, lines, 16);
    CHECK(n == 6, "tail printed exactly 6 turns (got %d)", n);
    for (int i = 0; i < n && i < 6; i++) {
        char want[8];
        snprintf(want, sizeof want, "t%d", i + 1);
        CHECK(!strcmp(lines[i], want), "tail line %d is %s (got %s)", i + 1, want, lines[i]);
    }
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: test_reconnect BROKER DBFILE [MAPCTL]\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    broker_path = argv[1];
    db_path = argv[2];
    char side[1100];
    unlink(db_path);
    snprintf(side, sizeof side, "%s-wal", db_path);
    unlink(side);
    snprintf(side, sizeof side, "%s-shm", db_path);
    unlink(side);
    port = free_port();
    snprintf(url, sizeof url, "ws://127.0.0.1:%d", port);
    if (port <= 0 || start_broker()) {
        printf("FAIL: broker did not start\n");
        return 1;
    }
    scenario_subscription();
    if (argc > 3)
        scenario_tail(argv[3]);
    kill_broker(SIGTERM);
    printf(failures ? "%d failure(s)\n" : "PASS\n", failures);
    return failures ? 1 : 0;
}
