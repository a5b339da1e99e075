/* Plain HTTP on the MAP port: the REST API (/api/...), SSE observer streams,
 * the dashboard's static files, /healthz and /metrics (Prometheus text).
 * See docs/observers.md for the contract.
 * Responses are built whole, then written from HTTP_WRITEABLE in chunks. */
#include <libwebsockets.h>
#include <ctype.h>
#include <stdarg.h>
#include <strings.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "mail.h"
#include "compat.h"
#include "net.h"
#include "observe.h"

struct mb_http {
    char *body;
    size_t len, off;
    int status;
    const char *ctype;
    int headers_sent;
    /* a POST waiting for its body */
    char *post_path;
    char *in;
    size_t in_len;
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
    C("notification_errors_total", "Notifications whose handling failed (logged at warn)", st->notification_errors);
    C("mail_pushes_total", "mail/turn.received notifications queued", st->mail_pushes);
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

static int mb__builtin(mb_broker *b, struct lws *wsi, mb_pss *pss, const char *uri)
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
    size_t len;
    char *txt = mb__metrics(b, &len);
    if (!txt)
        return -1;
    return mb__respond(wsi, pss, 200, "text/plain; version=0.0.4", txt, len);
}

/* ---- request plumbing ---- */

static int mb__status_for(int code)
{
    switch (code) {
    case MP_INVALID_PARAMS: return 400;
    case MP_AUTH_REQUIRED:
    case MP_AUTH_FAILED:
    case MP_INVALID_CREDENTIALS:
    case MP_TOKEN_EXPIRED: return 401;
    case MP_PERMISSION_DENIED:
    case MP_MAIL_NOT_PARTICIPANT:
    case MP_MAIL_PERMISSION:
    case MP_MAIL_HISTORY_DENIED:
    case MP_MAIL_INVITATION_REQUIRED: return 403;
    case MP_METHOD_NOT_FOUND:
    case MP_AGENT_NOT_FOUND:
    case MP_SCOPE_NOT_FOUND:
    case MP_ADDRESS_NOT_FOUND:
    case MP_MAIL_CONV_NOT_FOUND:
    case MP_MAIL_TURN_NOT_FOUND:
    case MP_MAIL_THREAD_NOT_FOUND: return 404;
    case MP_MAIL_CONV_CLOSED:
    case MP_MAIL_ALREADY_JOINED: return 409;
    case MP_INTERNAL: return 500;
    default: return 400;
    }
}

/* A JSON error: {"error": {"code", "message", "field"?}}; code follows the
 * HTTP status, field (may be NULL) names the offending parameter. */
