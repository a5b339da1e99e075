/* loadgen.c - mb_loadgen: load generator for mapbroker, the reference MAPServer
 * and the bare echo server (bench/echo_server.c). Loopback only.
 *
 * One process, one thread, ONE libwebsockets client context for every
 * connection. It speaks lws directly instead of using libmapclient because an
 * mc_client owns a private lws context per connection (see client/mapclient.h):
 * 10k idle connections or 1000 observers would mean 10k/1000 lws contexts, each
 * with its own fd table and poll loop, which measures the client, not the
 * server. The hot paths build frames from fixed-width templates and find the
 * fields they need with memmem; jansson is only used for handshake replies.
 * Observers (fanout, replay) and turners (turns, replay) are plain sockets
 * served through one epoll set instead of lws clients: see "raw connections".
 *
 * Scenarios (one JSON line of results on stdout each; progress on stderr):
 *   send    N senders + N receiver agents; sender i pipelines map/send to
 *           receiver i's agent (at most --window messages not yet delivered);
 *           the payload carries a send timestamp, latency is measured when the
 *           map/message arrives. With --echo (against mb_echo) there is no
 *           handshake and no receiver: each sender gets its own frame back, the
 *           figures are raw WebSocket round trips.
 *   turns   C connections, each creates a conversation and keeps --inflight K
 *           mail/turn requests outstanding; acknowledged turns/s and ack latency.
 *           With --echo (against mb_echo --rpc): the same frames, acknowledged
 *           without any processing (the ceiling for request/reply).
 *   fanout  one writer creates a conversation, --observers O WebSockets open
 *           /observe?conversation=ID, then the writer posts mail/turn at --rate R
 *           per second for --duration s; post-to-observer latency p50/p99.
 *           With --echo (against mb_echo --rpc) there is no handshake and
 *           no conversation: the server acknowledges each posted frame and
 *           sends it, padded to the size of a turn_added, to every observer.
 *   replay  populate --turns N turns in one conversation (pipelined mail/turn),
 *           then time (a) the /observe?conversation=ID&after=0 WebSocket stream
 *           until the N-th turn_added arrives, and (b) reading them back with
 *           mail/turns/list pages of 1000 (filter.afterTurnId = nextCursor).
 *   idle    open --conns N connections (at most 256 handshakes at a time), each
 *           does map/connect; VmRSS of --pid before and after -> KiB/connection.
 *
 * Every scenario is bounded: --duration for the measured part, --timeout for
 * the whole run (setup included); on timeout it prints what it has, with
 * "timeout":true. With --pid, the server's CPU time over the scenario is
 * reported too (server_cpu_pct; 100 = one core).
 */
#define _GNU_SOURCE /* memmem */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <inttypes.h>
#include <jansson.h>
#include "mapclient.h"
#include <libwebsockets.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* ---------------------------------------------------------------- utilities */

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void put_digits(char *dst, int width, uint64_t v)
{
    for (int i = width - 1; i >= 0; i--) {
        dst[i] = (char)('0' + v % 10);
        v /= 10;
    }
}

static uint64_t get_digits(const char *s, const char *end)
{
    uint64_t v = 0;
    while (s < end && *s >= '0' && *s <= '9')
        v = v * 10 + (uint64_t)(*s++ - '0');
    return v;
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "mb_loadgen: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(2);
}

/* Log-linear latency histogram in microseconds: exact below 256 us, then 256
 * sub-buckets per power of two (< 0.4 % error). */
#define H_BUCKETS (256 + 48 * 256)
typedef struct {
    uint64_t n[H_BUCKETS];
    uint64_t count, max;
} hist;

static int h_bucket(uint64_t v)
{
    if (v < 256)
        return (int)v;
    int msb = 63 - __builtin_clzll(v);
    int shift = msb - 8;
    int b = 256 + shift * 256 + (int)((v >> shift) - 256);
    return b < H_BUCKETS ? b : H_BUCKETS - 1;
}

static uint64_t h_value(int b)
{
    if (b < 256)
        return (uint64_t)b;
    int k = (b - 256) / 256, sub = (b - 256) % 256;
    return ((uint64_t)(256 + sub) << k) + ((1ull << k) >> 1);
}

static void h_add(hist *h, int64_t ns)
{
    uint64_t us = ns > 0 ? (uint64_t)ns / 1000 : 0;
    h->n[h_bucket(us)]++;
    h->count++;
    if (us > h->max)
        h->max = us;
}

static double h_pct(const hist *h, double p)
{
    if (!h->count)
        return -1;
    uint64_t want = (uint64_t)(p * (double)h->count);
    if (want >= h->count)
        want = h->count - 1;
    uint64_t acc = 0;
    for (int b = 0; b < H_BUCKETS; b++) {
        acc += h->n[b];
        if (acc > want)
            return (double)h_value(b);
    }
    return (double)h->max;
}

static long rss_kib(int pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    long v = -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "VmRSS:", 6)) {
            v = strtol(line + 6, NULL, 10);
            break;
        }
    fclose(f);
    return v;
}

/* utime + stime of a process, in seconds */
static double proc_cpu_s(int pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p)
        return -1;
    unsigned long ut = 0, st = 0;
    /* fields after the comm: state(3) ... utime(14) stime(15) */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static double self_cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

/* ---------------------------------------------------------------- state */

enum scen { SC_SEND, SC_TURNS, SC_FANOUT, SC_REPLAY, SC_IDLE };
enum role { R_SENDER, R_RECEIVER, R_TURNER, R_WRITER, R_OBSERVER, R_IDLE };
enum cst { C_INIT, C_CONNECTING, C_HANDSHAKE, C_READY, C_DEAD };
enum phase { P_SETUP, P_RUN, P_DRAIN, P_REPLAY_OBS, P_REPLAY_LIST, P_DONE };

struct outmsg {
    struct outmsg *next;
    size_t len;
    unsigned char buf[]; /* LWS_PRE + len */
};

#define TRING 4096 /* per-connection ring of request send times, indexed by id */

typedef struct conn {
    int idx;
    enum role role;
    enum cst st;
    struct lws *wsi;
    struct outmsg *qh, *qt; /* control frames */
    char *rx;
    size_t rx_len, rx_cap;
    char agent[128];   /* receiver: its agent id; sender: the target's */
    char conv[128];    /* turner / writer: conversation id */
    int peer;          /* sender -> receiver index (itself with --echo) */
    long long sent, acked, errs, delivered;
    long long inflight;
    long long due;     /* writer: turns to post now */
    unsigned char *tmpl; /* send template (LWS_PRE + tlen) */
    unsigned char *sbuf; /* per-send copy (lws masks client frames in place) */
    size_t tlen, off_id, off_t;
    int64_t *tsent;    /* TRING send times */
    size_t ts_hint;    /* observers: where "lg_t" was in the previous frame */
    long long obs_turns, obs_last_seq;
    int got_hello;
    int fd, upgraded; /* raw connections (see open_raw) */
    int raw;          /* observers and turners: a plain socket, not an lws client */
    char *out;        /* raw: frames not yet taken by the socket */
    size_t out_len, out_off, out_cap;
    int out_armed;    /* raw: EPOLLOUT requested */
    int fill;         /* raw turner: replies arrived, top the pipeline up after this read */
} conn;

static struct {
    /* options */
    const char *url_host;
    int port;
    enum scen scen;
    int echo;
    int mapclient; /* turns through libmapclient */
    int conns, window, inflight, observers, rate, pid;
    size_t size;
    double duration, warmup, timeout;
    long long nturns;
    const char *label, *server;
    /* runtime */
    struct lws_context *ctx;
    conn *c;
    int nc;
    enum phase phase;
    int64_t t_begin, t_run, t_meas0, t_meas1, t_end_gen, t_drain_deadline, t_deadline;
    int64_t t_rep0, t_rep1, t_list0, t_list1;
    int timed_out, done, senders_opened, meas0_taken;
    hist lat;
    long long meas_delivered0, meas_delivered1, meas_acked0, meas_acked1;
    long long delivered, acked, errs, conn_failed, closed_early, overflow;
    long long next_to_open; /* throttled opening (idle, fanout observers) */
    int pending_open;
    double cpu0_srv, cpu1_srv, cpu0_self, cpu1_self;
    long rss0, rss1;
    int64_t t_open0, t_open1;
    long long populate_acked;
    int64_t t_pop0, t_pop1;
    long long list_turns, list_pages;
    char list_cursor[128];
    int list_busy;
    char first_err[256];
    lws_sorted_usec_list_t tick;
} G;

