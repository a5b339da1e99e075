/* mapctl - command-line client for a MAP broker (built on libmapclient).
 *
 *   mapctl [--url URL] [--token TOKEN] [--json] COMMAND [ARGS]
 *
 * Exit codes: 0 ok, 1 MAP / JSON-RPC error (message printed), 2 usage, 3 cannot connect.
 */
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "mapclient.h"
#include "mp_json.h"

#define EX_OK 0
#define EX_MAP 1
#define EX_USAGE 2
#define EX_CONNECT 3

#define TIMEOUT_MS 10000

static struct {
    const char *url;
    const char *token;
    int json;
    int color;
} g = {.url = "ws://127.0.0.1:7420"};

static volatile sig_atomic_t g_stop;
static void on_signal(int sig) { (void)sig; g_stop = 1; }

/* ---- output helpers ---- */

static const char *C(const char *code) { return g.color ? code : ""; }
#define BOLD C("\033[1m")
#define DIM C("\033[2m")
#define RED C("\033[31m")
#define GREEN C("\033[32m")
#define YELLOW C("\033[33m")
#define CYAN C("\033[36m")
#define RESET C("\033[0m")

static void print_json(json_t *j)
{
    char *s = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_ENCODE_ANY);
    if (s) {
        puts(s);
        free(s);
    }
    fflush(stdout);
}

static void print_json_line(json_t *j)
{
    char *s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_ENCODE_ANY);
    if (s) {
        puts(s);
        free(s);
    }
    fflush(stdout);
}

static const char *str(json_t *o, const char *key, const char *dflt)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : dflt;
}

static void fmt_time(json_int_t ms, char *buf, size_t n)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    if (ms <= 0 || !localtime_r(&t, &tm)) {
        snprintf(buf, n, "-");
        return;
    }
    char tmp[16];
    if (!strftime(tmp, sizeof tmp, "%H:%M:%S", &tm))
        tmp[0] = '\0';
    snprintf(buf, n, "%.8s.%03d", tmp, (int)(ms % 1000));
}

static int map_error(const char *what, int rc, const mp_err *e)
{
    if (rc == MC_ERR_CONNECT || rc == MC_ERR_CLOSED) {
        fprintf(stderr, "%smapctl: %s: %s%s\n", RED, what, e->message[0] ? e->message : mc_strerror(rc), RESET);
        return EX_CONNECT;
    }
    fprintf(stderr, "%smapctl: %s failed: %s (%d)%s%s%s\n", RED, what, e->message[0] ? e->message : mc_strerror(rc),
            rc, e->field[0] ? " field " : "", e->field[0] ? e->field : "", RESET);
    return EX_MAP;
}

/* ---- usage ---- */

static const char *USAGE =
    "Usage: mapctl [--url URL] [--token TOKEN] [--json] COMMAND [ARGS]\n"
    "\n"
    "Talk to a MAP broker from the command line.\n"
    "\n"
    "Global options (before the command):\n"
    "  --url URL       broker URL, ws:// or wss:// [default: ws://127.0.0.1:7420, env MAPCTL_URL]\n"
    "  --token TOKEN   API key sent as auth {method:\"api-key\", token} [env MAPCTL_TOKEN]\n"
    "  --json          print raw JSON results instead of tables\n"
    "  --insecure      wss: do not verify the broker certificate (testing only)\n"
    "  -h, --help      show this help\n"
    "\n"
    "Commands:\n"
    "  agents                         list registered agents (map/agents/list)\n"
    "  conversations                  list mail conversations (mail/list)\n"
    "  turns ID                       print every turn of conversation ID (mail/turns/list)\n"
    "  tail ID                        print turns of ID, then follow new ones (like tail -f)\n"
    "  send --to AGENT --text TEXT [--wait S]  send {text} to an agent (map/send)\n"
    "  inject AGENT TEXT              inject {text} into an agent (map/inject)\n"
    "  stop AGENT [--reason R]        ask an agent to stop (map/agents/stop)\n"
    "  audit                          print the audit log (x-mapbroker/audit/list)\n"
    "  token create --conversation ID [--ttl 1h]  mint a scoped short-lived token\n"
    "\n"
    "Run 'mapctl COMMAND --help' for a command's options.\n"
    "Exit codes: 0 ok, 1 MAP/JSON-RPC error, 2 usage, 3 cannot connect.\n";