static int mb__error(struct lws *wsi, mb_pss *pss, int status, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static int mb__error(struct lws *wsi, mb_pss *pss, int status, const char *field, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    const char *code = status == 400   ? "bad_request"
                       : status == 401 ? "unauthorized"
                       : status == 403 ? "forbidden"
                       : status == 404 ? "not_found"
                       : status == 405 ? "method_not_allowed"
                       : status == 409 ? "conflict"
                       : status == 503 ? "unavailable"
                                       : "internal";
    json_t *e = json_pack("{s:{s:s, s:s}}", "error", "code", code, "message", msg);
    if (!e) /* message not valid UTF-8 (echoed input): say less */
        e = json_pack("{s:{s:s, s:s}}", "error", "code", code, "message", "invalid request");
    if (field && *field && strcmp(field, code))
        json_object_set_new(json_object_get(e, "error"), "field", json_string(field));
    return mb__json(wsi, pss, status, e);
}

/* %XX-decode a path segment or query value in place; -1 on malformed input. */
static int mb__urldecode(char *s)
{
    char *o = s;
    for (char *p = s; *p; p++) {
        if (*p == '%') {
            int hi, lo;
            if (!p[1] || !p[2] || sscanf(p + 1, "%1x%1x", (unsigned *)&hi, (unsigned *)&lo) != 2)
                return -1;
            char c = (char)(hi * 16 + lo);
            if (!c)
                return -1;
            *o++ = c;
            p += 2;
        } else {
            *o++ = *p;
        }
    }
    *o = '\0';
    return 0;
}

/* Query argument `name`, %-decoded into buf; NULL (buf untouched) if absent.
 * Reads the fragments directly: lws_get_urlarg_by_name() scribbles on its
 * buffer even when the name is not there. */
static const char *mb__arg(struct lws *wsi, const char *name, char *buf, int len)
{
    char frag[1024];
    size_t nl = strlen(name);
    for (int i = 0;; i++) {
        int n = lws_hdr_copy_fragment(wsi, frag, sizeof frag, WSI_TOKEN_HTTP_URI_ARGS, i);
        if (n < 0)
            return NULL;
        if ((size_t)n > nl && !strncmp(frag, name, nl) && frag[nl] == '=') {
            if ((int)strlen(frag + nl + 1) >= len)
                return NULL;
            memcpy(buf, frag + nl + 1, strlen(frag + nl + 1) + 1);
            return mb__urldecode(buf) ? NULL : buf;
        }
    }
}

static int mb__loopback(const char *ip)
{
    return !strncmp(ip, "127.", 4) || !strcmp(ip, "::1") || !strncmp(ip, "::ffff:127.", 11);
}

/* Who is asking: fills a pseudo-session used for the MAP handlers' checks.
 * Returns 0, or sends a 401 and returns 1. */
static int mb__http_auth(mb_broker *b, struct lws *wsi, mb_pss *pss, mb_session *who)
{
    memset(who, 0, sizeof *who);
    who->b = b;
    who->state = MB_READY;
    snprintf(who->peer, sizeof who->peer, "%s", pss->ip);
    snprintf(who->session_id, sizeof who->session_id, "http");
    if (!b->auth) {
        if (strcmp(b->cfg->anonymous, "any") && !(strcmp(b->cfg->anonymous, "loopback") == 0 && mb__loopback(pss->ip)))
            return mb__error(wsi, pss, 401, NULL, "anonymous access is not allowed from %s", pss->ip), 1;
        /* open development mode: the local operator */
        snprintf(who->participant_id, sizeof who->participant_id, "http");
        snprintf(who->principal.id, sizeof who->principal.id, "anonymous");
        who->principal.operator_ = 1;
        who->authenticated = 1;
        return 0;
    }
    char hdr[1024] = "", tok[1024] = "";
    const char *cred = NULL;
    if (lws_hdr_copy(wsi, hdr, sizeof hdr, WSI_TOKEN_HTTP_AUTHORIZATION) > 0 && !strncasecmp(hdr, "Bearer ", 7))
        cred = hdr + 7;
    else if (mb__arg(wsi, "access_token", tok, sizeof tok)) /* EventSource cannot set headers */
        cred = tok;
    if (!cred)
        return mb__error(wsi, pss, 401, NULL, "missing credential (Authorization: Bearer KEY)"), 1;
    const char *code;
    char msg[256];
    if (mb_auth_verify(b, who, "bearer", cred, NULL, &who->principal, &code, msg, sizeof msg))
        return mb__error(wsi, pss, 401, NULL, "%s", msg), 1;
    who->authenticated = 1;
    snprintf(who->participant_id, sizeof who->participant_id, "%s", who->principal.id);
    return 0;
}

/* Run a MAP method as `who`; on success returns its result (new ref), else
 * answers the HTTP error and returns NULL. params is stolen. */
static json_t *mb__call(mb_broker *b, struct lws *wsi, mb_pss *pss, mb_session *who, const char *method, json_t *params)
{
    const mb_method *m = mb_method_find(method);
    mb_ctx cx = {.b = b, .s = who, .method = method, .params = params};
    mp_err_clear(&cx.err);
    int rc = !m ? MB_FAIL(&cx, MP_METHOD_NOT_FOUND, NULL, "no handler for %s", method)
                : mb_auth_check_method(&cx, m) ? cx.err.code
                                               : m->fn(&cx);
    json_decref(params);
    if (cx.after)
        cx.after(NULL, cx.after_arg);
    if (rc) {
        json_decref(cx.result);
        mb__error(wsi, pss, mb__status_for(cx.err.code), cx.err.field[0] ? cx.err.field : NULL, "%s", cx.err.message);
        return NULL;
    }
    return cx.result ? cx.result : json_object();
}

static int mb__reply(struct lws *wsi, mb_pss *pss, json_t *result)
{
    if (!result)
        return 0; /* error already answered */
    return mb__json(wsi, pss, 200, result);
}

static int mb__int_arg(struct lws *wsi, const char *name, long long def, long long min, long long max, long long *out)
{
    char buf[32];
    *out = def;
    if (!mb__arg(wsi, name, buf, sizeof buf))
        return 0;
    char *end;
    long long v = strtoll(buf, &end, 10);
    if (end == buf || *end || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

/* ---- static dashboard ---- */

static const char *mb__static_dir(mb_broker *b)
{
    return *b->cfg->static_dir ? b->cfg->static_dir : MB_DASHBOARD_DIR;
}

static int mb__static(mb_broker *b, struct lws *wsi, mb_pss *pss, const char *name)
{
    for (const char *p = name; *p; p++)
        if (!(isalnum((unsigned char)*p) || *p == '.' || *p == '-' || *p == '_') || (p[0] == '.' && p[1] == '.'))
            return mb__error(wsi, pss, 404, NULL, "no such file");
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", mb__static_dir(b), name);
    FILE *f = fopen(path, "rb");
    if (!f)
        return mb__error(wsi, pss, 404, NULL, "no such file: %s", name);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = n >= 0 && n < (8 << 20) ? malloc((size_t)n + 1) : NULL;
    if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n) {
        fclose(f);
        free(buf);
        return mb__error(wsi, pss, 500, NULL, "cannot read %s", name);
    }
    fclose(f);
    const char *ext = strrchr(name, '.');
    const char *ct = !ext                     ? "application/octet-stream"
                     : !strcmp(ext, ".html")  ? "text/html; charset=utf-8"
                     : !strcmp(ext, ".js")    ? "text/javascript; charset=utf-8"
                     : !strcmp(ext, ".css")   ? "text/css; charset=utf-8"
                     : !strcmp(ext, ".svg")   ? "image/svg+xml"
                     : !strcmp(ext, ".png")   ? "image/png"
                     : !strcmp(ext, ".json")  ? "application/json"
                                              : "application/octet-stream";
    return mb__respond(wsi, pss, 200, ct, buf, (size_t)n);
}

/* ---- streams ---- */

static int mb__sse_open(mb_broker *b, struct lws *wsi, mb_pss *pss, mb_session *who, const char *conv)
{
    unsigned char hb[LWS_PRE + 512], *start = hb + LWS_PRE, *p = start, *end = hb + sizeof hb - 1;
    if (lws_add_http_common_headers(wsi, HTTP_STATUS_OK, "text/event-stream", LWS_ILLEGAL_HTTP_CONTENT_LEN, &p, end) ||
        lws_add_http_header_by_name(wsi, (const unsigned char *)"cache-control:", (const unsigned char *)"no-store", 8,
                                    &p, end) ||
        lws_finalize_write_http_header(wsi, start, &p, end))
        return -1;
    mb_session *s = mb_session_new(b, wsi, pss->ip, lws_is_ssl(wsi));
    if (!s)
        return -1;
    s->principal = who->principal;
    memset(&who->principal, 0, sizeof who->principal);
    s->authenticated = who->authenticated;
    snprintf(s->participant_id, sizeof s->participant_id, "%s", who->participant_id);
    pss->s = s;
    lws_set_timeout(wsi, NO_PENDING_TIMEOUT, 0); /* a stream, not a transaction: no lws deadline */
    /* Last-Event-ID ("<epoch>:<seq>") wins over ?after= */
    char lei[128] = "", after[128] = "", epoch[128] = "";
    const char *a = mb__arg(wsi, "after", after, sizeof after);
    const char *ep = mb__arg(wsi, "epoch", epoch, sizeof epoch);
    if (lws_hdr_custom_copy(wsi, lei, sizeof lei, "last-event-id:", 14) > 0) {
        char *colon = strrchr(lei, ':');
        if (colon) {
            *colon = '\0';
            snprintf(epoch, sizeof epoch, "%s", lei);
            snprintf(after, sizeof after, "%s", colon + 1);
            a = after;
            ep = epoch;
        }
    }
    mb_info(s->session_id, "SSE observer from %s on %s", pss->ip, conv ? conv : "(all conversations)");
    return mb_observe_open(b, s, conv, a, ep, 1) ? -1 : 0;
}

int mb_http_ws_path(const char *uri) { return !strcmp(uri, "/observe"); }

int mb_http_ws_observe(mb_broker *b, struct lws *wsi, mb_pss *pss)
{
    mb_session who;
    if (mb__http_auth(b, wsi, pss, &who)) {
        mb_http_on_close(b, wsi, pss); /* the 401 body is not sent on a websocket */
        mb_auth_principal_clear(&who.principal);
        return -1;
    }
    mb_session *s = pss->s;
    s->principal = who.principal;
    s->authenticated = who.authenticated;
    snprintf(s->participant_id, sizeof s->participant_id, "%s", who.participant_id);
    char conv[MB_ID_BUF + 8] = "", after[32] = "", epoch[64] = "";
    const char *c = mb__arg(wsi, "conversation", conv, sizeof conv);
    const char *a = mb__arg(wsi, "after", after, sizeof after);
    const char *e = mb__arg(wsi, "epoch", epoch, sizeof epoch);
    mb_info(s->session_id, "websocket observer from %s on %s", pss->ip, c ? c : "(all conversations)");
    return mb_observe_open(b, s, c, a, e, 0) ? -1 : 0;
}

/* ---- routes ---- */

static json_t *mb__agent_node(mb_agent *a, int depth)
{
    json_t *n = json_pack("{s:O, s:[]}", "agent", mb_agent_doc(a), "children");
    if (depth < 64)
        MB_MAP_FOREACH(a->children, e) json_array_append_new(json_object_get(n, "children"), mb__agent_node(mb_map_val(e), depth + 1));
    return n;
}

struct mb__msgs {
    const char *agent;
    json_t *out;
};

static int mb__msgs_cb(void *arg, const mb_event *ev)
{
    struct mb__msgs *m = arg;
    const char *dir = NULL;
    if (!strcmp(ev->type, "message_sent") && ev->source && !strcmp(ev->source, m->agent))
        dir = "sent";
    else if (!strcmp(ev->type, "message_delivered")) {
        json_t *to = json_array_get(json_object_get(mb_event_data((mb_event *)ev), "deliveredTo"), 0);
        if (json_is_string(to) && !strcmp(json_string_value(to), m->agent))
            dir = "received";
    }
    json_t *msg = dir ? json_object_get(mb_event_data((mb_event *)ev), "message") : NULL;
    if (msg)
        json_array_append_new(m->out, json_pack("{s:s, s:s, s:I, s:O}", "direction", dir, "eventId", ev->id,
                                                "timestamp", (json_int_t)ev->ts, "message", msg));
    return 0;
}

static int mb__route_conversations(mb_broker *b, struct lws *wsi, mb_pss *pss, mb_session *who, int method,
                                   char *rest)
{
    /* rest: "" | "<id>" | "<id>/<sub>" */
    if (!*rest) {
        if (method != LWSHUMETH_GET)
            return mb__error(wsi, pss, 405, NULL, "use GET");
        char st[64], ty[64], part[MB_ID_BUF + 8], parent[MB_ID_BUF + 8], cur[MB_ID_BUF + 8];
        long long limit;
        if (mb__int_arg(wsi, "limit", 50, 1, 1000, &limit))
            return mb__error(wsi, pss, 400, "limit", "limit must be an integer from 1 to 1000");
        json_t *f = json_object();
        if (mb__arg(wsi, "status", st, sizeof st))
            json_object_set_new(f, "status", json_pack("[s]", st));
        if (mb__arg(wsi, "type", ty, sizeof ty))
            json_object_set_new(f, "type", json_pack("[s]", ty));
        if (mb__arg(wsi, "participant", part, sizeof part))
            json_object_set_new(f, "participantId", json_string(part));
        if (mb__arg(wsi, "parent", parent, sizeof parent))
            json_object_set_new(f, "parentConversationId", json_string(parent));
        json_t *p = json_pack("{s:o, s:I}", "filter", f, "limit", (json_int_t)limit);
        if (mb__arg(wsi, "cursor", cur, sizeof cur))
            json_object_set_new(p, "cursor", json_string(cur));
        return mb__reply(wsi, pss, mb__call(b, wsi, pss, who, "mail/list", p));
    }
    char *sub = strchr(rest, '/');
    if (sub)
        *sub++ = '\0';
    if (mb__urldecode(rest) || !mp_id_valid(rest))
        return mb__error(wsi, pss, 400, "id", "malformed conversation id");
    if (!sub || !*sub) {
        if (method != LWSHUMETH_GET)
            return mb__error(wsi, pss, 405, NULL, "use GET");
        json_t *r = mb__call(b, wsi, pss, who, "mail/get",
                             json_pack("{s:s, s:{s:b, s:b, s:b}}", "conversationId", rest, "include", "participants", 1,
                                       "threads", 1, "children", 1));
        return mb__reply(wsi, pss, r);
    }
    if (!strcmp(sub, "close")) {
        if (method != LWSHUMETH_POST)
            return mb__error(wsi, pss, 405, NULL, "use POST");
        json_t *body = pss->h && pss->h->in_len ? json_loadb(pss->h->in, pss->h->in_len, 0, NULL) : json_object();
        if (!json_is_object(body)) {
            json_decref(body);
            return mb__error(wsi, pss, 400, "body", "body must be a JSON object {reason?, summary?}");
        }
        json_object_set_new(body, "conversationId", json_string(rest));
        return mb__reply(wsi, pss, mb__call(b, wsi, pss, who, "mail/close", body));
    }
    if (method != LWSHUMETH_GET)
        return mb__error(wsi, pss, 405, NULL, "use GET");
    if (!strcmp(sub, "stream")) {
        mb_conv *c = mb_conv_get(b, rest);
        if (!c)
            return mb__error(wsi, pss, 404, NULL, "conversation not found: %s", rest);
        return mb__sse_open(b, wsi, pss, who, rest);
    }
    if (!strcmp(sub, "threads"))
        return mb__reply(wsi, pss, mb__call(b, wsi, pss, who, "mail/thread/list",
                                            json_pack("{s:s, s:i}", "conversationId", rest, "limit", 1000)));
    if (!strcmp(sub, "tree"))
        return mb__reply(wsi, pss, mb__call(b, wsi, pss, who, "x-mapbroker/mail/tree", json_pack("{s:s}", "conversationId", rest)));
    if (!strcmp(sub, "turns")) {
        long long after, limit;
        char order[8] = "asc";
        if (mb__int_arg(wsi, "after", 0, 0, INT64_MAX, &after))
            return mb__error(wsi, pss, 400, "after", "after must be a turn sequence number");
        if (mb__int_arg(wsi, "limit", 100, 1, 1000, &limit))
            return mb__error(wsi, pss, 400, "limit", "limit must be an integer from 1 to 1000");
        mb__arg(wsi, "order", order, sizeof order);
        if (strcmp(order, "asc") && strcmp(order, "desc"))
            return mb__error(wsi, pss, 400, "order", "order must be asc or desc");
        /* reuse mail/get for existence + read permission */
        json_t *chk = mb__call(b, wsi, pss, who, "mail/get", json_pack("{s:s}", "conversationId", rest));
        if (!chk)
            return 0;
        json_decref(chk);
        mb_conv *c = mb_conv_get(b, rest);
        int more = 0;
        json_t *turns = mb_mail_turn_page(b, who, c, (uint64_t)after, (size_t)limit, !strcmp(order, "desc"), &more);
        json_t *r = json_pack("{s:o, s:b}", "turns", turns, "hasMore", more);
        if (json_array_size(turns))
            json_object_set(r, "nextCursor", json_object_get(json_array_get(turns, json_array_size(turns) - 1), "seq"));
        return mb__reply(wsi, pss, r);
    }
    return mb__error(wsi, pss, 404, NULL, "no such endpoint");
}

static int mb__route_agents(mb_broker *b, struct lws *wsi, mb_pss *pss, mb_session *who, int method, char *rest)
{
    if (method != LWSHUMETH_GET)
        return mb__error(wsi, pss, 405, NULL, "use GET");
    if (!*rest) {
        char st[64], role[MB_ID_BUF], cur[MB_ID_BUF + 8];
        long long limit;
        if (mb__int_arg(wsi, "limit", 100, 1, 10000, &limit))
            return mb__error(wsi, pss, 400, "limit", "limit must be an integer from 1 to 10000");
        json_t *f = json_object();
        if (mb__arg(wsi, "state", st, sizeof st))
            json_object_set_new(f, "states", json_pack("[s]", st));
        if (mb__arg(wsi, "role", role, sizeof role))
            json_object_set_new(f, "roles", json_pack("[s]", role));
        json_t *p = json_pack("{s:o, s:I}", "filter", f, "limit", (json_int_t)limit);
        if (mb__arg(wsi, "cursor", cur, sizeof cur))
            json_object_set_new(p, "cursor", json_string(cur));
        json_t *r = mb__call(b, wsi, pss, who, "map/agents/list", p);
        if (r)
            json_object_set_new(r, "hasMore", json_boolean(json_object_get(r, "nextCursor") != NULL));
        return mb__reply(wsi, pss, r);
    }
    if (!strcmp(rest, "tree")) {
        json_t *roots = json_array();
        MB_MAP_FOREACH(b->agents, e)
        {
            mb_agent *a = mb_map_val(e);
            if (!a->parent || !mb_agent_get(b, a->parent))
                json_array_append_new(roots, mb__agent_node(a, 0));
        }
        return mb__json(wsi, pss, 200, json_pack("{s:o}", "roots", roots));
    }
    char *sub = strchr(rest, '/');
    if (sub)
        *sub++ = '\0';
    if (mb__urldecode(rest) || !mp_id_valid(rest))
        return mb__error(wsi, pss, 400, "id", "malformed agent id");
    if (!sub || !*sub)
        return mb__reply(wsi, pss, mb__call(b, wsi, pss, who, "map/agents/get", json_pack("{s:s}", "agentId", rest)));
    if (!strcmp(sub, "messages")) {
        if (!mb_agent_get(b, rest))
            return mb__error(wsi, pss, 404, NULL, "agent not found: %s", rest);
        long long limit;
        char before[64] = "";
        if (mb__int_arg(wsi, "limit", 50, 1, 1000, &limit))
            return mb__error(wsi, pss, 400, "limit", "limit must be an integer from 1 to 1000");
        mb__arg(wsi, "before", before, sizeof before);
        struct mb__msgs m = {.agent = rest, .out = json_array()};
        uint64_t from = b->event_seq > b->hist_len ? b->event_seq - b->hist_len : 0;
        mb_events_scan(b, from, mb__msgs_cb, &m);
        /* newest first, before = exclusive event-id cursor */
        json_t *page = json_array();
        int more = 0;
        for (size_t i = json_array_size(m.out); i-- > 0;) {
            json_t *x = json_array_get(m.out, i);
            if (*before && strcmp(json_string_value(json_object_get(x, "eventId")), before) >= 0)
                continue;
            if ((long long)json_array_size(page) == limit) {
                more = 1;
                break;
            }
            json_array_append(page, x);
        }
        json_decref(m.out);
        return mb__json(wsi, pss, 200, json_pack("{s:o, s:b}", "messages", page, "hasMore", more));
    }
    return mb__error(wsi, pss, 404, NULL, "no such endpoint");
}

static int mb__route(mb_broker *b, struct lws *wsi, mb_pss *pss, int method, const char *uri)
{
    if (!strcmp(uri, "/healthz") || !strcmp(uri, "/metrics"))
        return mb__builtin(b, wsi, pss, uri);
    if (!strcmp(uri, "/") || !strcmp(uri, "/index.html"))
        return mb__static(b, wsi, pss, "index.html");
    if (!strncmp(uri, "/dashboard/", 11))
        return mb__static(b, wsi, pss, uri + 11);
    if (strncmp(uri, "/api/", 5))
        return mb__error(wsi, pss, 404, NULL, "no such endpoint (see /api/conversations, /api/agents, /healthz)");
    mb_session who;
    if (mb__http_auth(b, wsi, pss, &who))
        return 0;
    char path[1024];
    snprintf(path, sizeof path, "%s", uri + 5);
    int rc;
    if (!strcmp(path, "stream")) {
        rc = mb__sse_open(b, wsi, pss, &who, NULL);
    } else if (!strcmp(path, "conversations") || !strncmp(path, "conversations/", 14)) {
        rc = mb__route_conversations(b, wsi, pss, &who, method, path + (path[13] ? 14 : 13));
    } else if (!strcmp(path, "agents") || !strncmp(path, "agents/", 7)) {
        rc = mb__route_agents(b, wsi, pss, &who, method, path + (path[6] ? 7 : 6));
    } else if (!strcmp(path, "audit")) {
        long long limit;
        char before[64];
        if (mb__int_arg(wsi, "limit", 100, 1, 1000, &limit))
            rc = mb__error(wsi, pss, 400, "limit", "limit must be an integer from 1 to 1000");
        else {
            json_t *p = json_pack("{s:I}", "limit", (json_int_t)limit);
            if (mb__arg(wsi, "before", before, sizeof before))
                json_object_set_new(p, "before", json_string(before));
            rc = mb__reply(wsi, pss, mb__call(b, wsi, pss, &who, "x-mapbroker/audit/list", p));
        }
    } else {
        rc = mb__error(wsi, pss, 404, NULL, "no such endpoint: %s", uri);
    }
    mb_auth_principal_clear(&who.principal);
    return rc;
}

int mb_http_on_request(mb_broker *b, struct lws *wsi, mb_pss *pss, const char *uri)
{
    char *u = NULL;
    int ulen = 0;
    int method = lws_http_get_uri_and_method(wsi, &u, &ulen);
    if (method == LWSHUMETH_POST) {
        /* wait for the body; answer in BODY_COMPLETION */
        struct mb_http *h = calloc(1, sizeof *h);
        if (!h)
            return -1;
        h->post_path = strdup(uri);
        pss->h = h;
        return 0;
    }
    if (method != LWSHUMETH_GET && method != LWSHUMETH_HEAD)
        return mb__error(wsi, pss, 405, NULL, "only GET and POST are supported");
    return mb__route(b, wsi, pss, LWSHUMETH_GET, uri);
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

int mb_http_on_body(mb_broker *b, struct lws *wsi, mb_pss *pss, const void *in, size_t len)
{
    struct mb_http *h = pss->h;
    if (!h || !h->post_path || !len || !in)
        return 0;
    if (h->in_len + len > 65536)
        return -1; /* bodies here are tiny; refuse anything else */
    char *n = realloc(h->in, h->in_len + len + 1);
    if (!n)
        return -1;
    memcpy(n + h->in_len, in, len);
    h->in = n;
    h->in_len += len;
    return 0;
}

int mb_http_on_body_done(mb_broker *b, struct lws *wsi, mb_pss *pss)
{
    struct mb_http *h = pss->h;
    if (!h || !h->post_path)
        return 0;
    char *path = h->post_path;
    h->post_path = NULL;
    /* keep the body until the route has read it, then start a fresh response */
    struct mb_http *req = h;
    pss->h = NULL;
    pss->h = req; /* the route reads pss->h->in; mb__respond replaces pss->h */
    int rc = mb__route(b, wsi, pss, LWSHUMETH_POST, path);
    if (pss->h != req) { /* a response was set up: the request state can go */
        free(req->in);
        free(req->body);
        free(req);
    }
    free(path);
    return rc;
}

/* -- interop (#20): the WebSocket upgrade reads its ?token= with the same parser -- */
const char *mb_http_query_arg(struct lws *wsi, const char *name, char *buf, int len)
{
    return mb__arg(wsi, name, buf, len);
}