static void note_err(const char *what, const char *msg, size_t len)
{
    G.errs++;
    if (!G.first_err[0])
        snprintf(G.first_err, sizeof G.first_err, "%s: %.*s", what, (int)(len > 180 ? 180 : len), msg);
}

/* ---------------------------------------------------------------- frames */

static void raw_send_text(conn *c, const char *text, size_t len);
static void wake(conn *c);

static void q_push(conn *c, const char *json)
{
    size_t len = strlen(json);
    if (c->raw) {
        raw_send_text(c, json, len);
        return;
    }
    struct outmsg *m = malloc(sizeof *m + LWS_PRE + len);
    if (!m)
        die("out of memory");
    m->next = NULL;
    m->len = len;
    memcpy(m->buf + LWS_PRE, json, len);
    if (c->qt)
        c->qt->next = m;
    else
        c->qh = m;
    c->qt = m;
    if (c->wsi)
        lws_callback_on_writable(c->wsi);
}

static void q_pushf(conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void q_pushf(conn *c, const char *fmt, ...)
{
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof buf)
        die("control frame too long");
    q_push(c, buf);
}

/* Build a fixed-width template: ID_W digits for the id, 20 for the timestamp. */
#define ID_W 12
static void make_template(conn *c, const char *head, const char *mid, const char *tail, size_t pad)
{
    /* head + ID + mid + TS + tail-with-pad */
    size_t hl = strlen(head), ml = strlen(mid), tl = strlen(tail);
    size_t len = hl + ID_W + ml + 20 + pad + tl;
    free(c->tmpl);
    free(c->sbuf);
    c->tmpl = malloc(LWS_PRE + len);
    c->sbuf = malloc(LWS_PRE + len);
    if (!c->tmpl || !c->sbuf)
        die("out of memory");
    unsigned char *p = c->tmpl + LWS_PRE;
    memcpy(p, head, hl);
    memset(p + hl, '0', ID_W);
    memcpy(p + hl + ID_W, mid, ml);
    memset(p + hl + ID_W + ml, '0', 20);
    memset(p + hl + ID_W + ml + 20, 'x', pad); /* the tail starts with the closing quote of the pad */
    memcpy(p + hl + ID_W + ml + 20 + pad, tail, tl);
    c->tlen = len;
    c->off_id = hl;
    c->off_t = hl + ID_W + ml;
}

static int write_tmpl(conn *c, long long id, int64_t ts)
{
    memcpy(c->sbuf + LWS_PRE, c->tmpl + LWS_PRE, c->tlen);
    put_digits((char *)c->sbuf + LWS_PRE + c->off_id, ID_W, (uint64_t)id);
    put_digits((char *)c->sbuf + LWS_PRE + c->off_t, 20, (uint64_t)ts);
    return lws_write(c->wsi, c->sbuf + LWS_PRE, c->tlen, LWS_WRITE_TEXT);
}

static void sender_template(conn *c)
{
    /* payload = {"lg_t":"<20>","pad":"xxx"}; pad so the payload object is G.size bytes */
    size_t over = strlen("{\"lg_t\":\"\",\"pad\":\"\"}") + 20;
    size_t pad = G.size > over ? G.size - over : 0;
    char head[256], mid[256];
    snprintf(head, sizeof head, "{\"jsonrpc\":\"2.0\",\"id\":\"s");
    snprintf(mid, sizeof mid, "\",\"method\":\"map/send\",\"params\":{\"to\":{\"agent\":\"%s\"},\"payload\":{\"lg_t\":\"",
             c->agent);
    char tail_head[64];
    snprintf(tail_head, sizeof tail_head, "\",\"pad\":\"");
    size_t hl = strlen(head), ml = strlen(mid), thl = strlen(tail_head);
    const char *tail = "\"}}}";
    size_t tl = strlen(tail);
    size_t len = hl + ID_W + ml + 20 + thl + pad + tl;
    free(c->tmpl);
    free(c->sbuf);
    c->tmpl = malloc(LWS_PRE + len);
    c->sbuf = malloc(LWS_PRE + len);
    if (!c->tmpl || !c->sbuf)
        die("out of memory");
    unsigned char *p = c->tmpl + LWS_PRE;
    size_t o = 0;
    memcpy(p + o, head, hl), o += hl;
    memset(p + o, '0', ID_W), o += ID_W;
    memcpy(p + o, mid, ml), o += ml;
    memset(p + o, '0', 20), o += 20;
    memcpy(p + o, tail_head, thl), o += thl;
    memset(p + o, 'x', pad), o += pad;
    memcpy(p + o, tail, tl), o += tl;
    c->tlen = len;
    c->off_id = hl;
    c->off_t = hl + ID_W + ml;
}

static void turn_template(conn *c)
{
    char mid[512];
    snprintf(mid, sizeof mid,
             "\",\"method\":\"mail/turn\",\"params\":{\"conversationId\":\"%s\",\"contentType\":\"text\","
             "\"content\":{\"text\":\"benchmark turn\",\"lg_t\":\"",
             c->conv);
    make_template(c, "{\"jsonrpc\":\"2.0\",\"id\":\"t", mid, "\"}}}", 0);
}

/* ---------------------------------------------------------------- connections */

static void open_raw(conn *c, const char *path);

static void open_conn(conn *c, const char *path)
{
    if (c->role == R_OBSERVER || c->role == R_TURNER) {
        open_raw(c, path);
        return;
    }
    struct lws_client_connect_info i;
    memset(&i, 0, sizeof i);
    i.context = G.ctx;
    i.address = G.url_host;
    i.port = G.port;
    i.path = path;
    i.host = G.url_host;
    i.origin = G.url_host;
    i.protocol = NULL; /* no subprotocol, like the SDK */
    i.local_protocol_name = "lg";
    i.opaque_user_data = c;
    i.pwsi = &c->wsi;
    c->st = C_CONNECTING;
    if (!lws_client_connect_via_info(&i)) {
        c->st = C_DEAD;
        G.conn_failed++;
    }
}

static void map_connect(conn *c)
{
    q_pushf(c,
            "{\"jsonrpc\":\"2.0\",\"id\":\"c1\",\"method\":\"map/connect\",\"params\":{\"protocolVersion\":1,"
            "\"participantType\":\"%s\",\"name\":\"lg-%d\"}}",
            c->role == R_RECEIVER ? "agent" : "client", c->idx);
}

static int count_ready(enum role r, int *dead)
{
    int n = 0, d = 0;
    for (int i = 0; i < G.nc; i++)
        if (G.c[i].role == r) {
            if (G.c[i].st == C_READY)
                n++;
            else if (G.c[i].st == C_DEAD)
                d++;
        }
    if (dead)
        *dead = d;
    return n;
}

static void start_list_page(conn *c);

/* A reply to a handshake / control request (ids c1, c2, c3, l...). */
static void on_control_reply(conn *c, const char *msg, size_t len)
{
    json_error_t je;
    json_t *j = json_loadb(msg, len, 0, &je);
    if (!j) {
        note_err("unparseable reply", msg, len);
        return;
    }
    const char *id = json_string_value(json_object_get(j, "id"));
    json_t *res = json_object_get(j, "result");
    if (!id || !res) {
        note_err(id ? id : "reply", msg, len);
        if (c->st != C_READY)
            c->st = C_DEAD;
        json_decref(j);
        return;
    }
    if (!strcmp(id, "c1")) { /* map/connect */
        if (c->role == R_RECEIVER) {
            q_pushf(c,
                    "{\"jsonrpc\":\"2.0\",\"id\":\"c2\",\"method\":\"map/agents/register\",\"params\":{"
                    "\"name\":\"lg-recv-%d\",\"role\":\"bench\"}}",
                    c->idx);
        } else if (c->role == R_TURNER || c->role == R_WRITER) {
            q_pushf(c,
                    "{\"jsonrpc\":\"2.0\",\"id\":\"c3\",\"method\":\"mail/create\",\"params\":{\"type\":\"multi-agent\","
                    "\"subject\":\"bench %d\"}}",
                    c->idx);
        } else {
            c->st = C_READY;
        }
    } else if (!strcmp(id, "c2")) { /* map/agents/register */
        const char *aid = json_string_value(json_object_get(json_object_get(res, "agent"), "id"));
        if (!aid)
            aid = json_string_value(json_object_get(res, "agentId"));
        if (!aid) {
            note_err("register: no agent id", msg, len);
            c->st = C_DEAD;
        } else {
            snprintf(c->agent, sizeof c->agent, "%s", aid);
            c->st = C_READY;
        }
    } else if (!strcmp(id, "c3")) { /* mail/create */
        const char *cid = json_string_value(json_object_get(json_object_get(res, "conversation"), "id"));
        if (!cid) {
            note_err("mail/create: no conversation id", msg, len);
            c->st = C_DEAD;
        } else {
            snprintf(c->conv, sizeof c->conv, "%s", cid);
            turn_template(c);
            c->st = C_READY;
        }
    } else if (id[0] == 'l') { /* mail/turns/list page */
        json_t *turns = json_object_get(res, "turns");
        size_t n = json_array_size(turns);
        G.list_turns += (long long)n;
        G.list_pages++;
        G.list_busy = 0;
        const char *cur = json_string_value(json_object_get(res, "nextCursor"));
        if (!cur && n)
            cur = json_string_value(json_object_get(json_array_get(turns, n - 1), "id"));
        int more = json_is_true(json_object_get(res, "hasMore"));
        if (cur)
            snprintf(G.list_cursor, sizeof G.list_cursor, "%s", cur);
        if (more && n && G.list_turns < G.nturns * 2)
            start_list_page(c);
        else
            G.t_list1 = now_ns();
    }
    json_decref(j);
}