static const struct {
    const char *name;
    const char *help;
} CMD_HELP[] = {
    {"agents", "Usage: mapctl [global options] agents\n\nList registered agents (map/agents/list, all pages).\n"},
    {"conversations",
     "Usage: mapctl [global options] conversations\n\nList mail conversations (mail/list, all pages).\n"},
    {"turns", "Usage: mapctl [global options] turns CONVERSATION_ID\n\n"
              "Print every turn of a conversation, oldest first (mail/turns/list, all pages).\n"},
    {"tail", "Usage: mapctl [global options] tail CONVERSATION_ID [--count N]\n\n"
             "Print the turns of a conversation, then follow new turns as they are recorded.\n"
             "Survives broker restarts: the client reconnects and prints missed turns exactly once.\n"
             "  --count N   exit after N turns have been printed (history included)\n"},
    {"send", "Usage: mapctl [global options] send --to AGENT --text TEXT [--wait SECONDS]\n\n"
             "Send a message with payload {\"text\": TEXT} to an agent (map/send).\n"
             "  --wait S   also wait up to S seconds for the agent's reply (meta.isResult with our\n"
             "             correlationId) and print it; no reply in time is an error (exit 1)\n"},
    {"inject", "Usage: mapctl [global options] inject AGENT TEXT\n\n"
               "Inject content {\"text\": TEXT} into a running agent (map/inject).\n"},
    {"stop", "Usage: mapctl [global options] stop AGENT [--reason REASON]\n\n"
             "Ask an agent to stop (map/agents/stop).\n"},
    {"audit", "Usage: mapctl [global options] audit\n\n"
              "Print the broker's audit log, newest first (x-mapbroker/audit/list; operator only\n"
              "when the broker requires authentication).\n"},
    {"token", "Usage: mapctl [global options] token create --conversation ID [--conversation ID ...]\n"
              "                                        [--ttl 1h] [--agent PATTERN ...]\n\n"
              "Mint a short-lived token scoped to those conversations (and agent id patterns),\n"
              "e.g. for a task's callbacks. Signed by the broker; needs an operator principal.\n"
              "  --ttl D   lifetime: 1h (default), 30m, 45s, 2d or milliseconds\n"},
};

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "mapctl: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\nRun 'mapctl --help' for usage.\n");
    va_end(ap);
    return EX_USAGE;
}

