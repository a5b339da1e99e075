/* echo_server.c - mb_echo: a bare libwebsockets WebSocket echo server, the
 * ceiling for the loadgen's `send` scenario.
 *
 * Same lws build and the same lws settings as the broker's listener
 * (broker/net.c: pt_serv_buf_size 64 KiB, rx buffer 64 KiB, UTF-8 validation,
 * first protocol serves peers that ask for no subprotocol). Every complete
 * WebSocket message is queued and written back as one text frame, one
 * lws_write per WRITEABLE callback, in arrival order. No JSON parsing, no
 * routing: what is left is the cost of lws reading, reassembling and writing
 * frames, i.e. the upper bound for any lws-based broker on this machine.
 *
 * usage: mb_echo [--host 127.0.0.1] [--port 7440]
 * Stops on SIGINT / SIGTERM.
 */
#include <libwebsockets.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct msg {
    struct msg *next;
    size_t len;
    unsigned char buf[]; /* LWS_PRE + len */
};

struct pss {
    struct msg *qh, *qt; /* messages waiting to be echoed */
    size_t qn;
    unsigned char *rx;   /* reassembly of the current message */
    size_t rx_len, rx_cap;
    int flow_off;
};

#define ECHO_QUEUE_MAX 1024 /* stop reading from a peer that does not read its echoes */

static volatile sig_atomic_t g_stop;
static struct lws_context *g_ctx;

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
    if (g_ctx)
        lws_cancel_service(g_ctx);
}

static void pss_free(struct pss *p)
{
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
    case LWS_CALLBACK_ESTABLISHED:
        memset(p, 0, sizeof *p);
        break;
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
        struct msg *m = malloc(sizeof *m + LWS_PRE + p->rx_len);
        if (!m)
            return -1;
        m->next = NULL;
        m->len = p->rx_len;
        memcpy(m->buf + LWS_PRE, p->rx, p->rx_len);
        p->rx_len = 0;
        if (p->qt)
            p->qt->next = m;
        else
            p->qh = m;
        p->qt = m;
        if (++p->qn >= ECHO_QUEUE_MAX && !p->flow_off) {
            p->flow_off = 1;
            lws_rx_flow_control(wsi, 0);
        }
        lws_callback_on_writable(wsi);
        break;
    }
    case LWS_CALLBACK_SERVER_WRITEABLE: {
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
        else {
            fprintf(stderr, "usage: mb_echo [--host 127.0.0.1] [--port 7440]\n");
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