static void start_list_page(conn *c)
{
    G.list_busy = 1;
    if (G.list_cursor[0])
        q_pushf(c,
                "{\"jsonrpc\":\"2.0\",\"id\":\"l%lld\",\"method\":\"mail/turns/list\",\"params\":{\"conversationId\":"
                "\"%s\",\"limit\":1000,\"order\":\"asc\",\"filter\":{\"afterTurnId\":\"%s\"}}}",
                G.list_pages, c->conv, G.list_cursor);
    else
        q_pushf(c,
                "{\"jsonrpc\":\"2.0\",\"id\":\"l%lld\",\"method\":\"mail/turns/list\",\"params\":{\"conversationId\":"
                "\"%s\",\"limit\":1000,\"order\":\"asc\"}}",
                G.list_pages, c->conv);
}

static int in_window(int64_t t)
{
    return G.phase == P_RUN && t >= G.t_meas0 && t < G.t_meas1;
}

static const char *find(const char *msg, size_t len, const char *needle)
{
    return memmem(msg, len, needle, strlen(needle));
}

/* the 20-digit timestamp after "lg_t":"; *hint is where it was in the
 * connection's previous frame (frames of one stream differ only in a few
 * fixed-width fields, so that is nearly always where it is again) */
static int64_t find_ts_at(const char *msg, size_t len, size_t *hint)
{
    static const char needle[] = "\"lg_t\":\"";
    const char *p;
    if (*hint && *hint + 8 <= len && !memcmp(msg + *hint, needle, 8))
        p = msg + *hint;
    else if ((p = memmem(msg, len, needle, 8)))
        *hint = (size_t)(p - msg);
    else
        return -1;
    p += 8;
    if (p + 20 > msg + len)
        return -1;
    return (int64_t)get_digits(p, p + 20);
}

static int64_t find_ts(const char *msg, size_t len)
{
    size_t hint = 0;
    return find_ts_at(msg, len, &hint);
}

/* A message received at t (one clock reading per read from the socket). */
static void on_message_at(conn *c, const char *msg, size_t len, int64_t t)
{
    if (c->role == R_OBSERVER) {
        if (!c->got_hello) {
            c->got_hello = 1;
            c->st = C_READY;
        }
        /* the type is near the start; turn_added frames carry the timestamp */
        size_t head = len < 64 ? len : 64;
        static const char ta[] = "{\"type\":\"turn_added\"";
        if ((len >= sizeof ta - 1 && !memcmp(msg, ta, sizeof ta - 1)) || find(msg, head, "\"turn_added\"")) {
            c->obs_turns++;
            if (G.scen == SC_FANOUT) {
                int64_t ts = find_ts_at(msg, len, &c->ts_hint);
                G.delivered++;
                if (ts > 0 && (G.phase == P_RUN || G.phase == P_DRAIN))
                    h_add(&G.lat, t - ts);
            } else if (c->obs_turns >= G.nturns && !G.t_rep1) {
                G.t_rep1 = t;
            }
        } else if (find(msg, head, "\"overflow\"")) {
            G.overflow++;
        } else if (find(msg, head, "\"error\"")) {
            note_err("observer", msg, len);
        }
        return;
    }
    /* Notifications name their method before their params; replies to the requests we sent
     * carry our string ids: "s..." map/send, "t..." mail/turn, "c."/"l." control. */
    size_t head = len < 96 ? len : 96;
    const char *mth = find(msg, head, "\"method\":\"");
    const char *idp = mth ? NULL : find(msg, len < 256 ? len : 256, "\"id\":\"");
    if (c->role == R_SENDER && G.echo) {
        int64_t ts = find_ts(msg, len);
        c->delivered++;
        G.delivered++;
        if (c->inflight > 0)
            c->inflight--;
        if (ts > 0 && in_window(t))
            h_add(&G.lat, t - ts);
        lws_callback_on_writable(c->wsi);
        return;
    }
    if (!idp) {
        /* a notification */
        if (c->role == R_RECEIVER && mth && !strncmp(mth + 10, "map/message\"", 12)) {
            int64_t ts = find_ts(msg, len);
            c->delivered++;
            G.delivered++;
            if (ts > 0 && in_window(t))
                h_add(&G.lat, t - ts);
            conn *s = &G.c[c->peer];
            if (s->inflight > 0)
                s->inflight--;
            if (s->wsi && s->st == C_READY)
                lws_callback_on_writable(s->wsi);
        }
        return;
    }
    char kind = idp[6];
    if (kind == 's' || kind == 't') {
        int err = find(msg, len < 512 ? len : 512, "\"error\"") != NULL;
        if (err) {
            c->errs++;
            note_err(kind == 's' ? "map/send" : "mail/turn", msg, len);
        } else {
            c->acked++;
            G.acked++;
        }
        if (kind == 't') {
            long long id = (long long)get_digits(idp + 7, msg + len);
            if (c->tsent && !err && in_window(t) && G.scen == SC_TURNS)
                h_add(&G.lat, t - c->tsent[id % TRING]);
            if (c->inflight > 0)
                c->inflight--;
            if (!err && G.phase == P_SETUP && G.scen == SC_REPLAY)
                G.populate_acked++;
            wake(c);
        }
        return;
    }
    on_control_reply(c, msg, len);
}

static void on_message(conn *c, const char *msg, size_t len)
{
    on_message_at(c, msg, len, now_ns());
}

/* What a connection writes when it may write. One lws_write per call. */
static void on_writeable(conn *c)
{
    if (c->qh) {
        struct outmsg *m = c->qh;
        c->qh = m->next;
        if (!c->qh)
            c->qt = NULL;
        int n = lws_write(c->wsi, m->buf + LWS_PRE, m->len, LWS_WRITE_TEXT);
        free(m);
        if (n < 0)
            return;
        lws_callback_on_writable(c->wsi);
        return;
    }
    if (c->st != C_READY)
        return;
    int64_t t = now_ns();
    int more = 0;
    if (c->role == R_SENDER && G.phase == P_RUN && t < G.t_end_gen) {
        if (c->inflight < G.window) {
            c->sent++;
            c->inflight++;
            if (write_tmpl(c, c->sent, t) < 0)
                return;
            more = c->inflight < G.window;
        }
    } else if (c->role == R_TURNER &&
               ((G.scen == SC_TURNS && G.phase == P_RUN && t < G.t_end_gen) ||
                (G.scen == SC_REPLAY && G.phase == P_SETUP && c->sent < G.nturns))) {
        if (c->inflight < G.inflight) {
            c->sent++;
            c->inflight++;
            c->tsent[c->sent % TRING] = t;
            if (write_tmpl(c, c->sent, t) < 0)
                return;
            more = c->inflight < G.inflight && (G.scen != SC_REPLAY || c->sent < G.nturns);
        }
    } else if (c->role == R_WRITER && G.phase == P_RUN && c->due > 0) {
        /* The writer shares the loop with 1000 busy observers and only gets a WRITEABLE
         * now and then: post every turn that is due, as long as the socket takes them
         * (lws allows further writes in one callback while the pipe is not choked). */
        do {
            c->due--;
            c->sent++;
            if (write_tmpl(c, c->sent, now_ns()) < 0)
                return;
        } while (c->due > 0 && !lws_send_pipe_choked(c->wsi));
        more = c->due > 0;
    }
    if (more)
        lws_callback_on_writable(c->wsi);
}