static int wants_help(int argc, char **argv)
{
    for (int i = 0; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h"))
            return 1;
    return 0;
}

/* ---- connection ---- */

/* Messages that reach mapctl's own connection (replies to a send --wait). */
static json_t *g_inbox;

static void on_message(mc_client *c, json_t *msg, void *arg)
{
    (void)c;
    (void)arg;
    if (g_inbox)
        json_array_append(g_inbox, msg);
}

static void on_state(mc_client *c, mc_state st, const char *detail, void *arg)
{
    (void)c;
    int *verbose = arg;
    if (!*verbose)
        return;
    if (st == MC_STATE_RECONNECT_WAIT)
        fprintf(stderr, "%s-- connection lost (%s); reconnecting%s\n", YELLOW, detail ? detail : "?", RESET);
    else if (st == MC_STATE_READY)
        fprintf(stderr, "%s-- %s%s\n", YELLOW, detail ? detail : "connected", RESET);
}

static int g_state_verbose;

static int open_client(mc_client **out, mc_options *extra, int insecure)
{
    mc_options o;
    memset(&o, 0, sizeof o);
    if (extra)
        o = *extra;
    o.url = g.url;
    o.insecure = insecure;
    if (g.token) {
        o.auth_method = "api-key";
        o.auth_token = g.token;
    }
    o.name = "mapctl";
    o.on_state = on_state;
    o.on_message = on_message;
    o.state_arg = &g_state_verbose;
    mp_err e;
    mp_err_clear(&e);
    mc_client *c = mc_client_new(&o, &e);
    if (!c) {
        fprintf(stderr, "mapctl: %s\n", e.message);
        return e.code == MC_ERR_USAGE ? EX_USAGE : EX_CONNECT;
    }
    int rc = mc_connect(c, TIMEOUT_MS, &e);
    if (rc) {
        fprintf(stderr, "%smapctl: %s%s\n", RED, e.message[0] ? e.message : mc_strerror(rc), RESET);
        mc_client_free(c);
        if (rc == MC_ERR_CONNECT || rc == MC_ERR_TIMEOUT || rc == MC_ERR_CLOSED)
            return EX_CONNECT;
        return EX_MAP;
    }
    *out = c;
    return 0;
}

static void close_client(mc_client *c)
{
    mc_close(c, 2000);
    mc_client_free(c);
}

/* ---- commands ---- */

static int cmd_agents(mc_client *c, int argc, char **argv)
{
    if (argc > 0)
        return usage_error("agents takes no arguments");
    json_t *all = json_array();
    const char *cursor = NULL;
    json_t *res = NULL;
    mp_err e;
    for (;;) {
        json_t *p = json_object();
        if (cursor)
            json_object_set_new(p, "cursor", json_string(cursor));
        json_t *prev = res;
        int rc = mc_call(c, "map/agents/list", p, TIMEOUT_MS, &res, &e);
        json_decref(prev);
        if (rc) {
            json_decref(all);
            return map_error("map/agents/list", rc, &e);
        }
        json_array_extend(all, json_object_get(res, "agents"));
        cursor = json_string_value(json_object_get(res, "nextCursor"));
        if (!cursor || !json_array_size(json_object_get(res, "agents")))
            break;
    }
    json_decref(res);
    if (g.json) {
        json_t *o = json_pack("{s:o}", "agents", all);
        print_json(o);
        json_decref(o);
        return EX_OK;
    }
    printf("%s%-28s %-18s %-12s %-10s %-20s%s\n", BOLD, "ID", "NAME", "ROLE", "STATE", "PARENT", RESET);
    size_t i;
    json_t *a;
    json_array_foreach(all, i, a)
    {
        const char *st = str(a, "state", "-");
        const char *col = !strcmp(st, "stopped") || !strcmp(st, "failed") ? RED
                          : !strcmp(st, "stopping") || !strcmp(st, "suspended") || !strcmp(st, "orphaned") ? YELLOW
                                                                                                           : GREEN;
        printf("%-28s %-18s %-12s %s%-10s%s %-20s\n", str(a, "id", "-"), str(a, "name", "-"), str(a, "role", "-"), col,
               st, RESET, str(a, "parent", "-"));
    }
    printf("%s%zu agent(s)%s\n", DIM, json_array_size(all), RESET);
    json_decref(all);
    return EX_OK;
}

static int cmd_conversations(mc_client *c, int argc, char **argv)
{
    if (argc > 0)
        return usage_error("conversations takes no arguments");
    json_t *all = json_array();
    char cursor[512] = "";
    mp_err e;
    for (;;) {
        json_t *p = json_pack("{s:i}", "limit", 100);
        if (cursor[0])
            json_object_set_new(p, "cursor", json_string(cursor));
        json_t *res;
        int rc = mc_mail_list(c, p, TIMEOUT_MS, &res, &e);
        if (rc) {
            json_decref(all);
            return map_error("mail/list", rc, &e);
        }
        json_t *convs = json_object_get(res, "conversations");
        json_array_extend(all, convs);
        const char *nc = json_string_value(json_object_get(res, "nextCursor"));
        int more = json_is_true(json_object_get(res, "hasMore")) && nc && json_array_size(convs);
        if (more)
            snprintf(cursor, sizeof cursor, "%s", nc);
        json_decref(res);
        if (!more)
            break;
    }
    if (g.json) {
        json_t *o = json_pack("{s:o}", "conversations", all);
        print_json(o);
        json_decref(o);
        return EX_OK;
    }
    printf("%s%-32s %-12s %-10s %-5s %-32s %s%s\n", BOLD, "ID", "TYPE", "STATUS", "PART", "PARENT", "SUBJECT", RESET);
    size_t i;
    json_t *cv;
    json_array_foreach(all, i, cv)
    {
        const char *st = str(cv, "status", "-");
        printf("%-32s %-12s %s%-10s%s %-5lld %-32s %s\n", str(cv, "id", "-"), str(cv, "type", "-"),
               !strcmp(st, "active") ? GREEN : DIM, st, RESET,
               (long long)json_integer_value(json_object_get(cv, "participantCount")),
               str(cv, "parentConversationId", "-"), str(cv, "subject", ""));
    }
    printf("%s%zu conversation(s)%s\n", DIM, json_array_size(all), RESET);
    json_decref(all);
    return EX_OK;
}

static void print_turn(json_t *t)
{
    if (g.json) {
        print_json_line(t);
        return;
    }
    char ts[32];
    fmt_time(json_integer_value(json_object_get(t, "timestamp")), ts, sizeof ts);
    json_t *content = json_object_get(t, "content");
    const char *text = json_string_value(json_object_get(content, "text"));
    char *dump = NULL;
    if (!text) {
        dump = json_dumps(content, JSON_COMPACT | JSON_ENCODE_ANY);
        text = dump ? dump : "";
    }
    const char *thread = str(t, "threadId", NULL);
    printf("%s%s%s %s%s%s %s[%s]%s%s%s %s\n", DIM, ts, RESET, CYAN, str(t, "participant", "?"), RESET, DIM,
           str(t, "contentType", "?"), thread ? " " : "", thread ? thread : "", RESET, text);
    free(dump);
    fflush(stdout);
}

/* Page through mail/turns/list; calls fn for each turn. Returns 0 or an exit code. */
static int fetch_turns(mc_client *c, const char *conv, void (*fn)(json_t *, void *), void *arg)
{
    char cursor[512] = "";
    mp_err e;
    for (;;) {
        json_t *p = json_pack("{s:s, s:i}", "conversationId", conv, "limit", 100);
        if (cursor[0])
            json_object_set_new(p, "filter", json_pack("{s:s}", "afterTurnId", cursor));
        json_t *res;
        int rc = mc_mail_turns_list(c, p, TIMEOUT_MS, &res, &e);
        if (rc)
            return map_error("mail/turns/list", rc, &e);
        json_t *turns = json_object_get(res, "turns");
        size_t i;
        json_t *t;
        const char *last = NULL;
        json_array_foreach(turns, i, t)
        {
            fn(t, arg);
            last = str(t, "id", NULL);
        }
        const char *nc = json_string_value(json_object_get(res, "nextCursor"));
        if (!nc)
            nc = last;
        int more = json_is_true(json_object_get(res, "hasMore")) && nc && json_array_size(turns);
        if (more)
            snprintf(cursor, sizeof cursor, "%s", nc);
        json_decref(res);
        if (!more)
            return 0;
    }
}

static void turn_print_cb(json_t *t, void *arg)
{
    (*(size_t *)arg)++;
    print_turn(t);
}

static int cmd_turns(mc_client *c, int argc, char **argv)
{
    if (argc != 1)
        return usage_error("turns needs exactly one conversation id");
    size_t n = 0;
    int rc = fetch_turns(c, argv[0], turn_print_cb, &n);
    if (!rc && !g.json)
        printf("%s%zu turn(s)%s\n", DIM, n, RESET);
    return rc;
}

/* tail: the subscription is opened before the history is read, so nothing falls
 * between the two; turn ids grow with recording order (ULIDs), so a turn is
 * printed only if its id sorts after the last printed one. */
struct tail_state {
    char last[256];
    long long printed, limit;
};

static void tail_emit(struct tail_state *ts, json_t *turn)
{
    const char *id = str(turn, "id", NULL);
    if (!id || (ts->last[0] && strcmp(id, ts->last) <= 0))
        return;
    snprintf(ts->last, sizeof ts->last, "%s", id);
    print_turn(turn);
    ts->printed++;
}

static void tail_hist_cb(json_t *t, void *arg) { tail_emit(arg, t); }

static void tail_event_cb(mc_client *c, mc_sub *sub, const mc_event *ev, void *arg)
{
    (void)c;
    (void)sub;
    const char *type = str(ev->event, "type", "");
    if (strcmp(type, "mail.turn.added"))
        return;
    tail_emit(arg, json_object_get(json_object_get(ev->event, "data"), "turn"));
}

static int cmd_tail(mc_client *c, int argc, char **argv)
{
    const char *conv = NULL;
    struct tail_state ts;
    memset(&ts, 0, sizeof ts);
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--count") && i + 1 < argc) {
            char *end;
            ts.limit = strtoll(argv[++i], &end, 10);
            if (*end || ts.limit <= 0)
                return usage_error("--count needs a positive number");
        } else if (argv[i][0] == '-') {
            return usage_error("tail: unknown option %s", argv[i]);
        } else if (!conv) {
            conv = argv[i];
        } else {
            return usage_error("tail needs exactly one conversation id");
        }
    }
    if (!conv)
        return usage_error("tail needs a conversation id");
    mp_err e;
    json_t *filter = json_pack("{s:{s:s}}", "mail", "conversationId", conv);
    mc_sub *sub;
    int rc = mc_subscribe(c, filter, tail_event_cb, &ts, TIMEOUT_MS, &sub, &e);
    if (rc)
        return map_error("map/subscribe", rc, &e);
    rc = fetch_turns(c, conv, tail_hist_cb, &ts);
    if (rc)
        return rc;
    g_state_verbose = 1;
    while (!g_stop && !(ts.limit && ts.printed >= ts.limit)) {
        int n = mc_service(c, 500);
        if (n == MC_ERR_CLOSED) {
            fprintf(stderr, "%smapctl: connection closed%s\n", RED, RESET);
            return EX_CONNECT;
        }
    }
    return EX_OK;
}

