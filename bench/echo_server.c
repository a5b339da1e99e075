/* echo_server.c - mb_echo: a bare libwebsockets WebSocket echo server, the
 * ceiling for the loadgen's `send` scenario, and with --rpc the ceiling for
 * its `turns` and `fanout` scenarios.
 *
 * Same lws build and the same lws settings as the broker's listener
 * (broker/net.c: pt_serv_buf_size 64 KiB, rx buffer 64 KiB, UTF-8 validation,
 * first protocol serves peers that ask for no subprotocol). Every complete
 * WebSocket message is queued and written back as one text frame, one
 * lws_write per WRITEABLE callback, in arrival order. No JSON parsing, no
 * routing: what is left is the cost of lws reading, reassembling and writing
 * frames, i.e. the upper bound for any lws-based broker on this machine.
 *
 * --rpc: every message is answered with a JSON-RPC result carrying its "id",
 * padded to --reply-size bytes (default 388, the size of the broker's reply to
 * the loadgen's mail/turn), and copied to every observer (connections to
 * /observe..., which get a small hello frame first) as one shared frame of
 * --frame-size bytes (default 456, the size of the broker's turn_added for
 * that turn) that embeds the message, so the loadgen's timestamp rides along.
 * Replies and observers' frames are written the way the broker writes them
 * (broker/session.c): every queued frame gathered into one buffer of at most
 * 64 KiB, WebSocket headers written by hand, one raw lws_write per
 * WRITEABLE. No JSON, no store, no per-observer filtering: what is left is
 * the cost of lws and the kernel delivering the same frames to the same
 * sockets.
 *
 * usage: mb_echo [--host 127.0.0.1] [--port 7440] [--rpc [--reply-size N] [--frame-size N]]
 * Stops on SIGINT / SIGTERM.
 */
#define _GNU_SOURCE /* memmem */
#include <libwebsockets.h>
#include <stdint.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct msg {
    struct msg *next;
    size_t len;
    unsigned char buf[]; /* LWS_PRE + len */
};

/* a fan-out frame, shared by every observer's queue */
struct shared {
    int refs;
    size_t len;
    unsigned char buf[];
};

struct oent {
    struct oent *next;
    struct shared *f;
};

struct pss {
    struct msg *qh, *qt; /* messages waiting to be echoed */
    size_t qn;
    unsigned char *rx;   /* reassembly of the current message */
    size_t rx_len, rx_cap;
    int flow_off;
    /* --fanout observers */
    struct lws *wsi;
    struct pss *next_obs, *prev_obs;
    struct oent *oh, *ot;
    size_t on;
    int observer;
};

#define ECHO_QUEUE_MAX 1024 /* stop reading from a peer that does not read its echoes */
#define OBS_QUEUE_MAX 100000
#define GATHER_MAX 65536

static int g_rpc;
static size_t g_frame_size = 456, g_reply_size = 388;
static struct pss *g_observers;
static unsigned char g_gather[LWS_PRE + GATHER_MAX];

static volatile sig_atomic_t g_stop;
static struct lws_context *g_ctx;

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
    if (g_ctx)
        lws_cancel_service(g_ctx);
}

static void shared_unref(struct shared *f)
{
    if (--f->refs == 0)
        free(f);
}

static void obs_pop(struct pss *p)
{
    struct oent *e = p->oh;
    p->oh = e->next;
    if (!p->oh)
        p->ot = NULL;
    p->on--;
    shared_unref(e->f);
    free(e);
}

static void obs_push(struct pss *p, struct shared *f)
{
    if (p->on >= OBS_QUEUE_MAX)
        return;
    struct oent *e = malloc(sizeof *e);
    if (!e)
        return;
    e->next = NULL;
    e->f = f;
    f->refs++;
    if (p->ot)
        p->ot->next = e;
    else
        p->oh = e;
    p->ot = e;
    p->on++;
    lws_callback_on_writable(p->wsi);
}

/* Queue a message to go back to p's peer. */
static void msg_push(struct pss *p, struct msg *m)
{
    m->next = NULL;
    if (p->qt)
        p->qt->next = m;
    else
        p->qh = m;
    p->qt = m;
    p->qn++;
    lws_callback_on_writable(p->wsi);
}

static struct shared *shared_text(const char *text, size_t len)
{
    struct shared *f = malloc(sizeof *f + len);
    if (!f)
        return NULL;
    f->refs = 1;
    f->len = len;
    memcpy(f->buf, text, len);
    return f;
}