static int lg_cb(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
    conn *c = lws_get_opaque_user_data(wsi);
    switch (reason) {
    case LWS_CALLBACK_CLIENT_ESTABLISHED:
        if (!c)
            break;
        c->wsi = wsi;
        if (G.pending_open > 0)
            G.pending_open--;
        if (c->role == R_OBSERVER || G.echo) {
            c->st = G.echo ? C_READY : C_HANDSHAKE; /* observers are ready at "hello" */
            if (G.echo && (c->role == R_WRITER || c->role == R_TURNER)) { /* mb_echo --rpc: no handshake */
                snprintf(c->conv, sizeof c->conv, "echo");
                turn_template(c);
            }
        } else {
            c->st = C_HANDSHAKE;
            map_connect(c);
        }
        lws_callback_on_writable(wsi);
        break;
    case LWS_CALLBACK_CLIENT_RECEIVE: {
        if (!c)
            break;
        int final = lws_is_final_fragment(wsi) && !lws_remaining_packet_payload(wsi);
        if (final && !c->rx_len) {
            on_message(c, in, len);
            break;
        }
        if (c->rx_len + len > c->rx_cap) {
            size_t cap = c->rx_cap ? c->rx_cap : 65536;
            while (cap < c->rx_len + len)
                cap *= 2;
            char *n = realloc(c->rx, cap);
            if (!n)
                die("out of memory");
            c->rx = n;
            c->rx_cap = cap;
        }
        memcpy(c->rx + c->rx_len, in, len);
        c->rx_len += len;
        if (final) {
            on_message(c, c->rx, c->rx_len);
            c->rx_len = 0;
        }
        break;
    }
    case LWS_CALLBACK_CLIENT_WRITEABLE:
        if (c)
            on_writeable(c);
        break;
    case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
        if (c) {
            if (G.pending_open > 0 && c->st == C_CONNECTING)
                G.pending_open--;
            c->st = C_DEAD;
            c->wsi = NULL;
            G.conn_failed++;
            if (!G.first_err[0])
                snprintf(G.first_err, sizeof G.first_err, "connect %d: %s", c->idx,
                         in ? (const char *)in : "error");
        }
        break;
    case LWS_CALLBACK_CLIENT_CLOSED:
        if (c) {
            if (c->st != C_DEAD && G.phase != P_DONE)
                G.closed_early++;
            c->st = C_DEAD;
            c->wsi = NULL;
        }
        break;
    default:
        break;
    }
    return 0;
}

/* ---------------------------------------------------------------- raw connections
 *
 * Observers only read, and in fan-out one process reads every frame the
 * broker writes to 1000 sockets (1M frames/s at 1000 turns/s). lws's client
 * parses incoming WebSocket data one byte at a time, which made the loadgen,
 * not the broker, the bottleneck of that scenario (perf: ~70 % of the loadgen
 * in lws's rx state machine), and lws's poll() over 1000 descriptors was
 * most of the rest. So observers are plain sockets: a blocking connect and
 * HTTP upgrade, then an epoll set (whose one descriptor lws polls, adopted as
 * a raw file) says which are readable, and frames are cut from 64 KiB recv()s
 * by their length headers. Turners (turns, replay) are raw too, for the same
 * reason at 150k+ replies/s: they write masked frames with a zero key built
 * from their template, a whole pipeline per send(). */

static int g_epfd = -1;
static void raw_close(conn *c);

static void raw_fail(conn *c, const char *why)
{
    if (G.pending_open > 0 && (c->st == C_CONNECTING || c->st == C_HANDSHAKE) && !c->upgraded)
        G.pending_open--;
    if (c->st != C_DEAD) {
        if (c->upgraded && G.phase != P_DONE)
            G.closed_early++;
        else if (!c->upgraded)
            G.conn_failed++;
    }
    if (!G.first_err[0] && why)
        snprintf(G.first_err, sizeof G.first_err, "%s %d: %s", c->role == R_OBSERVER ? "observer" : "connection",
                 c->idx, why);
    c->st = C_DEAD;
}

/* Open a raw connection (see "raw connections" above). */
static void open_raw(conn *c, const char *path)
{
    c->raw = 1;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai = NULL;
    char port[16];
    snprintf(port, sizeof port, "%d", G.port);
    c->st = C_CONNECTING;
    c->fd = -1;
    if (getaddrinfo(G.url_host, port, &hints, &ai) || !ai) {
        raw_fail(c, "cannot resolve host");
        return;
    }
    int fd = socket(ai->ai_family, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, ai->ai_addr, ai->ai_addrlen)) {
        freeaddrinfo(ai);
        if (fd >= 0)
            close(fd);
        raw_fail(c, strerror(errno));
        return;
    }
    freeaddrinfo(ai);
    char req[1024];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                     path, G.url_host, G.port);
    if (n <= 0 || n >= (int)sizeof req || send(fd, req, (size_t)n, MSG_NOSIGNAL) != n) {
        close(fd);
        raw_fail(c, "cannot send the upgrade request");
        return;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    c->fd = fd;
    c->st = C_HANDSHAKE;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    if (epoll_ctl(g_epfd, EPOLL_CTL_ADD, fd, &ev)) {
        close(fd);
        c->fd = -1;
        raw_fail(c, "epoll_ctl failed");
    }
}

/* Cut complete frames off c->rx; returns -1 when the connection must close. */
static int raw_frames(conn *c, int64_t t)
{
    size_t off = 0;
    if (!c->upgraded) {
        char *end = memmem(c->rx, c->rx_len, "\r\n\r\n", 4);
        if (!end)
            return c->rx_len > 8192 ? -1 : 0;
        if (c->rx_len < 12 || memcmp(c->rx + 9, "101", 3)) {
            raw_fail(c, "upgrade refused");
            return -1;
        }
        c->upgraded = 1;
        if (c->role == R_OBSERVER && G.pending_open > 0)
            G.pending_open--;
        off = (size_t)(end + 4 - c->rx);
        if (c->role == R_TURNER) {
            if (G.echo) { /* mb_echo --rpc: no handshake, no conversation */
                snprintf(c->conv, sizeof c->conv, "echo");
                turn_template(c);
                c->st = C_READY;
            } else {
                map_connect(c);
            }
        }
    }
    while (c->rx_len - off >= 2) {
        const unsigned char *h = (const unsigned char *)c->rx + off;
        size_t avail = c->rx_len - off, hl = 2;
        uint64_t pl = h[1] & 0x7f;
        if (pl == 126) {
            if (avail < 4)
                break;
            pl = (uint64_t)h[2] << 8 | h[3];
            hl = 4;
        } else if (pl == 127) {
            if (avail < 10)
                break;
            pl = 0;
            for (int i = 0; i < 8; i++)
                pl = pl << 8 | h[2 + i];
            hl = 10;
        }
        if (h[1] & 0x80)
            return -1; /* servers never mask */
        if (avail < hl + pl) {
            if (hl + pl > c->rx_cap) { /* make room for this frame */
                char *n = realloc(c->rx, hl + pl);
                if (!n)
                    die("out of memory");
                c->rx = n;
                c->rx_cap = hl + pl;
            }
            break;
        }
        int op = h[0] & 0x0f;
        if (op == 1 || op == 0)
            on_message_at(c, c->rx + off + hl, (size_t)pl, t);
        else if (op == 8)
            return -1;
        else if (op == 9 && pl <= 125) { /* ping: answer with a masked pong, zero mask */
            unsigned char pong[2 + 4 + 125];
            pong[0] = 0x8a;
            pong[1] = (unsigned char)(0x80 | pl);
            memset(pong + 2, 0, 4);
            memcpy(pong + 6, h + hl, (size_t)pl);
            (void)!send(c->fd, pong, 6 + (size_t)pl, MSG_NOSIGNAL);
        }
        off += hl + (size_t)pl;
    }
    memmove(c->rx, c->rx + off, c->rx_len - off);
    c->rx_len -= off;
    return 0;
}