static int cmd_send(mc_client *c, int argc, char **argv)
{
    const char *to = NULL, *text = NULL;
    double wait_s = 0;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--to") && i + 1 < argc)
            to = argv[++i];
        else if (!strcmp(argv[i], "--text") && i + 1 < argc)
            text = argv[++i];
        else if (!strcmp(argv[i], "--wait") && i + 1 < argc) {
            char *end;
            wait_s = strtod(argv[++i], &end);
            if (*end || wait_s <= 0)
                return usage_error("--wait needs a positive number of seconds");
        } else
            return usage_error("send: unexpected argument %s", argv[i]);
    }
    if (!to || !text)
        return usage_error("send needs --to AGENT and --text TEXT");
    json_t *res;
    mp_err e;
    char corr[64];
    snprintf(corr, sizeof corr, "mapctl-%ld-%ld", (long)getpid(), (long)time(NULL));
    json_t *meta = wait_s > 0 ? json_pack("{s:s, s:b}", "correlationId", corr, "expectsResponse", 1) : NULL;
    int rc = mc_send_to_agent(c, to, json_pack("{s:s}", "text", text), meta, TIMEOUT_MS, &res, &e);
    if (rc)
        return map_error("map/send", rc, &e);
    if (g.json) {
        print_json(res);
    } else {
        json_t *d = json_object_get(res, "delivered");
        printf("%ssent%s %s to %s (delivered to %zu recipient(s))\n", GREEN, RESET, str(res, "messageId", "?"), to,
               json_array_size(d));
    }
    json_decref(res);
    if (wait_s <= 0)
        return EX_OK;
    /* wait for the answer: a map/message with meta.isResult and our correlationId */
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        size_t i;
        json_t *m;
        json_array_foreach(g_inbox, i, m)
        {
            json_t *mm = json_object_get(m, "meta");
            const char *mc = json_string_value(json_object_get(mm, "correlationId"));
            if (json_is_true(json_object_get(mm, "isResult")) && mc && !strcmp(mc, corr)) {
                if (g.json) {
                    print_json(m);
                } else {
                    json_t *pl = json_object_get(m, "payload");
                    const char *t = json_string_value(json_object_get(pl, "text"));
                    char *dump = t ? NULL : json_dumps(pl, JSON_COMPACT | JSON_ENCODE_ANY);
                    printf("%sreply%s from %s: %s\n", GREEN, RESET, str(m, "from", "?"), t ? t : dump ? dump : "");
                    free(dump);
                }
                return EX_OK;
            }
        }
        struct timespec t1;
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double el = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
        if (el >= wait_s) {
            fprintf(stderr, "%smapctl: no reply from %s within %g s%s\n", RED, to, wait_s, RESET);
            return EX_MAP;
        }
        if (mc_service(c, 100) == MC_ERR_CLOSED) {
            fprintf(stderr, "%smapctl: connection closed while waiting for the reply%s\n", RED, RESET);
            return EX_CONNECT;
        }
    }
}

