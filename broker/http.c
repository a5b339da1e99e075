/* Plain HTTP on the MAP port: /healthz and /metrics (Prometheus text).
 * Responses are built whole, then written from HTTP_WRITEABLE in chunks. */
#include <libwebsockets.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "net.h"

struct mb_http {
    char *body;
    size_t len, off;
    int status;
    const char *ctype;
    int headers_sent;
};

typedef struct mb_sbuf {
    char *p;
    size_t len, cap;
} mb_sbuf;

static void mb__sb_printf(mb_sbuf *sb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void mb__sb_printf(mb_sbuf *sb, const char *fmt, ...)
{
    va_list ap;
    for (;;) {
        size_t room = sb->cap - sb->len;
        va_start(ap, fmt);
        int n = vsnprintf(sb->p ? sb->p + sb->len : NULL, room, fmt, ap);
        va_end(ap);
        if (n < 0)
            return;
        if ((size_t)n < room) {
            sb->len += (size_t)n;
            return;
        }
        size_t nc = (sb->cap ? sb->cap * 2 : 4096) + (size_t)n;
        char *np = realloc(sb->p, nc);
        if (!np)
            return;
        sb->p = np;
        sb->cap = nc;
    }
}

int mb_http_ws_path(const char *uri) { return 0; }

static int mb__respond(struct lws *wsi, mb_pss *pss, int status, const char *ctype, char *body, size_t len)
{
    struct mb_http *h = calloc(1, sizeof *h);
    if (!h) {
        free(body);
        return -1;
    }
    h->body = body;
    h->len = len;
    h->status = status;
    h->ctype = ctype;
    pss->h = h;
    lws_callback_on_writable(wsi);
    return 0;
}

static int mb__json(struct lws *wsi, mb_pss *pss, int status, json_t *j)
{
    size_t len;
    char *txt = mp_dump(j, 0, &len);
    json_decref(j);
    if (!txt)
        return -1;
    /* mp_dump leaves no headroom at offset 0 here, text starts at txt */
    return mb__respond(wsi, pss, status, "application/json", txt, len);
}

static char *mb__metrics(mb_broker *b, size_t *len)
{
    mb_sbuf sb = {0};
    mb_stats *st = &b->stats;
    size_t qf = 0, qb = 0;
    MB_MAP_FOREACH(b->sessions, e)
    {
        mb_session *s = mb_map_val(e);
        qf += s->q_count;
        qb += s->q_bytes;
    }
#define C(name, help, v)                                                                                               \
    mb__sb_printf(&sb, "# HELP mapbroker_%s %s\n# TYPE mapbroker_%s counter\nmapbroker_%s %llu\n", name, help, name,   \
                  name, (unsigned long long)(v))
#define G(name, help, v)                                                                                               \
    mb__sb_printf(&sb, "# HELP mapbroker_%s %s\n# TYPE mapbroker_%s gauge\nmapbroker_%s %llu\n", name, help, name,     \
                  name, (unsigned long long)(v))
    G("connections", "Open connections", st->connections_open);
    C("connections_total", "Connections accepted", st->connections_total);
    G("sessions", "Sessions (attached and awaiting resume)", mb_map_size(b->sessions));
    G("agents", "Registered agents", mb_map_size(b->agents));
    G("scopes", "Scopes", mb_map_size(b->scopes));
    C("frames_in_total", "WebSocket messages received", st->frames_in);
    C("frames_out_total", "WebSocket messages sent", st->frames_out);
    C("bytes_in_total", "Bytes received", st->bytes_in);
    C("bytes_out_total", "Bytes sent", st->bytes_out);
    C("requests_total", "JSON-RPC requests and notifications handled", st->requests);
    C("errors_total", "Error responses", st->errors);
    C("parse_errors_total", "Messages that were not valid JSON-RPC", st->parse_errors);
    C("messages_routed_total", "map/send messages routed", st->messages_routed);
    C("deliveries_total", "map/message deliveries", st->deliveries);
    C("delivery_failures_total", "Deliveries that failed", st->delivery_failures);
    C("events_total", "Events emitted", st->events_emitted);
    C("event_notifications_total", "map/event notifications queued", st->event_notifications);
    C("dropped_total", "Notifications dropped for slow consumers (queue overflow)", st->events_dropped);
    C("slow_consumers_closed_total", "Connections closed as slow consumers", st->slow_consumers_closed);
    C("oversize_closed_total", "Connections closed for oversize messages", st->oversize_closed);
    C("rate_limited_total", "Requests refused by the rate limit", st->rate_limited);
    C("turns_recorded_total", "Mail turns recorded", st->turns_recorded);
    C("conversations_created_total", "Mail conversations created", st->conversations_created);
    G("queue_frames", "Frames waiting in outbound queues", qf);
    G("queue_bytes", "Bytes waiting in outbound queues", qb);
    static const char *le[] = {"0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005",
                               "0.01",   "0.025",   "0.05",   "0.1",   "0.25",   "+Inf"};
    mb__sb_printf(&sb, "# HELP mapbroker_store_commit_seconds Store commit latency\n"
                       "# TYPE mapbroker_store_commit_seconds histogram\n");
    unsigned long long cum = 0;
    for (int i = 0; i < 12; i++) {
        cum += st->commit_hist[i];
        mb__sb_printf(&sb, "mapbroker_store_commit_seconds_bucket{le=\"%s\"} %llu\n", le[i], cum);
    }
    mb__sb_printf(&sb, "mapbroker_store_commit_seconds_sum %.6f\nmapbroker_store_commit_seconds_count %llu\n",
                  (double)st->commit_us_total / 1e6, (unsigned long long)st->commits);
#undef C
#undef G
    *len = sb.len;
    return sb.p;
}

int mb_http_on_request(mb_broker *b, struct lws *wsi, mb_pss *pss, const char *uri)
{
    if (!strcmp(uri, "/healthz")) {
        uint64_t seq = 0;
        char id[32];
        int ok = !b->store_failed && mst_event_last(b->store, &seq, id) == MST_OK;
        return mb__json(wsi, pss, ok ? 200 : 503,
                        json_pack("{s:s, s:{s:s, s:s, s:b}, s:I, s:I}", "status", ok ? "ok" : "unhealthy", "store",
                                  "backend", mst_name(b->store), "epoch", mst_epoch(b->store), "ok", ok, "uptimeMs",
                                  (json_int_t)(mb_now() - b->started_at), "connections",
                                  (json_int_t)b->stats.connections_open));
    }
    if (!strcmp(uri, "/metrics")) {
        size_t len;
        char *txt = mb__metrics(b, &len);
        if (!txt)
            return -1;
        return mb__respond(wsi, pss, 200, "text/plain; version=0.0.4", txt, len);
    }
    return mb__json(wsi, pss, 404, json_pack("{s:{s:s, s:s}}", "error", "code", "not_found", "message", "No such endpoint"));
}

int mb_http_on_writeable(mb_broker *b, struct lws *wsi, mb_pss *pss)
{
    struct mb_http *h = pss->h;
    if (!h)
        return 0;
    if (!h->headers_sent) {
        unsigned char hb[LWS_PRE + 1024], *start = hb + LWS_PRE, *p = start, *end = hb + sizeof hb - 1;
        if (lws_add_http_common_headers(wsi, (unsigned int)h->status, h->ctype, (lws_filepos_t)h->len, &p, end) ||
            lws_add_http_header_by_name(wsi, (const unsigned char *)"cache-control:", (const unsigned char *)"no-store",
                                        8, &p, end) ||
            lws_finalize_write_http_header(wsi, start, &p, end))
            return -1;
        h->headers_sent = 1;
        if (h->len) {
            lws_callback_on_writable(wsi);
            return 0;
        }
    }
    size_t left = h->len - h->off, n = left > 32768 ? 32768 : left;
    unsigned char *buf = malloc(LWS_PRE + n + 1);
    if (!buf)
        return -1;
    memcpy(buf + LWS_PRE, h->body + h->off, n);
    int last = n == left;
    int m = lws_write(wsi, buf + LWS_PRE, n, last ? LWS_WRITE_HTTP_FINAL : LWS_WRITE_HTTP);
    free(buf);
    if (m < (int)n)
        return -1;
    h->off += n;
    if (!last) {
        lws_callback_on_writable(wsi);
        return 0;
    }
    mb_http_on_close(b, wsi, pss);
    return lws_http_transaction_completed(wsi) ? -1 : 0;
}

void mb_http_on_close(mb_broker *b, struct lws *wsi, mb_pss *pss)
{
    if (!pss->h)
        return;
    free(pss->h->body);
    free(pss->h);
    pss->h = NULL;
}

int mb_http_on_body(mb_broker *b, struct lws *wsi, mb_pss *pss, const void *in, size_t len) { return 0; }
int mb_http_on_body_done(mb_broker *b, struct lws *wsi, mb_pss *pss) { return 0; }