static void raw_close(conn *c)
{
    if (c->st != C_DEAD)
        raw_fail(c, NULL);
    if (c->fd >= 0) {
        epoll_ctl(g_epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    c->fd = -1;
}

/* ---- raw writes: client frames with a zero masking key (RFC 6455 requires
 * the mask; a zero key leaves the payload as it is, so frames are copied
 * once and never XORed) */

static void raw_arm(conn *c, int out)
{
    if (c->out_armed == out || c->fd < 0)
        return;
    struct epoll_event ev = {.events = EPOLLIN | (out ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(g_epfd, EPOLL_CTL_MOD, c->fd, &ev);
    c->out_armed = out;
}

/* Send what the socket takes; the rest waits for EPOLLOUT. -1 if closed. */
static int raw_flush(conn *c)
{
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (n > 0) {
            c->out_off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            raw_arm(c, 1);
            return 0;
        }
        raw_fail(c, n < 0 ? strerror(errno) : "send returned 0");
        raw_close(c);
        return -1;
    }
    c->out_off = c->out_len = 0;
    raw_arm(c, 0);
    return 0;
}

/* Room for n more bytes in c->out; returns where they go. */
static char *raw_reserve(conn *c, size_t n)
{
    if (c->out_len + n > c->out_cap) {
        if (c->out_off) { /* drop what was sent */
            memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
            c->out_len -= c->out_off;
            c->out_off = 0;
        }
        size_t cap = c->out_cap ? c->out_cap : 65536;
        while (cap < c->out_len + n)
            cap *= 2;
        if (cap != c->out_cap) {
            char *o = realloc(c->out, cap);
            if (!o)
                die("out of memory");
            c->out = o;
            c->out_cap = cap;
        }
    }
    char *p = c->out + c->out_len;
    c->out_len += n;
    return p;
}

/* Append one masked text frame header for a payload of len bytes. */
static void raw_header(conn *c, size_t len)
{
    size_t hl = len < 126 ? 2 : len < 65536 ? 4 : 10;
    unsigned char *h = (unsigned char *)raw_reserve(c, hl + 4);
    h[0] = 0x81;
    if (hl == 2) {
        h[1] = (unsigned char)(0x80 | len);
    } else if (hl == 4) {
        h[1] = 0x80 | 126;
        h[2] = (unsigned char)(len >> 8);
        h[3] = (unsigned char)len;
    } else {
        h[1] = 0x80 | 127;
        for (int i = 0; i < 8; i++)
            h[2 + i] = (unsigned char)((uint64_t)len >> (56 - 8 * i));
    }
    memset(h + hl, 0, 4);
}

static void raw_send_text(conn *c, const char *text, size_t len)
{
    if (c->fd < 0)
        return;
    raw_header(c, len);
    memcpy(raw_reserve(c, len), text, len);
    raw_flush(c);
}

/* A raw turner keeps its pipeline full: every mail/turn that may go now, in
 * one send. */
static void raw_fill(conn *c)
{
    if (c->fd < 0 || c->st != C_READY || c->role != R_TURNER)
        return;
    int64_t t = now_ns();
    int go = (G.scen == SC_TURNS && G.phase == P_RUN && t < G.t_end_gen) ||
             (G.scen == SC_REPLAY && G.phase == P_SETUP && c->sent < G.nturns);
    if (!go)
        return;
    while (c->inflight < G.inflight && (G.scen != SC_REPLAY || c->sent < G.nturns)) {
        c->sent++;
        c->inflight++;
        c->tsent[c->sent % TRING] = t;
        raw_header(c, c->tlen);
        char *p = raw_reserve(c, c->tlen);
        memcpy(p, c->tmpl + LWS_PRE, c->tlen);
        put_digits(p + c->off_id, ID_W, (uint64_t)c->sent);
        put_digits(p + c->off_t, 20, (uint64_t)t);
    }
    raw_flush(c);
}

/* Ask a connection to write when it may: lws clients get a WRITEABLE
 * callback; raw turners top up once the current read is done. */
static void wake(conn *c)
{
    if (c->raw)
        c->fill = 1;
    else if (c->wsi)
        lws_callback_on_writable(c->wsi);
}

/* Drain one raw socket. */
static void raw_read(conn *c)
{
    for (;;) {
        if (c->rx_cap - c->rx_len < 16384) {
            size_t cap = c->rx_cap ? c->rx_cap * 2 : 65536;
            char *n = realloc(c->rx, cap);
            if (!n)
                die("out of memory");
            c->rx = n;
            c->rx_cap = cap;
        }
        size_t room = c->rx_cap - c->rx_len;
        ssize_t n = recv(c->fd, c->rx + c->rx_len, room, 0);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            if (n < 0)
                raw_fail(c, strerror(errno));
            raw_close(c);
            return;
        }
        c->rx_len += (size_t)n;
        if (raw_frames(c, now_ns())) {
            raw_close(c);
            return;
        }
        if ((size_t)n < room)
            return; /* drained: epoll (level-triggered) reports it again when more arrives */
    }
}

/* The epoll descriptor is readable: serve the raw sockets that are ready. */
static int epoll_cb(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
    (void)wsi;
    (void)user;
    (void)in;
    (void)len;
    if (reason != LWS_CALLBACK_RAW_RX_FILE)
        return 0;
    /* several rounds per callback: 1000 ready observers would otherwise take
     * four passes of the lws loop, each with its own poll() */
    struct epoll_event evs[256];
    for (int round = 0; round < 8; round++) {
        int n = epoll_wait(g_epfd, evs, 256, 0);
        for (int i = 0; i < n; i++) {
            conn *c = evs[i].data.ptr;
            if (c->fd >= 0 && (evs[i].events & EPOLLOUT) && raw_flush(c) == 0)
                c->fill = 1;
            if (c->fd >= 0 && (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)))
                raw_read(c);
            if (c->fd >= 0 && c->fill) {
                c->fill = 0;
                raw_fill(c);
            }
        }
        if (n < 256)
            break;
    }
    return 0;
}

/* ---------------------------------------------------------------- scenarios */

static void add_conns(int n, enum role r)
{
    G.c = realloc(G.c, sizeof(conn) * (size_t)(G.nc + n));
    if (!G.c)
        die("out of memory");
    for (int i = 0; i < n; i++) {
        conn *c = &G.c[G.nc];
        memset(c, 0, sizeof *c);
        c->idx = G.nc++;
        c->role = r;
        c->st = C_INIT;
        if (r == R_TURNER)
            c->tsent = calloc(TRING, sizeof(int64_t));
    }
}

static void open_role(enum role r, const char *path)
{
    for (int i = 0; i < G.nc; i++)
        if (G.c[i].role == r && G.c[i].st == C_INIT)
            open_conn(&G.c[i], path);
}

/* Open connections of a role gradually: at most 256 handshakes at a time. */
static void open_throttled(enum role r, const char *path)
{
    for (int i = 0; i < G.nc && G.pending_open < 256; i++) {
        conn *c = &G.c[i];
        if (c->role != r || c->st != C_INIT)
            continue;
        G.pending_open++;
        open_conn(c, path);
        if (c->st == C_DEAD && G.pending_open > 0)
            G.pending_open--;
    }
}

static void begin_run(int64_t t)
{
    G.phase = P_RUN;
    G.t_run = t;
    G.t_meas0 = t + (G.scen == SC_FANOUT ? 0 : (int64_t)(G.warmup * 1e9));
    G.t_meas1 = G.t_meas0 + (int64_t)(G.duration * 1e9);
    G.t_end_gen = G.t_meas1;
    if (G.pid > 0)
        G.cpu0_srv = proc_cpu_s(G.pid);
    G.cpu0_self = self_cpu_s();
    if (G.scen == SC_FANOUT)
        G.meas0_taken = 1; /* fan-out measures from the first post */
    for (int i = 0; i < G.nc; i++)
        if (G.c[i].st == C_READY) {
            if (G.c[i].raw)
                raw_fill(&G.c[i]);
            else if (G.c[i].wsi)
                lws_callback_on_writable(G.c[i].wsi);
        }
}

static char g_obs_path[512];

static void tick(lws_sorted_usec_list_t *sul)
{
    int64_t t = now_ns();
    if (t > G.t_deadline && G.phase != P_DONE) {
        G.timed_out = 1;
        G.phase = P_DONE;
    }
    int dead = 0;
    if (G.phase == P_RUN && t >= G.t_meas0 && !G.meas0_taken) {
        G.meas0_taken = 1;
        G.meas_delivered0 = G.delivered;
        G.meas_acked0 = G.acked;
        if (G.pid > 0)
            G.cpu0_srv = proc_cpu_s(G.pid);
        G.cpu0_self = self_cpu_s();
    }
    switch (G.scen) {
    case SC_SEND:
        if (G.phase == P_SETUP) {
            if (!G.senders_opened) {
                int rr = G.echo ? G.conns : count_ready(R_RECEIVER, &dead);
                if (rr + dead == G.conns) {
                    if (!rr) {
                        G.phase = P_DONE;
                        break;
                    }
                    /* receivers are registered: point each sender at one, then connect the senders */
                    for (int i = 0; i < G.conns; i++) {
                        conn *s = &G.c[G.echo ? i : G.conns + i];
                        s->peer = G.echo ? s->idx : i;
                        if (!G.echo)
                            G.c[i].peer = s->idx;
                        if (!G.echo)
                            memcpy(s->agent, G.c[i].agent, sizeof s->agent);
                        else
                            snprintf(s->agent, sizeof s->agent, "echo-%d", i);
                        sender_template(s);
                    }
                    G.senders_opened = 1;
                    open_role(R_SENDER, "/");
                }
            } else {
                int sr = count_ready(R_SENDER, &dead);
                if (sr + dead == G.conns) {
                    if (!sr)
                        G.phase = P_DONE;
                    else
                        begin_run(t);
                }
            }
        } else if (G.phase == P_RUN && t >= G.t_end_gen) {
            G.meas_delivered1 = G.delivered;
            G.phase = P_DRAIN;
            G.t_drain_deadline = t + 3000000000LL;
            if (G.pid > 0)
                G.cpu1_srv = proc_cpu_s(G.pid);
            G.cpu1_self = self_cpu_s();
        } else if (G.phase == P_DRAIN) {
            long long infl = 0;
            for (int i = 0; i < G.nc; i++)
                if (G.c[i].role == R_SENDER && G.c[i].st == C_READY)
                    infl += G.c[i].inflight;
            if (!infl || t > G.t_drain_deadline)
                G.phase = P_DONE;
        }
        break;
    case SC_TURNS:
        if (G.phase == P_SETUP) {
            int r = count_ready(R_TURNER, &dead);
            if (r + dead == G.conns) {
                if (r)
                    begin_run(t);
                else
                    G.phase = P_DONE;
            }
        } else if (G.phase == P_RUN) {
            if (t >= G.t_end_gen) {
                G.meas_acked1 = G.acked;
                if (G.pid > 0)
                    G.cpu1_srv = proc_cpu_s(G.pid);
                G.cpu1_self = self_cpu_s();
                G.phase = P_DRAIN;
                G.t_drain_deadline = t + 5000000000LL;
            }
        } else if (G.phase == P_DRAIN) {
            long long infl = 0;
            for (int i = 0; i < G.nc; i++)
                if (G.c[i].st == C_READY)
                    infl += G.c[i].inflight;
            if (!infl || t > G.t_drain_deadline)
                G.phase = P_DONE;
        }
        break;
    case SC_FANOUT: {
        conn *w = &G.c[0];
        if (G.phase == P_SETUP) {
            if (w->st == C_READY) {
                if (!g_obs_path[0]) {
                    snprintf(g_obs_path, sizeof g_obs_path, "/observe?conversation=%s", w->conv);
                    G.t_open0 = t;
                }
                open_throttled(R_OBSERVER, g_obs_path);
                int r = count_ready(R_OBSERVER, &dead);
                if (r + dead == G.observers) {
                    G.t_open1 = t;
                    if (!r)
                        G.phase = P_DONE;
                    else
                        begin_run(t);
                }
            } else if (w->st == C_DEAD) {
                G.phase = P_DONE;
            }
        } else if (G.phase == P_RUN) {
            /* no warm-up for fan-out: every posted turn counts */
            if (t < G.t_end_gen) {
                long long want = (long long)((double)(t - G.t_run) * 1e-9 * G.rate) + 1;
                if (want > w->sent + w->due) {
                    w->due = want - w->sent;
                    if (w->wsi)
                        lws_callback_on_writable(w->wsi);
                }
            } else {
                w->due = 0;
                if (G.pid > 0)
                    G.cpu1_srv = proc_cpu_s(G.pid);
                G.cpu1_self = self_cpu_s();
                G.phase = P_DRAIN;
                G.t_drain_deadline = t + 5000000000LL;
            }
        } else if (G.phase == P_DRAIN) {
            int live = count_ready(R_OBSERVER, NULL);
            if (G.delivered >= w->sent * (long long)live || t > G.t_drain_deadline)
                G.phase = P_DONE;
        }
        break;
    }
    case SC_REPLAY: {
        conn *w = &G.c[0];
        if (G.phase == P_SETUP) {
            if (w->st == C_DEAD) {
                G.phase = P_DONE;
            } else if (w->st == C_READY && !G.t_pop0) {
                G.t_pop0 = t;
                raw_fill(w);
            } else if (G.t_pop0 && G.populate_acked + w->errs >= G.nturns) {
                G.t_pop1 = t;
                G.phase = P_REPLAY_OBS;
                snprintf(g_obs_path, sizeof g_obs_path, "/observe?conversation=%s&after=0", w->conv);
                if (G.pid > 0)
                    G.cpu0_srv = proc_cpu_s(G.pid);
                G.t_rep0 = now_ns();
                open_conn(&G.c[1], g_obs_path);
            }
        } else if (G.phase == P_REPLAY_OBS) {
            if (G.t_rep1 || G.c[1].st == C_DEAD) {
                if (!G.t_rep1)
                    G.t_rep1 = t;
                G.phase = P_REPLAY_LIST;
                G.t_list0 = now_ns();
                start_list_page(w);
            }
        } else if (G.phase == P_REPLAY_LIST) {
            if (G.t_list1 || w->st == C_DEAD) {
                if (!G.t_list1)
                    G.t_list1 = t;
                if (G.pid > 0)
                    G.cpu1_srv = proc_cpu_s(G.pid);
                G.phase = P_DONE;
            }
        }
        break;
    }
    case SC_IDLE:
        if (G.phase == P_SETUP) {
            if (!G.t_open0) {
                G.t_open0 = t;
                if (G.pid > 0) {
                    G.rss0 = rss_kib(G.pid);
                    G.cpu0_srv = proc_cpu_s(G.pid);
                }
            }
            open_throttled(R_IDLE, "/");
            int r = count_ready(R_IDLE, &dead);
            if (r + dead == G.conns) {
                G.t_open1 = t;
                G.phase = P_RUN;
                G.t_meas1 = t + 1000000000LL; /* let the server settle for 1 s */
            }
        } else if (G.phase == P_RUN && t >= G.t_meas1) {
            if (G.pid > 0) {
                G.rss1 = rss_kib(G.pid);
                G.cpu1_srv = proc_cpu_s(G.pid);
            }
            G.phase = P_DONE;
        }
        break;
    }
    if (G.phase == P_DONE) {
        G.done = 1;
        /* wake the poll: with no timer left, lws 4.1 would sleep until its next internal one (~30 s) */
        lws_cancel_service(G.ctx);
    } else
        lws_sul_schedule(G.ctx, 0, &G.tick, tick, 1000);
}

/* ---------------------------------------------------------------- report */

static void print_common_head(void)
{
    static const char *names[] = {"send", "turns", "fanout", "replay", "idle"};
    printf("{\"scenario\":\"%s\",\"server\":\"%s\",\"label\":\"%s\"", names[G.scen], G.server, G.label);
}

static void print_cpu(double secs)
{
    if (G.pid > 0 && G.cpu1_srv > 0 && secs > 0)
        printf(",\"server_cpu_pct\":%.0f", 100.0 * (G.cpu1_srv - G.cpu0_srv) / secs);
    if (G.cpu1_self > 0 && secs > 0)
        printf(",\"loadgen_cpu_pct\":%.0f", 100.0 * (G.cpu1_self - G.cpu0_self) / secs);
}

static void print_tail(void)
{
    printf(",\"errors\":%lld,\"conn_failed\":%lld,\"closed_early\":%lld,\"timeout\":%s", G.errs, G.conn_failed,
           G.closed_early, G.timed_out ? "true" : "false");
    if (G.first_err[0]) {
        json_t *s = json_string(G.first_err);
        char *e = s ? json_dumps(s, JSON_ENCODE_ANY) : NULL;
        if (e)
            printf(",\"first_error\":%s", e);
        free(e);
        json_decref(s);
    }
    printf("}\n");
    fflush(stdout);
}

static void report(void)
{
    print_common_head();
    switch (G.scen) {
    case SC_SEND: {
        double secs = G.duration;
        long long n = G.meas_delivered1 - G.meas_delivered0;
        long long sent = 0;
        for (int i = 0; i < G.nc; i++)
            if (G.c[i].role == R_SENDER)
                sent += G.c[i].sent;
        printf(",\"mode\":\"%s\",\"conns\":%d,\"size\":%zu,\"window\":%d,\"secs\":%.2f,\"delivered\":%lld,"
               "\"msgs_per_s\":%.0f,\"mib_per_s\":%.1f,\"p50_us\":%.0f,\"p99_us\":%.0f,\"max_us\":%" PRIu64
               ",\"sent_total\":%lld,\"delivered_total\":%lld,\"acked_total\":%lld",
               G.echo ? "echo" : "routed", G.conns, G.size, G.window, secs, n, n / secs,
               (double)n * (double)G.size / secs / 1048576.0, h_pct(&G.lat, 0.50), h_pct(&G.lat, 0.99), G.lat.max,
               sent, G.delivered, G.acked);
        print_cpu(secs);
        break;
    }
    case SC_TURNS: {
        double secs = G.duration;
        long long n = G.meas_acked1 - G.meas_acked0;
        printf(",\"conns\":%d,\"inflight\":%d,\"secs\":%.2f,\"acked\":%lld,\"turns_per_s\":%.0f,\"ack_p50_us\":%.0f,"
               "\"ack_p99_us\":%.0f,\"acked_total\":%lld",
               G.conns, G.inflight, secs, n, n / secs, h_pct(&G.lat, 0.50), h_pct(&G.lat, 0.99), G.acked);
        print_cpu(secs);
        break;
    }
    case SC_FANOUT: {
        conn *w = &G.c[0];
        int live = count_ready(R_OBSERVER, NULL);
        double secs = G.duration;
        printf(",\"observers\":%d,\"observers_live\":%d,\"rate\":%d,\"secs\":%.2f,\"posted\":%lld,\"acked\":%lld,"
               "\"posted_per_s\":%.0f,\"received\":%lld,\"expected\":%lld,\"frames_per_s\":%.0f,\"p50_us\":%.0f,\"p99_us\":%.0f,"
               "\"max_us\":%" PRIu64 ",\"overflow\":%lld,\"open_s\":%.2f",
               G.observers, live, G.rate, secs, w->sent, w->acked, (double)w->sent / secs, G.delivered, w->sent * (long long)G.observers,
               (double)G.delivered / secs, h_pct(&G.lat, 0.50), h_pct(&G.lat, 0.99), G.lat.max, G.overflow,
               (double)(G.t_open1 - G.t_open0) / 1e9);
        print_cpu(secs);
        break;
    }
    case SC_REPLAY: {
        double pop = G.t_pop1 > G.t_pop0 ? (double)(G.t_pop1 - G.t_pop0) / 1e9 : 0;
        double obs = G.t_rep1 > G.t_rep0 ? (double)(G.t_rep1 - G.t_rep0) / 1e9 : -1;
        double lst = G.t_list1 > G.t_list0 ? (double)(G.t_list1 - G.t_list0) / 1e9 : -1;
        printf(",\"turns\":%lld,\"populate_s\":%.2f,\"populate_turns_per_s\":%.0f,\"observe_turns\":%lld,"
               "\"observe_s\":%.3f,\"list_turns\":%lld,\"list_pages\":%lld,\"list_s\":%.3f",
               G.nturns, pop, pop > 0 ? (double)G.populate_acked / pop : 0, G.c[1].obs_turns, obs, G.list_turns,
               G.list_pages, lst);
        double secs = (obs > 0 ? obs : 0) + (lst > 0 ? lst : 0);
        if (G.pid > 0 && G.cpu1_srv > 0 && secs > 0)
            printf(",\"server_cpu_pct\":%.0f", 100.0 * (G.cpu1_srv - G.cpu0_srv) / secs);
        break;
    }
    case SC_IDLE: {
        int r = count_ready(R_IDLE, NULL);
        printf(",\"conns\":%d,\"connected\":%d,\"open_s\":%.2f,\"rss_before_kib\":%ld,\"rss_after_kib\":%ld,"
               "\"kib_per_conn\":%.2f",
               G.conns, r, (double)(G.t_open1 - G.t_open0) / 1e9, G.rss0, G.rss1,
               r > 0 && G.rss1 > 0 ? (double)(G.rss1 - G.rss0) / r : -1.0);
        break;
    }
    }
    print_tail();
}

/* ---------------------------------------------------------------- main */

static void usage(void)
{
    fprintf(stderr,
            "usage: mb_loadgen --port N --scenario send|turns|fanout|replay|idle [options]\n"
            "  --host H            server address (loopback only; default 127.0.0.1)\n"
            "  --server NAME       label for the server in the JSON line (default: unknown)\n"
            "  --label TEXT        free label copied into the JSON line\n"
            "  --pid PID           server pid: VmRSS (idle) and CPU%% from /proc\n"
            "  --duration SEC      measured time (send, turns, fanout; default 5)\n"
            "  --warmup SEC        unmeasured ramp-up before it (send, turns; default 0.5)\n"
            "  --timeout SEC       hard bound for the whole scenario (default 60)\n"
            "  send:   --conns N (senders = receivers, default 4) --size BYTES (payload, default 256)\n"
            "          --window W (undelivered messages per sender, default 64) --echo (against mb_echo)\n"
            "  turns:  --conns C (default 4) --inflight K (default 64) --echo (against mb_echo --rpc)\n"
            "          --mapclient (through libmapclient: one mc_client per connection, async mc_request)\n"
            "  fanout: --observers O (default 1000) --rate R turns/s (default 1000) --echo (against mb_echo --rpc)\n"
            "  replay: --turns N (default 100000) --inflight K (populate pipeline, default 256)\n"
            "  idle:   --conns N (default 10000)\n");
    exit(2);
}

/* ---------------------------------------------------------------- turns via libmapclient
 *
 * --mapclient: the turns scenario through the project's own client library
 * (client/mapclient.h), the way a C agent would post turns: one mc_client per
 * connection (each with its own lws context), mc_mail_create, then K async
 * mc_request("mail/turn") in flight per client, each reply issuing the next.
 * Same frames' content, same counting and output as the raw turners, so the
 * difference between the two lines is what the client library costs. */

struct mct {
    mc_client *c;
    char conv[128];
    long long inflight;
};

struct mct_req {
    struct mct *m;
    int64_t t;
};

static void mct_reply(mc_client *c, json_t *result, const mp_err *err, void *arg)
{
    (void)c;
    (void)result;
    struct mct_req *r = arg;
    int64_t t = now_ns();
    r->m->inflight--;
    if (err) {
        G.errs++;
        if (!G.first_err[0])
            snprintf(G.first_err, sizeof G.first_err, "mail/turn: %d %.160s", err->code, err->message);
    } else {
        G.acked++;
        if (in_window(t)) {
            G.meas_acked1++;
            h_add(&G.lat, t - r->t);
        }
    }
    free(r);
}

static int mct_post(struct mct *m, int64_t t)
{
    char ts[21];
    put_digits(ts, 20, (uint64_t)t);
    ts[20] = '\0';
    json_t *params = json_pack("{s:s, s:s, s:{s:s, s:s}}", "conversationId", m->conv, "contentType", "text", "content",
                               "text", "benchmark turn", "lg_t", ts);
    struct mct_req *r = malloc(sizeof *r);
    if (!params || !r)
        die("out of memory");
    r->m = m;
    r->t = t;
    mp_err err;
    if (mc_request(m->c, "mail/turn", params, 30000, mct_reply, r, &err)) {
        free(r);
        G.errs++;
        return -1;
    }
    m->inflight++;
    return 0;
}

static void run_turns_mapclient(void)
{
    char url[256];
    snprintf(url, sizeof url, "ws://%s:%d/", G.url_host, G.port);
    struct mct *ms = calloc((size_t)G.conns, sizeof *ms);
    if (!ms)
        die("out of memory");
    int live = 0;
    for (int i = 0; i < G.conns; i++) {
        char name[32];
        snprintf(name, sizeof name, "lg-mc-%d", i);
        mc_options o = {.url = url, .name = name, .reconnect = MC_RECONNECT_OFF};
        mp_err err;
        json_t *res = NULL;
        ms[i].c = mc_client_new(&o, &err);
        if (!ms[i].c || mc_connect(ms[i].c, 10000, &err) ||
            mc_mail_create(ms[i].c, json_pack("{s:s, s:s}", "type", "multi-agent", "subject", "bench"), 10000, &res,
                           &err)) {
            G.conn_failed++;
            if (!G.first_err[0])
                snprintf(G.first_err, sizeof G.first_err, "mapclient %d: %d %.160s", i, err.code, err.message);
            json_decref(res);
            continue;
        }
        const char *cid = json_string_value(json_object_get(json_object_get(res, "conversation"), "id"));
        snprintf(ms[i].conv, sizeof ms[i].conv, "%s", cid ? cid : "");
        json_decref(res);
        live++;
    }
    if (live) {
        int64_t t = now_ns();
        G.phase = P_RUN;
        G.t_run = t;
        G.t_meas0 = t + (int64_t)(G.warmup * 1e9);
        G.t_meas1 = G.t_meas0 + (int64_t)(G.duration * 1e9);
        G.t_end_gen = G.t_meas1;
        int r = 0;
        for (;;) {
            t = now_ns();
            if (t > G.t_deadline) {
                G.timed_out = 1;
                break;
            }
            if (!G.meas0_taken && t >= G.t_meas0) {
                G.meas0_taken = 1;
                if (G.pid > 0)
                    G.cpu0_srv = proc_cpu_s(G.pid);
                G.cpu0_self = self_cpu_s();
            }
            long long infl = 0;
            for (int i = 0; i < G.conns; i++) {
                struct mct *m = &ms[i];
                if (!m->conv[0])
                    continue;
                while (t < G.t_end_gen && m->inflight < G.inflight && mct_post(m, t) == 0)
                    ;
                infl += m->inflight;
            }
            if (t >= G.t_end_gen) {
                if (!G.cpu1_self) {
                    if (G.pid > 0)
                        G.cpu1_srv = proc_cpu_s(G.pid);
                    G.cpu1_self = self_cpu_s();
                    G.t_drain_deadline = t + 3000000000LL;
                }
                if (!infl || t > G.t_drain_deadline)
                    break;
            }
            int got = 0;
            for (int i = 0; i < G.conns; i++)
                if (ms[i].conv[0]) {
                    int n = mc_service(ms[i].c, 0);
                    if (n < 0) { /* closed: its requests failed through their callbacks */
                        G.closed_early++;
                        ms[i].conv[0] = '\0';
                    } else {
                        got += n;
                    }
                }
            if (!got) /* nothing arrived: wait a little on one client instead of spinning */
                for (int k = 0; k < G.conns; k++, r = (r + 1) % G.conns)
                    if (ms[r].conv[0]) {
                        mc_service(ms[r].c, 1);
                        r = (r + 1) % G.conns;
                        break;
                    }
        }
    }
    G.phase = P_DONE;
    report();
    fflush(NULL);
    _exit(G.timed_out ? 3 : 0); /* like main: no close handshakes */
}

int main(int argc, char **argv)
{
    G.url_host = "127.0.0.1";
    G.port = 0;
    G.scen = (enum scen)-1;
    G.conns = -1;
    G.window = 64;
    G.inflight = -1;
    G.observers = 1000;
    G.rate = 1000;
    G.size = 256;
    G.duration = 5;
    G.warmup = 0.5;
    G.timeout = 60;
    G.nturns = 100000;
    G.label = "";
    G.server = "unknown";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define ARG(name) (!strcmp(a, name) && v && (i++, 1))
        if (ARG("--host"))
            G.url_host = v;
        else if (ARG("--port"))
            G.port = atoi(v);
        else if (ARG("--scenario")) {
            static const char *names[] = {"send", "turns", "fanout", "replay", "idle"};
            for (int k = 0; k < 5; k++)
                if (!strcmp(v, names[k]))
                    G.scen = (enum scen)k;
        } else if (ARG("--server"))
            G.server = v;
        else if (ARG("--label"))
            G.label = v;
        else if (ARG("--pid"))
            G.pid = atoi(v);
        else if (ARG("--duration"))
            G.duration = atof(v);
        else if (ARG("--warmup"))
            G.warmup = atof(v);
        else if (ARG("--timeout"))
            G.timeout = atof(v);
        else if (ARG("--conns"))
            G.conns = atoi(v);
        else if (ARG("--size"))
            G.size = (size_t)strtoull(v, NULL, 10);
        else if (ARG("--window"))
            G.window = atoi(v);
        else if (ARG("--inflight"))
            G.inflight = atoi(v);
        else if (ARG("--observers"))
            G.observers = atoi(v);
        else if (ARG("--rate"))
            G.rate = atoi(v);
        else if (ARG("--turns"))
            G.nturns = atoll(v);
        else if (!strcmp(a, "--echo"))
            G.echo = 1;
        else if (!strcmp(a, "--mapclient"))
            G.mapclient = 1;
        else
            usage();
#undef ARG
    }
    if (G.port <= 0 || (int)G.scen < 0)
        usage();
    if (strcmp(G.url_host, "127.0.0.1") && strcmp(G.url_host, "localhost") && strcmp(G.url_host, "::1"))
        die("loopback only (--host 127.0.0.1)");
    if (G.conns < 0)
        G.conns = G.scen == SC_IDLE ? 10000 : 4;
    if (G.inflight < 0)
        G.inflight = G.scen == SC_REPLAY ? 256 : 64;
    if (G.window < 1 || G.inflight < 1 || G.inflight >= TRING || G.conns < 1 || G.observers < 1 || G.rate < 1)
        die("bad window / inflight / conns / observers / rate");
    if (G.echo && G.scen != SC_SEND && G.scen != SC_FANOUT && G.scen != SC_TURNS)
        die("--echo is for the send (against mb_echo), turns and fanout scenarios (against mb_echo --rpc)");
    if (G.mapclient && (G.scen != SC_TURNS || G.echo))
        die("--mapclient is for the turns scenario against a MAP server");
    signal(SIGPIPE, SIG_IGN);
    if (G.mapclient) {
        G.t_begin = now_ns();
        G.t_deadline = G.t_begin + (int64_t)(G.timeout * 1e9);
        lws_set_log_level(LLL_ERR, NULL);
        run_turns_mapclient();
    }

    /* the fd table lws allocates follows RLIMIT_NOFILE; idle needs > conns */
    struct rlimit rl;
    if (!getrlimit(RLIMIT_NOFILE, &rl) && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (G.scen == SC_IDLE && !getrlimit(RLIMIT_NOFILE, &rl) && rl.rlim_cur < (rlim_t)G.conns + 64)
        die("RLIMIT_NOFILE %llu is too low for %d connections (raise ulimit -n)", (unsigned long long)rl.rlim_cur,
            G.conns);

    static struct lws_protocols protocols[] = {
        {"lg", lg_cb, 0, 65536, 0, NULL, 0},
        {"lg-epoll", epoll_cb, 0, 0, 0, NULL, 0},
        {NULL, NULL, 0, 0, 0, NULL, 0},
    };
    if (G.scen == SC_IDLE || G.scen == SC_FANOUT)
        protocols[0].rx_buffer_size = 4096; /* many connections, small frames */
    lws_set_log_level(LLL_ERR, NULL);
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.port = CONTEXT_PORT_NO_LISTEN;
    info.protocols = protocols;
    info.pt_serv_buf_size = 65536;
    info.timeout_secs = 30;
    info.count_threads = 1;
    G.ctx = lws_create_context(&info);
    if (!G.ctx)
        die("cannot create the lws context");
    g_epfd = epoll_create1(EPOLL_CLOEXEC);
    lws_sock_file_fd_type ep;
    ep.filefd = (lws_filefd_type)g_epfd;
    if (g_epfd < 0 || !lws_adopt_descriptor_vhost(lws_get_vhost_by_name(G.ctx, "default"), LWS_ADOPT_RAW_FILE_DESC,
                                                  ep, "lg-epoll", NULL))
        die("cannot set up the observers' epoll set");

    switch (G.scen) {
    case SC_SEND:
        if (!G.echo)
            add_conns(G.conns, R_RECEIVER);
        add_conns(G.conns, R_SENDER);
        if (!G.echo)
            open_role(R_RECEIVER, "/");
        break;
    case SC_TURNS:
        add_conns(G.conns, R_TURNER);
        open_role(R_TURNER, "/");
        break;
    case SC_FANOUT:
        add_conns(1, R_WRITER);
        add_conns(G.observers, R_OBSERVER);
        G.inflight = 1 << 20;
        open_conn(&G.c[0], "/");
        break;
    case SC_REPLAY:
        add_conns(1, R_TURNER);
        add_conns(1, R_OBSERVER);
        open_conn(&G.c[0], "/");
        break;
    case SC_IDLE:
        add_conns(G.conns, R_IDLE);
        break;
    }
    G.t_begin = now_ns();
    G.t_deadline = G.t_begin + (int64_t)(G.timeout * 1e9);
    lws_sul_schedule(G.ctx, 0, &G.tick, tick, 1000);
    while (!G.done)
        if (lws_service(G.ctx, 0) < 0)
            break;
    report();
    /* No lws_context_destroy(): it closes every connection with a close handshake and waits
     * for each peer's answer (up to 30 s with 10k connections, or a busy server). The kernel
     * closes the sockets on exit; the server sees ordinary disconnects. */
    fflush(NULL);
    _exit(G.timed_out ? 3 : 0);
}