static int cmd_inject(mc_client *c, int argc, char **argv)
{
    if (argc != 2)
        return usage_error("inject needs AGENT and TEXT");
    json_t *res;
    mp_err e;
    int rc = mc_inject(c, argv[0], json_pack("{s:s}", "text", argv[1]), NULL, TIMEOUT_MS, &res, &e);
    if (rc)
        return map_error("map/inject", rc, &e);
    if (g.json)
        print_json(res);
    else
        printf("%sinjected%s into %s (delivery: %s)\n", GREEN, RESET, argv[0], str(res, "delivery", "?"));
    json_decref(res);
    return EX_OK;
}

static int cmd_stop(mc_client *c, int argc, char **argv)
{
    const char *agent = NULL, *reason = NULL;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--reason") && i + 1 < argc)
            reason = argv[++i];
        else if (argv[i][0] == '-')
            return usage_error("stop: unknown option %s", argv[i]);
        else if (!agent)
            agent = argv[i];
        else
            return usage_error("stop needs exactly one agent id");
    }
    if (!agent)
        return usage_error("stop needs an agent id");
    json_t *res;
    mp_err e;
    int rc = mc_agents_stop(c, agent, reason, 0, TIMEOUT_MS, &res, &e);
    if (rc)
        return map_error("map/agents/stop", rc, &e);
    if (g.json)
        print_json(res);
    else
        printf("%sstopping%s %s (state: %s)\n", GREEN, RESET, agent,
               str(json_object_get(res, "agent"), "state", "?"));
    json_decref(res);
    return EX_OK;
}