/* The fan-out frame for one message: {"type":"turn_added","m":<message>,"pad":"xx"},
 * padded to g_frame_size. */
static void fan_out(const unsigned char *msg, size_t len)
{
    static const char head[] = "{\"type\":\"turn_added\",\"m\":", mid[] = ",\"pad\":\"", tail[] = "\"}";
    size_t base = sizeof head - 1 + len + sizeof mid - 1 + sizeof tail - 1;
    size_t pad = g_frame_size > base ? g_frame_size - base : 0;
    struct shared *f = malloc(sizeof *f + base + pad);
    if (!f)
        return;
    f->refs = 1;
    f->len = base + pad;
    unsigned char *o = f->buf;
    memcpy(o, head, sizeof head - 1), o += sizeof head - 1;
    memcpy(o, msg, len), o += len;
    memcpy(o, mid, sizeof mid - 1), o += sizeof mid - 1;
    memset(o, 'x', pad), o += pad;
    memcpy(o, tail, sizeof tail - 1);
    for (struct pss *p = g_observers; p; p = p->next_obs)
        obs_push(p, f);
    shared_unref(f);
}

/* {"jsonrpc":"2.0","id":"<the request's id>","result":{"pad":"xx"}}, padded to
 * g_reply_size, to the sender: queued like an observer's frames, so that the
 * replies waiting for one WRITEABLE go out gathered in one write, as the
 * broker's do */
static void ack(struct pss *p, const unsigned char *msg, size_t len)
{
    const unsigned char *id = memmem(msg, len, "\"id\":\"", 6), *end = NULL;
    if (id)
        end = memchr(id + 6, '"', len - (size_t)(id + 6 - msg));
    if (!end || end - id > 128)
        return;
    char head[192];
    static const char tail[] = "\"}}";
    int hn = snprintf(head, sizeof head, "{\"jsonrpc\":\"2.0\",\"id\":\"%.*s\",\"result\":{\"pad\":\"",
                      (int)(end - id - 6), (const char *)id + 6);
    if (hn <= 0 || (size_t)hn >= sizeof head)
        return;
    size_t base = (size_t)hn + sizeof tail - 1, pad = g_reply_size > base ? g_reply_size - base : 0;
    struct shared *f = malloc(sizeof *f + base + pad);
    if (!f)
        return;
    f->refs = 1;
    f->len = base + pad;
    unsigned char *o = f->buf;
    memcpy(o, head, (size_t)hn), o += hn;
    memset(o, 'x', pad), o += pad;
    memcpy(o, tail, sizeof tail - 1);
    obs_push(p, f);
    shared_unref(f);
}

/* Gather every queued frame (whole frames, at most GATHER_MAX bytes) with
 * its WebSocket header and write them in one go, like the broker. */
static int obs_write(struct pss *p)
{
    unsigned char *out = g_gather + LWS_PRE;
    size_t n = 0;
    while (p->oh) {
        size_t fl = p->oh->f->len, hl = fl < 126 ? 2 : fl < 65536 ? 4 : 10;
        if (n + hl + fl > GATHER_MAX)
            break;
        out[n] = 0x81;
        if (hl == 2) {
            out[n + 1] = (unsigned char)fl;
        } else if (hl == 4) {
            out[n + 1] = 126;
            out[n + 2] = (unsigned char)(fl >> 8);
            out[n + 3] = (unsigned char)fl;
        } else {
            out[n + 1] = 127;
            for (int i = 0; i < 8; i++)
                out[n + 2 + i] = (unsigned char)((uint64_t)fl >> (56 - 8 * i));
        }
        memcpy(out + n + hl, p->oh->f->buf, fl);
        n += hl + fl;
        obs_pop(p);
    }
    if (n && lws_write(p->wsi, out, n, LWS_WRITE_HTTP) < (int)n)
        return -1;
    if (p->oh)
        lws_callback_on_writable(p->wsi);
    return 0;
}

static void pss_free(struct pss *p)
{
    if (p->observer) {
        if (p->prev_obs)
            p->prev_obs->next_obs = p->next_obs;
        else
            g_observers = p->next_obs;
        if (p->next_obs)
            p->next_obs->prev_obs = p->prev_obs;
        p->observer = 0;
    }
    while (p->oh)
        obs_pop(p);
    while (p->qh) {
        struct msg *m = p->qh;
        p->qh = m->next;
        free(m);
    }
    p->qt = NULL;
    p->qn = 0;
    free(p->rx);
    p->rx = NULL;
    p->rx_len = p->rx_cap = 0;
}