/* The broker's audit log over MAP (operator only when the broker has auth on);
 * a broker without the method answers -32601. */
#define AUDIT_METHOD "x-mapbroker/audit/list"

static int cmd_audit(mc_client *c, int argc, char **argv)
{
    if (argc > 0)
        return usage_error("audit takes no arguments");
    json_t *res;
    mp_err e;
    int rc = mc_call(c, AUDIT_METHOD, json_pack("{s:i}", "limit", 100), TIMEOUT_MS, &res, &e);
    if (rc == MP_METHOD_NOT_FOUND) {
        fprintf(stderr, "%smapctl: audit: not supported by this broker (no MAP method %s)%s\n", RED, AUDIT_METHOD,
                RESET);
        return EX_MAP;
    }
    if (rc)
        return map_error(AUDIT_METHOD, rc, &e);
    print_json(res);
    json_decref(res);
    return EX_OK;
}

/* "1h", "30m", "45s", "500ms" or plain milliseconds -> ms; -1 if malformed. */
static long long parse_ttl(const char *s)
{
    char *end;
    long long v = strtoll(s, &end, 10);
    if (end == s || v <= 0)
        return -1;
    if (!*end || !strcmp(end, "ms"))
        return v;
    if (!strcmp(end, "s"))
        return v * 1000;
    if (!strcmp(end, "m"))
        return v * 60000;
    if (!strcmp(end, "h"))
        return v * 3600000;
    if (!strcmp(end, "d"))
        return v * 86400000;
    return -1;
}

/* mapctl token create --conversation ID [--conversation ID2 ...] [--ttl 1h] [--agent PATTERN ...]:
 * a short-lived token scoped to those conversations (x-mapbroker/token/create, operator only). */