static int echo_cb(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
    struct pss *p = user;
    switch (reason) {
    case LWS_CALLBACK_ESTABLISHED: {
        memset(p, 0, sizeof *p);
        p->wsi = wsi;
        char uri[64];
        if (g_rpc && lws_hdr_copy(wsi, uri, sizeof uri, WSI_TOKEN_GET_URI) > 0 && !strncmp(uri, "/observe", 8)) {
            p->observer = 1;
            p->next_obs = g_observers;
            if (g_observers)
                g_observers->prev_obs = p;
            g_observers = p;
            static const char hello[] = "{\"type\":\"hello\"}";
            struct shared *f = shared_text(hello, sizeof hello - 1);
            if (!f)
                return -1;
            obs_push(p, f);
            shared_unref(f);
        }
        break;
    }
    case LWS_CALLBACK_RECEIVE: {
        if (p->rx_len + len > p->rx_cap) {
            size_t cap = p->rx_cap ? p->rx_cap : 4096;
            while (cap < p->rx_len + len)
                cap *= 2;
            unsigned char *n = realloc(p->rx, cap);
            if (!n)
                return -1;
            p->rx = n;
            p->rx_cap = cap;
        }
        memcpy(p->rx + p->rx_len, in, len);
        p->rx_len += len;
        if (!lws_is_final_fragment(wsi) || lws_remaining_packet_payload(wsi))
            break;
        if (g_rpc) {
            if (!p->observer) {
                fan_out(p->rx, p->rx_len);
                ack(p, p->rx, p->rx_len);
            }
            p->rx_len = 0;
            break;
        }
        struct msg *m = malloc(sizeof *m + LWS_PRE + p->rx_len);
        if (!m)
            return -1;
        m->len = p->rx_len;
        memcpy(m->buf + LWS_PRE, p->rx, p->rx_len);
        p->rx_len = 0;
        msg_push(p, m);
        if (p->qn >= ECHO_QUEUE_MAX && !p->flow_off) {
            p->flow_off = 1;
            lws_rx_flow_control(wsi, 0);
        }
        break;
    }
    case LWS_CALLBACK_SERVER_WRITEABLE: {
        if (g_rpc) /* observers' frames, or a writer's replies */
            return obs_write(p);
        struct msg *m = p->qh;
        if (!m)
            break;
        p->qh = m->next;
        if (!p->qh)
            p->qt = NULL;
        p->qn--;
        int n = lws_write(wsi, m->buf + LWS_PRE, m->len, LWS_WRITE_TEXT);
        free(m);
        if (n < 0)
            return -1;
        if (p->flow_off && p->qn < ECHO_QUEUE_MAX / 2) {
            p->flow_off = 0;
            lws_rx_flow_control(wsi, 1);
        }
        if (p->qh)
            lws_callback_on_writable(wsi);
        break;
    }
    case LWS_CALLBACK_CLOSED:
        pss_free(p);
        break;
    default:
        break;
    }
    return 0;
}

static struct lws_protocols protocols[] = {
    {"echo", echo_cb, sizeof(struct pss), 65536, 0, NULL, 65536},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1";
    int port = 7440;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--port") && i + 1 < argc)
            port = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--host") && i + 1 < argc)
            host = argv[++i];
        else if (!strcmp(argv[i], "--rpc"))
            g_rpc = 1;
        else if (!strcmp(argv[i], "--reply-size") && i + 1 < argc)
            g_reply_size = (size_t)strtoul(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--frame-size") && i + 1 < argc)
            g_frame_size = (size_t)strtoul(argv[++i], NULL, 10);
        else {
            fprintf(stderr, "usage: mb_echo [--host 127.0.0.1] [--port 7440] [--rpc [--reply-size N] [--frame-size N]]\n");
            return 2;
        }
    }
    lws_set_log_level(LLL_ERR, NULL);
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.port = port;
    info.iface = host;
    info.protocols = protocols;
    info.options = LWS_SERVER_OPTION_VALIDATE_UTF8;
    info.pt_serv_buf_size = 65536;
    info.count_threads = 1;
    g_ctx = lws_create_context(&info);
    if (!g_ctx) {
        fprintf(stderr, "mb_echo: cannot listen on %s:%d\n", host, port);
        return 1;
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGPIPE, SIG_IGN);
    printf("mb_echo listening on ws://%s:%d/\n", host, port);
    fflush(stdout);
    while (!g_stop)
        if (lws_service(g_ctx, 0) < 0)
            break;
    lws_context_destroy(g_ctx);
    return 0;
}