static int cmd_token(mc_client *c, int argc, char **argv)
{
    if (argc < 1 || strcmp(argv[0], "create"))
        return usage_error("token: the only subcommand is `create`");
    json_t *convs = json_array(), *agents = json_array();
    long long ttl = 3600000;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--conversation") && i + 1 < argc)
            json_array_append_new(convs, json_string(argv[++i]));
        else if (!strcmp(argv[i], "--agent") && i + 1 < argc)
            json_array_append_new(agents, json_string(argv[++i]));
        else if (!strcmp(argv[i], "--ttl") && i + 1 < argc) {
            if ((ttl = parse_ttl(argv[++i])) < 0) {
                json_decref(convs);
                json_decref(agents);
                return usage_error("--ttl takes a duration like 1h, 30m, 45s or milliseconds");
            }
        } else {
            json_decref(convs);
            json_decref(agents);
            return usage_error("token create: unknown option %s", argv[i]);
        }
    }
    if (!json_array_size(convs)) {
        json_decref(convs);
        json_decref(agents);
        return usage_error("token create needs --conversation ID");
    }
    json_t *params = json_pack("{s:o, s:I}", "conversationIds", convs, "ttlMs", (json_int_t)ttl);
    if (json_array_size(agents))
        json_object_set_new(params, "agents", agents);
    else
        json_decref(agents);
    json_t *res;
    mp_err e;
    int rc = mc_call(c, "x-mapbroker/token/create", params, TIMEOUT_MS, &res, &e);
    if (rc)
        return map_error("x-mapbroker/token/create", rc, &e);
    if (g.json)
        print_json(res);
    else
        printf("%s\n", str(res, "token", ""));
    json_decref(res);
    return EX_OK;
}

static const struct {
    const char *name;
    int (*fn)(mc_client *, int, char **);
} CMDS[] = {
    {"token", cmd_token},
    {"agents", cmd_agents}, {"conversations", cmd_conversations}, {"turns", cmd_turns}, {"tail", cmd_tail},
    {"send", cmd_send},     {"inject", cmd_inject},               {"stop", cmd_stop},   {"audit", cmd_audit},
};

int main(int argc, char **argv)
{
    int insecure = 0;
    const char *env = getenv("MAPCTL_URL");
    if (env && *env)
        g.url = env;
    env = getenv("MAPCTL_TOKEN");
    if (env && *env)
        g.token = env;
    int i = 1;
    for (; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(USAGE, stdout);
            return EX_OK;
        } else if (!strcmp(a, "--url")) {
            if (++i >= argc)
                return usage_error("--url needs a value");
            g.url = argv[i];
        } else if (!strncmp(a, "--url=", 6)) {
            g.url = a + 6;
        } else if (!strcmp(a, "--token")) {
            if (++i >= argc)
                return usage_error("--token needs a value");
            g.token = argv[i];
        } else if (!strncmp(a, "--token=", 8)) {
            g.token = a + 8;
        } else if (!strcmp(a, "--json")) {
            g.json = 1;
        } else if (!strcmp(a, "--insecure")) {
            insecure = 1;
        } else if (a[0] == '-') {
            return usage_error("unknown option %s", a);
        } else {
            break;
        }
    }
    if (i >= argc)
        return usage_error("no command given");
    const char *cmd = argv[i++];
    int cargc = argc - i;
    char **cargv = argv + i;
    const char *nc = getenv("NO_COLOR");
    g.color = isatty(STDOUT_FILENO) && isatty(STDERR_FILENO) && !(nc && *nc) && !g.json;

    for (size_t k = 0; k < sizeof CMDS / sizeof CMDS[0]; k++) {
        if (strcmp(cmd, CMDS[k].name))
            continue;
        if (wants_help(cargc, cargv)) {
            for (size_t h = 0; h < sizeof CMD_HELP / sizeof CMD_HELP[0]; h++)
                if (!strcmp(CMD_HELP[h].name, cmd))
                    fputs(CMD_HELP[h].help, stdout);
            return EX_OK;
        }
        /* argument errors are reported before connecting */
        if ((!strcmp(cmd, "turns") && cargc != 1) || (!strcmp(cmd, "inject") && cargc != 2) ||
            ((!strcmp(cmd, "agents") || !strcmp(cmd, "conversations") || !strcmp(cmd, "audit")) && cargc != 0) ||
            ((!strcmp(cmd, "tail") || !strcmp(cmd, "stop") || !strcmp(cmd, "send")) && cargc == 0))
            return usage_error("%s: wrong number of arguments (see 'mapctl %s --help')", cmd, cmd);
        signal(SIGINT, on_signal);
        signal(SIGTERM, on_signal);
        signal(SIGPIPE, SIG_IGN);
        mc_client *c = NULL;
        g_inbox = json_array();
        int rc = open_client(&c, NULL, insecure);
        if (rc)
            return rc;
        rc = CMDS[k].fn(c, cargc, cargv);
        close_client(c);
        json_decref(g_inbox);
        return rc;
    }
    return usage_error("unknown command '%s'", cmd);
}
