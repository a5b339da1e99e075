/* mapclient.c - libmapclient implementation.
 *
 * Strategy
 * --------
 * One lws context per client, one client wsi at a time. lws runs only inside
 * mc__pump(), which every blocking call and mc_service() use. Inside lws
 * callbacks the library does bookkeeping only: responses complete their
 * pending record (internal hooks run right there; user callbacks are queued),
 * notifications are appended to an inbox. User callbacks run from the inbox in
 * mc_service() at top level, so user code never runs inside an lws callback and
 * may use blocking calls freely.
 *
 * Outbound: a FIFO of frames, each malloc'd with LWS_PRE headroom by mp_dump();
 * one lws_write per CLIENT_WRITEABLE, re-arming while frames remain. Frames
 * larger than MC__CHUNK go out as several WebSocket fragments, one per
 * WRITEABLE (lws_write_ws_flags). Inbound: fragments are reassembled into one
 * buffer whose size is checked against max_message before every append.
 *
 * Reconnect and catch-up: each subscription remembers the eventId of the last
 * event it queued for delivery (its cursor). After a new session is up, every
 * subscription is marked catching_up, re-created (unless the broker resumed the
 * session and still has it), and replayed with map/replay {afterEventId: cursor,
 * filter} page by page. Live map/event notifications that arrive meanwhile are
 * parked on the subscription and released after the last page. Whatever the
 * source, an event is queued only if its eventId sorts after the cursor, so a
 * replayed event that also arrives live (or a page that restarts from the
 * oldest retained event because the cursor is unknown to a restarted broker)
 * is delivered once. ULID eventIds sort in emission order (MAP.md §2, §16.5).
 */
#include "mapclient.h"

#include <libwebsockets.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mp_json.h"
#include "mp_rpc.h"
#include "mp_ulid.h"

#define MC__CHUNK (64 * 1024)
#define MC__DEFAULT_URL "ws://127.0.0.1:7420/"
#define MC__REPLAY_PAGE 500
#define MC__ORPHANS_MAX 4096
#define MC__EID_MAX 128

/* ---- small types ---- */

typedef struct mc__frame {
    struct mc__frame *next;
    char *mem; /* LWS_PRE headroom + text */
    size_t len, off;
} mc__frame;

typedef struct mc__sync {
    int done;
    int rc;
    json_t *result;
    mp_err err;
} mc__sync;

typedef struct mc__pending mc__pending;
typedef void (*mc__hook_fn)(mc_client *c, mc__pending *p, json_t *result, const mp_err *err);

struct mc__pending {
    mc__pending *next;
    long long id;
    int64_t deadline_us;
    int internal;     /* part of the handshake: sent at once, dropped on disconnect */
    int sent;         /* written to (queued for) the current connection */
    json_t *req;      /* the request until it is queued */
    mc__hook_fn hook; /* runs inside the receive path */
    void *hook_arg;
    mc__sync *sync;   /* blocking caller waiting on this */
    mc_reply_cb cb;   /* async user callback (run from mc_service) */
    void *cb_arg;
};

enum mc__item_kind { MC__I_MESSAGE = 1, MC__I_EVENT, MC__I_NOTIFY, MC__I_REPLY, MC__I_STATE };

typedef struct mc__item {
    struct mc__item *next;
    int kind;
    json_t *j;          /* message / envelope / params / result */
    char *method;       /* NOTIFY */
    unsigned sub_lid;   /* EVENT */
    int replayed;       /* EVENT */
    mc_reply_cb cb;     /* REPLY */
    void *arg;
    int is_err;         /* REPLY */
    mp_err err;         /* REPLY */
    mc_state state;     /* STATE */
    char detail[128];   /* STATE */
} mc__item;

struct mc_sub {
    mc_sub *next;
    unsigned lid;
    char *server_id;
    json_t *filter;        /* always an object */
    mc_event_cb cb;
    void *arg;
    char last_eid[MC__EID_MAX];
    int64_t created_ms;    /* wall clock when first subscribed (replay start if no event seen) */
    int restore;           /* needs re-subscribe / catch-up in this handshake */
    int catching_up;
    mc__item *park_head, *park_tail; /* live events held during catch-up */
};

typedef struct mc__orphan {
    struct mc__orphan *next;
    json_t *params;
} mc__orphan;

struct mc_client {
    /* options (owned copies) */
    char *url, *ca_file, *auth_method, *auth_token, *name, *agent_id_opt, *agent_name, *agent_role, *agent_parent;
    json_t *agent_metadata;
    int insecure, register_agent, reconnect;
    mc_ptype ptype;
    int backoff_initial_ms, backoff_max_ms, connect_timeout_ms;
    size_t max_message;
    mc_options cbs; /* callback fields only */

    /* parsed URL */
    char host[256], path[1024];
    int port, tls;

    struct lws_context *ctx;
    struct lws *wsi;
    int link_up;       /* an attempt is in progress or established */
    uintptr_t gen;     /* attempt number, stored as each wsi's opaque user data */
    int want_close;    /* close after the queue drains */
    int destroying;
    lws_sorted_usec_list_t wake;

    mc_state state;
    int ever_ready;
    int closed;        /* mc_close called: no reconnect */
    unsigned connects;
    int backoff_ms;
    int64_t next_attempt_us;
    int64_t attempt_deadline_us;
    mp_err hs_err;     /* why the current handshake failed */
    int hs_failed;

    /* session */
    json_t *connect_result;
    char *session_id, *participant_id, *resume_token, *agent_id;
    int resumed;

    /* I/O */
    mc__frame *out_head, *out_tail;
    char *rx;
    size_t rx_len, rx_cap;
    int rx_overflow;

    long long next_id;
    mc__pending *pending;
    mc__item *in_head, *in_tail;
    mc_sub *subs;
    unsigned next_lid;
    mc__orphan *orphans;
    size_t norphans;
    int dispatching;
};

static int64_t mc__now_us(void) { return mp_mono_us(); }

static char *mc__dup(const char *s) { return s ? strdup(s) : NULL; }

static int mc__fail(mp_err *err, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int mc__fail(mp_err *err, int code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        mp_err_vset(err, code, NULL, fmt, ap);
        va_end(ap);
    }
    return code;
}

const char *mc_strerror(int code)
{
    switch (code) {
    case 0: return "success";
    case MC_ERR_USAGE: return "invalid argument";
    case MC_ERR_CONNECT: return "cannot connect";
    case MC_ERR_TIMEOUT: return "timed out";
    case MC_ERR_CLOSED: return "connection closed";
    case MC_ERR_PROTOCOL: return "protocol error";
    case MC_ERR_NOMEM: return "out of memory";
    case MP_PARSE_ERROR: return "parse error";
    case MP_INVALID_REQUEST: return "invalid request";
    case MP_METHOD_NOT_FOUND: return "method not found";
    case MP_INVALID_PARAMS: return "invalid params";
    case MP_INTERNAL: return "internal error";
    case MP_AUTH_REQUIRED: return "authentication required";
    case MP_AUTH_FAILED: return "authentication failed";
    case MP_TOKEN_EXPIRED: return "token expired";
    case MP_PERMISSION_DENIED: return "permission denied";
    case MP_INVALID_CREDENTIALS: return "invalid credentials";
    case MP_ADDRESS_NOT_FOUND: return "address not found";
    case MP_AGENT_NOT_FOUND: return "agent not found";
    case MP_SCOPE_NOT_FOUND: return "scope not found";
    case MP_DELIVERY_FAILED: return "delivery failed";
    case MP_AGENT_EXISTS: return "agent already exists";
    case MP_STATE_INVALID: return "agent state invalid";
    case MP_TERMINATED: return "agent terminated";
    case MP_MAIL_CONV_NOT_FOUND: return "conversation not found";
    case MP_MAIL_CONV_CLOSED: return "conversation closed";
    case MP_MAIL_NOT_PARTICIPANT: return "not a participant";
    default: return code >= 10000 && code < 11000 ? "mail error" : "error";
    }
}

/* ---- state & inbox ---- */

static void mc__inbox_push(mc_client *c, mc__item *it)
{
    if (c->in_tail)
        c->in_tail->next = it;
    else
        c->in_head = it;
    c->in_tail = it;
}

static void mc__item_free(mc__item *it)
{
    if (!it)
        return;
    json_decref(it->j);
    free(it->method);
    free(it);
}

static int mc__debug(void)
{
    static int d = -1;
    if (d < 0) {
        const char *e = getenv("MC_DEBUG");
        d = e && *e && strcmp(e, "0");
    }
    return d;
}

static void mc__set_state(mc_client *c, mc_state st, const char *detail)
{
    if (mc__debug())
        fprintf(stderr, "[mapclient] state %d -> %d (%s) gen %lu\n", (int)c->state, (int)st, detail ? detail : "",
                (unsigned long)c->gen);
    if (c->state == st)
        return;
    c->state = st;
    if (!c->cbs.on_state || c->destroying)
        return;
    mc__item *it = calloc(1, sizeof *it);
    if (!it)
        return;
    it->kind = MC__I_STATE;
    it->state = st;
    snprintf(it->detail, sizeof it->detail, "%s", detail ? detail : "");
    mc__inbox_push(c, it);
}

/* ---- outbound ---- */

static int mc__enqueue_json(mc_client *c, json_t *msg)
{
    size_t len;
    char *mem = mp_dump(msg, LWS_PRE, &len);
    if (!mem)
        return MC_ERR_NOMEM;
    mc__frame *f = calloc(1, sizeof *f);
    if (!f) {
        free(mem);
        return MC_ERR_NOMEM;
    }
    f->mem = mem;
    f->len = len;
    if (c->out_tail)
        c->out_tail->next = f;
    else
        c->out_head = f;
    c->out_tail = f;
    if (c->wsi)
        lws_callback_on_writable(c->wsi);
    return 0;
}

static void mc__out_clear(mc_client *c)
{
    while (c->out_head) {
        mc__frame *f = c->out_head;
        c->out_head = f->next;
        free(f->mem);
        free(f);
    }
    c->out_tail = NULL;
}

static json_t *mc__build_request(long long id, const char *method, json_t *params)
{
    json_t *o = json_object();
    json_object_set_new(o, "jsonrpc", json_string("2.0"));
    json_object_set_new(o, "id", json_integer(id));
    json_object_set_new(o, "method", json_string(method));
    if (params)
        json_object_set_new(o, "params", params);
    return o;
}

/* Queue the request of p on the current connection. */
static int mc__send_pending(mc_client *c, mc__pending *p)
{
    int rc = mc__enqueue_json(c, p->req);
    if (rc)
        return rc;
    json_decref(p->req);
    p->req = NULL;
    p->sent = 1;
    return 0;
}

static mc__pending *mc__pending_new(mc_client *c, const char *method, json_t *params, int timeout_ms)
{
    mc__pending *p = calloc(1, sizeof *p);
    if (!p) {
        json_decref(params);
        return NULL;
    }
    p->id = ++c->next_id;
    p->req = mc__build_request(p->id, method, params);
    if (!p->req) {
        free(p);
        return NULL;
    }
    p->deadline_us = mc__now_us() + (int64_t)(timeout_ms > 0 ? timeout_ms : 30000) * 1000;
    p->next = c->pending;
    c->pending = p;
    return p;
}

static void mc__pending_unlink(mc_client *c, mc__pending *p)
{
    for (mc__pending **pp = &c->pending; *pp; pp = &(*pp)->next)
        if (*pp == p) {
            *pp = p->next;
            return;
        }
}

/* Deliver the outcome of a request and free the record (already unlinked). */
static void mc__complete(mc_client *c, mc__pending *p, json_t *result, const mp_err *err)
{
    if (p->hook)
        p->hook(c, p, result, err);
    if (p->sync) {
        p->sync->done = 1;
        if (err) {
            p->sync->rc = err->code ? err->code : MC_ERR_PROTOCOL;
            p->sync->err = *err;
        } else {
            p->sync->rc = 0;
            p->sync->result = json_incref(result);
        }
    } else if (p->cb && !c->destroying) {
        mc__item *it = calloc(1, sizeof *it);
        if (it) {
            it->kind = MC__I_REPLY;
            it->cb = p->cb;
            it->arg = p->cb_arg;
            if (err) {
                it->is_err = 1;
                it->err = *err;
            } else {
                it->j = json_incref(result);
            }
            mc__inbox_push(c, it);
        }
    }
    json_decref(p->req);
    free(p);
}

static void mc__fail_pending(mc_client *c, mc__pending *p, int code, const char *msg)
{
    mp_err e;
    mp_err_set(&e, code, NULL, "%s", msg);
    mc__pending_unlink(c, p);
    mc__complete(c, p, NULL, &e);
}

/* ---- subscriptions (receive side) ---- */

static mc_sub *mc__sub_by_server_id(mc_client *c, const char *sid)
{
    for (mc_sub *s = c->subs; s; s = s->next)
        if (s->server_id && !strcmp(s->server_id, sid))
            return s;
    return NULL;
}

static mc_sub *mc__sub_by_lid(mc_client *c, unsigned lid)
{
    for (mc_sub *s = c->subs; s; s = s->next)
        if (s->lid == lid)
            return s;
    return NULL;
}

static const char *mc__eid_of(json_t *env)
{
    const char *eid = json_string_value(json_object_get(env, "eventId"));
    if (!eid)
        eid = json_string_value(json_object_get(json_object_get(env, "event"), "id"));
    return eid;
}

/* Accept one event (envelope = map/event params or map/replay item) for sub. */
static void mc__sub_accept(mc_client *c, mc_sub *sub, json_t *env, int replayed)
{
    const char *eid = mc__eid_of(env);
    if (!eid || strlen(eid) >= MC__EID_MAX)
        return;
    if (sub->catching_up && !replayed) {
        mc__item *it = calloc(1, sizeof *it);
        if (!it)
            return;
        it->kind = MC__I_EVENT;
        it->j = json_incref(env);
        it->sub_lid = sub->lid;
        if (sub->park_tail)
            sub->park_tail->next = it;
        else
            sub->park_head = it;
        sub->park_tail = it;
        return;
    }
    if (sub->last_eid[0] && strcmp(eid, sub->last_eid) <= 0)
        return; /* already delivered */
    mc__item *it = calloc(1, sizeof *it);
    if (!it)
        return;
    snprintf(sub->last_eid, sizeof sub->last_eid, "%s", eid);
    it->kind = MC__I_EVENT;
    it->j = json_incref(env);
    it->sub_lid = sub->lid;
    it->replayed = replayed;
    mc__inbox_push(c, it);
}

static void mc__sub_unpark(mc_client *c, mc_sub *sub)
{
    sub->catching_up = 0;
    mc__item *it = sub->park_head;
    sub->park_head = sub->park_tail = NULL;
    while (it) {
        mc__item *n = it->next;
        mc__sub_accept(c, sub, it->j, 0);
        mc__item_free(it);
        it = n;
    }
}

static void mc__sub_drop_parked(mc_sub *sub)
{
    mc__item *it = sub->park_head;
    while (it) {
        mc__item *n = it->next;
        mc__item_free(it);
        it = n;
    }
    sub->park_head = sub->park_tail = NULL;
}

static void mc__orphans_clear(mc_client *c)
{
    while (c->orphans) {
        mc__orphan *o = c->orphans;
        c->orphans = o->next;
        json_decref(o->params);
        free(o);
    }
    c->norphans = 0;
}

/* Events that arrived for a subscription id whose map/subscribe reply is not in yet. */
static void mc__orphans_claim(mc_client *c, mc_sub *sub)
{
    mc__orphan **pp = &c->orphans;
    while (*pp) {
        mc__orphan *o = *pp;
        const char *sid = json_string_value(json_object_get(o->params, "subscriptionId"));
        if (sid && !strcmp(sid, sub->server_id)) {
            *pp = o->next;
            mc__sub_accept(c, sub, o->params, 0);
            json_decref(o->params);
            free(o);
            c->norphans--;
        } else {
            pp = &o->next;
        }
    }
}

/* ---- handshake ---- */

static void mc__hs_fail(mc_client *c, const mp_err *err, const char *what)
{
    c->hs_failed = 1;
    if (err)
        c->hs_err = *err;
    else
        mp_err_set(&c->hs_err, MC_ERR_PROTOCOL, NULL, "%s failed", what);
    c->want_close = 1;
    if (c->wsi)
        lws_callback_on_writable(c->wsi);
}

static void mc__hs_subs(mc_client *c);

static mc__pending *mc__internal(mc_client *c, const char *method, json_t *params, mc__hook_fn hook, void *arg)
{
    mc__pending *p = mc__pending_new(c, method, params, c->connect_timeout_ms);
    if (!p)
        return NULL;
    p->internal = 1;
    p->hook = hook;
    p->hook_arg = arg;
    if (mc__send_pending(c, p)) {
        mc__pending_unlink(c, p);
        json_decref(p->req);
        free(p);
        return NULL;
    }
    return p;
}

static void mc__go_ready(mc_client *c)
{
    c->ever_ready = 1;
    c->connects++;
    c->backoff_ms = c->backoff_initial_ms;
    mc__set_state(c, MC_STATE_READY, c->connects > 1 ? (c->resumed ? "resumed" : "reconnected") : "connected");
    /* release requests issued while the session was not ready, oldest (lowest id) first */
    for (;;) {
        mc__pending *best = NULL;
        for (mc__pending *p = c->pending; p; p = p->next)
            if (!p->sent && !p->internal && (!best || p->id < best->id))
                best = p;
        if (!best)
            break;
        if (mc__send_pending(c, best))
            mc__fail_pending(c, best, MC_ERR_NOMEM, "out of memory");
    }
}

static void mc__replay_page(mc_client *c, mc_sub *sub, const char *after);

static void mc__replay_hook(mc_client *c, mc__pending *p, json_t *result, const mp_err *err)
{
    unsigned lid = (unsigned)(uintptr_t)p->hook_arg;
    mc_sub *sub = mc__sub_by_lid(c, lid);
    if (!sub)
        goto next;
    if (err) {
        /* broker without map/replay, or a bad filter: no catch-up possible, go live */
        mc__sub_unpark(c, sub);
        sub->restore = 0;
        goto next;
    }
    json_t *events = json_object_get(result, "events");
    size_t i, n = json_array_size(events);
    json_t *item;
    const char *last = NULL;
    json_array_foreach(events, i, item)
    {
        mc__sub_accept(c, sub, item, 1);
        last = mc__eid_of(item);
    }
    if (json_is_true(json_object_get(result, "hasMore")) && n > 0 && last) {
        char cursor[MC__EID_MAX];
        snprintf(cursor, sizeof cursor, "%s", last);
        mc__replay_page(c, sub, cursor);
        return;
    }
    mc__sub_unpark(c, sub);
    sub->restore = 0;
next:
    mc__hs_subs(c);
}

static void mc__replay_page(mc_client *c, mc_sub *sub, const char *after)
{
    json_t *params = json_pack("{s:O, s:i}", "filter", sub->filter, "limit", MC__REPLAY_PAGE);
    if (after)
        json_object_set_new(params, "afterEventId", json_string(after));
    else
        json_object_set_new(params, "fromTimestamp", json_integer(sub->created_ms));
    if (!mc__internal(c, "map/replay", params, mc__replay_hook, (void *)(uintptr_t)sub->lid)) {
        mp_err e;
        mp_err_set(&e, MC_ERR_NOMEM, NULL, "out of memory");
        mc__hs_fail(c, &e, "map/replay");
    }
}

static void mc__resub_hook(mc_client *c, mc__pending *p, json_t *result, const mp_err *err)
{
    unsigned lid = (unsigned)(uintptr_t)p->hook_arg;
    mc_sub *sub = mc__sub_by_lid(c, lid);
    if (err) {
        mc__hs_fail(c, err, "map/subscribe");
        return;
    }
    if (!sub) { /* unsubscribed meanwhile */
        mc__hs_subs(c);
        return;
    }
    const char *sid = json_string_value(json_object_get(result, "subscriptionId"));
    if (!sid) {
        mc__hs_fail(c, NULL, "map/subscribe");
        return;
    }
    free(sub->server_id);
    sub->server_id = strdup(sid);
    mc__orphans_claim(c, sub);
    mc__replay_page(c, sub, sub->last_eid[0] ? sub->last_eid : NULL);
}

/* Restore the next subscription marked `restore`, or finish the handshake. */
static void mc__hs_subs(mc_client *c)
{
    mc_sub *sub = NULL;
    for (mc_sub *s = c->subs; s; s = s->next)
        if (s->restore) {
            sub = s;
            break;
        }
    if (!sub) {
        mc__go_ready(c);
        return;
    }
    sub->catching_up = 1;
    if (sub->server_id) { /* the broker resumed our session and still has it */
        mc__replay_page(c, sub, sub->last_eid[0] ? sub->last_eid : NULL);
        return;
    }
    json_t *params = json_pack("{s:O}", "filter", sub->filter);
    if (!mc__internal(c, "map/subscribe", params, mc__resub_hook, (void *)(uintptr_t)sub->lid)) {
        mp_err e;
        mp_err_set(&e, MC_ERR_NOMEM, NULL, "out of memory");
        mc__hs_fail(c, &e, "map/subscribe");
    }
}

static void mc__set_str(char **dst, const char *v)
{
    free(*dst);
    *dst = v ? strdup(v) : NULL;
}

static void mc__register_hook(mc_client *c, mc__pending *p, json_t *result, const mp_err *err)
{
    if (err) {
        mc__hs_fail(c, err, "map/agents/register");
        return;
    }
    const char *aid = json_string_value(json_object_get(json_object_get(result, "agent"), "id"));
    if (aid)
        mc__set_str(&c->agent_id, aid);
    mc__hs_subs(c);
}

static void mc__hs_register(mc_client *c)
{
    if (!c->register_agent && !c->agent_id_opt && !c->agent_id) {
        mc__hs_subs(c);
        return;
    }
    json_t *params = json_object();
    const char *aid = c->agent_id ? c->agent_id : c->agent_id_opt;
    if (aid)
        json_object_set_new(params, "agentId", json_string(aid));
    const char *nm = c->agent_name ? c->agent_name : c->name;
    if (nm)
        json_object_set_new(params, "name", json_string(nm));
    if (c->agent_role)
        json_object_set_new(params, "role", json_string(c->agent_role));
    if (c->agent_parent)
        json_object_set_new(params, "parent", json_string(c->agent_parent));
    if (c->agent_metadata)
        json_object_set(params, "metadata", c->agent_metadata);
    if (!mc__internal(c, "map/agents/register", params, mc__register_hook, NULL)) {
        mp_err e;
        mp_err_set(&e, MC_ERR_NOMEM, NULL, "out of memory");
        mc__hs_fail(c, &e, "map/agents/register");
    }
}

static void mc__connect_hook(mc_client *c, mc__pending *p, json_t *result, const mp_err *err)
{
    if (err) {
        mc__hs_fail(c, err, "map/connect");
        return;
    }
    json_t *ar = json_object_get(result, "authRequired");
    if (ar && !json_is_null(ar)) {
        json_t *e = json_object_get(result, "error");
        mp_err me;
        int code = (int)json_integer_value(json_object_get(e, "code"));
        const char *msg = json_string_value(json_object_get(e, "message"));
        mp_err_set(&me, code ? code : MP_AUTH_REQUIRED, "auth", "%s",
                   msg ? msg : "Authentication required (pass a token)");
        mc__hs_fail(c, &me, "map/connect");
        return;
    }
    json_decref(c->connect_result);
    c->connect_result = json_incref(result);
    mc__set_str(&c->session_id, json_string_value(json_object_get(result, "sessionId")));
    mc__set_str(&c->participant_id, json_string_value(json_object_get(result, "participantId")));
    const char *rt = json_string_value(json_object_get(result, "resumeToken"));
    if (rt)
        mc__set_str(&c->resume_token, rt);
    c->resumed = json_is_true(json_object_get(result, "reconnected"));
    for (mc_sub *s = c->subs; s; s = s->next) {
        s->restore = 1;
        if (!c->resumed) {
            free(s->server_id);
            s->server_id = NULL;
        }
    }
    mc__hs_register(c);
}

static void mc__hs_start(mc_client *c)
{
    json_t *params = json_pack("{s:i, s:s}", "protocolVersion", 1, "participantType",
                               c->ptype == MC_PT_AGENT ? "agent" : "client");
    if (c->name)
        json_object_set_new(params, "name", json_string(c->name));
    const char *aid = c->agent_id ? c->agent_id : c->agent_id_opt;
    if (c->ptype == MC_PT_AGENT && aid)
        json_object_set_new(params, "participantId", json_string(aid));
    if (c->auth_method) {
        json_t *auth = json_pack("{s:s}", "method", c->auth_method);
        if (c->auth_token)
            json_object_set_new(auth, "token", json_string(c->auth_token));
        json_object_set_new(params, "auth", auth);
    }
    if (c->resume_token)
        json_object_set_new(params, "resumeToken", json_string(c->resume_token));
    if (!mc__internal(c, "map/connect", params, mc__connect_hook, NULL)) {
        mp_err e;
        mp_err_set(&e, MC_ERR_NOMEM, NULL, "out of memory");
        mc__hs_fail(c, &e, "map/connect");
    }
}

/* ---- inbound ---- */

static void mc__err_from_json(json_t *ej, mp_err *e)
{
    mp_err_clear(e);
    json_t *code = json_object_get(ej, "code");
    const char *msg = json_string_value(json_object_get(ej, "message"));
    json_t *data = json_object_get(ej, "data");
    const char *field = json_string_value(json_object_get(data, "field"));
    mp_err_set(e, json_is_integer(code) ? (int)json_integer_value(code) : MC_ERR_PROTOCOL, field, "%s",
               msg ? msg : "error without message");
    e->retryable = json_is_true(json_object_get(data, "retryable"));
    if (!e->code)
        e->code = MC_ERR_PROTOCOL;
}

static void mc__on_response(mc_client *c, mp_msg *m)
{
    if (!json_is_integer(m->id))
        return; /* not ours (we only use integer ids); e.g. id:null parse errors */
    long long id = json_integer_value(m->id);
    mc__pending *p = c->pending;
    while (p && p->id != id)
        p = p->next;
    if (!p)
        return; /* timed out earlier, or unknown */
    mc__pending_unlink(c, p);
    json_t *ej = json_object_get(m->root, "error");
    if (ej) {
        mp_err e;
        mc__err_from_json(ej, &e);
        mc__complete(c, p, NULL, &e);
    } else {
        mc__complete(c, p, json_object_get(m->root, "result"), NULL);
    }
}

static void mc__on_notification(mc_client *c, mp_msg *m)
{
    if (!strcmp(m->method, "map/event")) {
        const char *sid = json_string_value(json_object_get(m->params, "subscriptionId"));
        if (!sid)
            return;
        mc_sub *sub = mc__sub_by_server_id(c, sid);
        if (sub) {
            mc__sub_accept(c, sub, m->params, 0);
        } else if (c->norphans < MC__ORPHANS_MAX) {
            /* maybe a subscription whose reply is still on its way; kept briefly */
            mc__orphan *o = calloc(1, sizeof *o);
            if (o) {
                o->params = json_incref(m->params);
                o->next = c->orphans;
                c->orphans = o;
                c->norphans++;
            }
        }
        return;
    }
    mc__item *it = calloc(1, sizeof *it);
    if (!it)
        return;
    if (!strcmp(m->method, "map/message") || !strcmp(m->method, "map/send")) {
        json_t *msg = json_object_get(m->params, "message");
        it->kind = MC__I_MESSAGE;
        it->j = json_incref(msg ? msg : m->params);
    } else {
        it->kind = MC__I_NOTIFY;
        it->method = strdup(m->method);
        it->j = json_incref(m->params);
    }
    mc__inbox_push(c, it);
}

static void mc__on_text(mc_client *c, const char *buf, size_t len)
{
    mp_limits lim = MP_LIMITS_DEFAULT;
    lim.max_message = c->max_message;
    lim.max_depth = 128;
    lim.max_method = 256;
    mp_msg m;
    json_t *id = NULL;
    mp_err e;
    if (mp_rpc_parse(buf, len, &lim, &m, &id, &e)) {
        json_decref(id);
        return; /* not JSON-RPC: ignore (the broker never sends such frames) */
    }
    switch (m.kind) {
    case MP_KIND_RESPONSE: mc__on_response(c, &m); break;
    case MP_KIND_NOTIFICATION: mc__on_notification(c, &m); break;
    case MP_KIND_REQUEST: {
        /* MAP brokers never send requests to participants; answer like the SDK does */
        mp_err me;
        mp_err_set(&me, MP_METHOD_NOT_FOUND, NULL, "Method not found: %s", m.method);
        json_t *r = mp_rpc_error(m.id, &me);
        if (r)
            mc__enqueue_json(c, r);
        json_decref(r);
        break;
    }
    }
    mp_msg_free(&m);
}

/* ---- connection ---- */

static void mc__on_drop(mc_client *c, const char *why)
{
    if (!c->link_up)
        return;
    c->link_up = 0;
    c->wsi = NULL;
    c->want_close = 0;
    c->rx_len = 0;
    c->rx_overflow = 0;
    mc__out_clear(c);
    mc__orphans_clear(c);
    for (mc_sub *s = c->subs; s; s = s->next) {
        s->catching_up = 0;
        mc__sub_drop_parked(s);
    }
    /* requests already on the wire are lost with the socket */
    mc__pending *p = c->pending;
    while (p) {
        mc__pending *n = p->next;
        if (p->sent || p->internal) {
            mc__pending_unlink(c, p);
            if (p->internal) {
                json_decref(p->req);
                free(p);
            } else {
                mp_err e;
                mp_err_set(&e, MC_ERR_CLOSED, NULL, "connection closed before the reply (%s)", why);
                mc__complete(c, p, NULL, &e);
            }
        }
        p = n;
    }
    if (c->destroying)
        return;
    if (!c->closed && c->ever_ready && c->reconnect) {
        c->next_attempt_us = mc__now_us() + (int64_t)c->backoff_ms * 1000;
        c->backoff_ms = c->backoff_ms * 2 > c->backoff_max_ms ? c->backoff_max_ms : c->backoff_ms * 2;
        mc__set_state(c, MC_STATE_RECONNECT_WAIT, why);
    } else {
        mc__set_state(c, MC_STATE_DISCONNECTED, why);
        /* nothing will carry held requests anymore */
        if (c->ever_ready || c->closed) {
            p = c->pending;
            while (p) {
                mc__pending *n = p->next;
                mc__fail_pending(c, p, MC_ERR_CLOSED, "client disconnected");
                p = n;
            }
        }
    }
}

static int mc__lws_cb(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
    struct lws_context *cx = lws_get_context(wsi);
    mc_client *c = cx ? lws_context_user(cx) : NULL;
    if (!c || c->destroying)
        return 0;
    if (mc__debug() && reason != LWS_CALLBACK_CLIENT_RECEIVE && reason != LWS_CALLBACK_CLIENT_WRITEABLE)
        fprintf(stderr, "[mapclient] lws reason %d wsi %p gen %lu/%lu link %d\n", (int)reason, (void *)wsi,
                (unsigned long)(uintptr_t)lws_get_opaque_user_data(wsi), (unsigned long)c->gen, c->link_up);
    /* Only the wsi of the current attempt may touch the client. A wsi from an
     * earlier attempt (its WSI_DESTROY can come late, even from inside the next
     * lws_client_connect_via_info) is ignored; if it still wants to talk, close it. */
    if ((uintptr_t)lws_get_opaque_user_data(wsi) != c->gen || !c->link_up)
        return reason == LWS_CALLBACK_CLIENT_WRITEABLE || reason == LWS_CALLBACK_CLIENT_RECEIVE ? -1 : 0;
    c->wsi = wsi;
    switch (reason) {
    case LWS_CALLBACK_CLIENT_CONNECTION_ERROR: {
        char why[200];
        snprintf(why, sizeof why, "cannot connect to %s: %s", c->url, in ? (const char *)in : "connection failed");
        if (!c->hs_failed)
            mp_err_set(&c->hs_err, MC_ERR_CONNECT, NULL, "%s", why);
        c->hs_failed = 1;
        mc__on_drop(c, why);
        return 0;
    }
    case LWS_CALLBACK_CLIENT_ESTABLISHED:
        mc__set_state(c, MC_STATE_HANDSHAKE, NULL);
        mc__hs_start(c);
        return 0;
    case LWS_CALLBACK_CLIENT_RECEIVE: {
        if (c->rx_overflow)
            return -1;
        if (c->rx_len + len > c->max_message) {
            c->rx_overflow = 1;
            lws_close_reason(wsi, LWS_CLOSE_STATUS_MESSAGE_TOO_LARGE, NULL, 0);
            return -1;
        }
        if (c->rx_len + len + 1 > c->rx_cap) {
            size_t cap = c->rx_cap ? c->rx_cap : 8192;
            while (cap < c->rx_len + len + 1)
                cap *= 2;
            char *nb = realloc(c->rx, cap);
            if (!nb)
                return -1;
            c->rx = nb;
            c->rx_cap = cap;
        }
        memcpy(c->rx + c->rx_len, in, len);
        c->rx_len += len;
        if (lws_is_final_fragment(wsi) && !lws_remaining_packet_payload(wsi)) {
            size_t n = c->rx_len;
            c->rx_len = 0;
            mc__on_text(c, c->rx, n);
        }
        return 0;
    }
    case LWS_CALLBACK_CLIENT_WRITEABLE: {
        mc__frame *f = c->out_head;
        if (!f) {
            if (c->want_close) {
                lws_close_reason(wsi, LWS_CLOSE_STATUS_NORMAL, NULL, 0);
                return -1;
            }
            return 0; /* spurious */
        }
        size_t chunk = f->len - f->off;
        if (chunk > MC__CHUNK)
            chunk = MC__CHUNK;
        int flags = lws_write_ws_flags(LWS_WRITE_TEXT, f->off == 0, f->off + chunk == f->len);
        int m = lws_write(wsi, (unsigned char *)f->mem + LWS_PRE + f->off, chunk, (enum lws_write_protocol)flags);
        if (m < (int)chunk)
            return -1;
        f->off += chunk;
        if (f->off == f->len) {
            c->out_head = f->next;
            if (!c->out_head)
                c->out_tail = NULL;
            free(f->mem);
            free(f);
        }
        if (c->out_head || c->want_close)
            lws_callback_on_writable(wsi);
        return 0;
    }
    case LWS_CALLBACK_CLIENT_CLOSED:
    case LWS_CALLBACK_WSI_DESTROY:
        mc__on_drop(c, "connection closed");
        return 0;
    default:
        return 0;
    }
}

static const struct lws_protocols mc__protocols[] = {
    {"mapclient", mc__lws_cb, 0, 65536, 0, NULL, 0},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

static void mc__open(mc_client *c)
{
    struct lws_client_connect_info ci;
    memset(&ci, 0, sizeof ci);
    ci.context = c->ctx;
    ci.address = c->host;
    ci.port = c->port;
    ci.path = c->path;
    ci.host = c->host;
    ci.origin = c->host;
    ci.local_protocol_name = "mapclient";
    ci.protocol = NULL; /* MAP uses no subprotocol */
    if (c->tls) {
        ci.ssl_connection = LCCSCF_USE_SSL;
        if (c->insecure)
            ci.ssl_connection |= LCCSCF_ALLOW_SELFSIGNED | LCCSCF_SKIP_SERVER_CERT_HOSTNAME_CHECK |
                                 LCCSCF_ALLOW_EXPIRED | LCCSCF_ALLOW_INSECURE;
    }
    c->hs_failed = 0;
    mp_err_clear(&c->hs_err);
    c->want_close = 0;
    c->link_up = 1;
    c->wsi = NULL;
    ci.opaque_user_data = (void *)++c->gen;
    c->attempt_deadline_us = mc__now_us() + (int64_t)c->connect_timeout_ms * 1000;
    mc__set_state(c, MC_STATE_CONNECTING, NULL);
    struct lws *w = lws_client_connect_via_info(&ci);
    if (!w) {
        if (!c->hs_failed)
            mp_err_set(&c->hs_err, MC_ERR_CONNECT, NULL, "cannot connect to %s", c->url);
        c->hs_failed = 1;
        mc__on_drop(c, "cannot connect");
        return;
    }
    if (c->link_up && (uintptr_t)ci.opaque_user_data == c->gen)
        c->wsi = w;
}

static void mc__wake_cb(lws_sorted_usec_list_t *sul) { (void)sul; }

/* Timers: request deadlines, attempt deadline, reconnect. */
static void mc__timers(mc_client *c)
{
    int64_t now = mc__now_us();
    mc__pending *p = c->pending;
    while (p) {
        mc__pending *n = p->next;
        if (now >= p->deadline_us) {
            if (p->internal) {
                /* a handshake step timed out: drop the link and try again */
                mp_err e;
                mp_err_set(&e, MC_ERR_TIMEOUT, NULL, "handshake timed out");
                mc__pending_unlink(c, p);
                json_decref(p->req);
                free(p);
                mc__hs_fail(c, &e, "handshake");
                if (c->wsi)
                    lws_set_timeout(c->wsi, PENDING_TIMEOUT_CLOSE_SEND, LWS_TO_KILL_ASYNC);
            } else {
                mc__fail_pending(c, p, MC_ERR_TIMEOUT, "no reply within the timeout");
            }
        }
        p = n;
    }
    if (c->link_up && c->state != MC_STATE_READY && now >= c->attempt_deadline_us && c->wsi) {
        if (!c->hs_failed)
            mp_err_set(&c->hs_err, MC_ERR_TIMEOUT, NULL, "connect to %s timed out", c->url);
        c->hs_failed = 1;
        lws_set_timeout(c->wsi, PENDING_TIMEOUT_CLOSE_SEND, LWS_TO_KILL_ASYNC);
        c->attempt_deadline_us = now + 1000000; /* do not spam */
    }
    if (!c->link_up && c->state == MC_STATE_RECONNECT_WAIT && now >= c->next_attempt_us)
        mc__open(c);
}

static int64_t mc__next_deadline(mc_client *c, int64_t limit)
{
    int64_t d = limit;
    for (mc__pending *p = c->pending; p; p = p->next)
        if (p->deadline_us < d)
            d = p->deadline_us;
    if (c->state == MC_STATE_RECONNECT_WAIT && c->next_attempt_us < d)
        d = c->next_attempt_us;
    if (c->link_up && c->state != MC_STATE_READY && c->attempt_deadline_us < d)
        d = c->attempt_deadline_us;
    return d;
}

/* Run the network for at most timeout_ms (0 = no wait), then the timers. */
static void mc__pump(mc_client *c, int timeout_ms)
{
    int64_t now = mc__now_us();
    int64_t until = mc__next_deadline(c, now + (int64_t)(timeout_ms > 0 ? timeout_ms : 0) * 1000);
    int64_t wait = until - now;
    if (c->in_head && !c->dispatching)
        wait = 0;
    /* lws 4.1 services a sul that is already ripe *before* it computes the poll
     * timeout, and then waits for the next lws-internal timer (~30 s). A wake-up
     * that is due (almost) now must therefore be a non-blocking service. */
    if (wait <= 2000) {
        lws_service(c->ctx, -1);
    } else {
        lws_sul_schedule(c->ctx, 0, &c->wake, mc__wake_cb, (lws_usec_t)wait);
        lws_service(c->ctx, 0);
        lws_sul_cancel(&c->wake);
    }
    mc__timers(c);
}

/* ---- public: lifecycle ---- */

static int mc__parse_url(mc_client *c, const char *url)
{
    char tmp[1400];
    if (strlen(url) >= sizeof tmp)
        return -1;
    snprintf(tmp, sizeof tmp, "%s", url);
    const char *prot, *ads, *path;
    int port;
    if (lws_parse_uri(tmp, &prot, &ads, &port, &path))
        return -1;
    if (!strcmp(prot, "ws"))
        c->tls = 0;
    else if (!strcmp(prot, "wss"))
        c->tls = 1;
    else
        return -1;
    if (!*ads || strlen(ads) >= sizeof c->host)
        return -1;
    /* lws_parse_uri defaults the port from the scheme only for http/https */
    if (!strstr(url + strlen(prot) + 3, ":") || port <= 0)
        port = c->tls ? 443 : 80;
    {
        /* an explicit port after the host wins */
        const char *h = url + strlen(prot) + 3;
        const char *colon = strchr(h, ':');
        const char *slash = strchr(h, '/');
        if (colon && (!slash || colon < slash))
            port = atoi(colon + 1);
    }
    if (port <= 0 || port > 65535)
        return -1;
    snprintf(c->host, sizeof c->host, "%s", ads);
    snprintf(c->path, sizeof c->path, "/%s", path ? path : "");
    c->port = port;
    return 0;
}

mc_client *mc_client_new(const mc_options *o, mp_err *err)
{
    mc_options def;
    if (!o) {
        memset(&def, 0, sizeof def);
        o = &def;
    }
    mc_client *c = calloc(1, sizeof *c);
    if (!c) {
        mc__fail(err, MC_ERR_NOMEM, "out of memory");
        return NULL;
    }
    c->url = strdup(o->url ? o->url : MC__DEFAULT_URL);
    c->ca_file = mc__dup(o->ca_file);
    c->auth_method = mc__dup(o->auth_method);
    c->auth_token = mc__dup(o->auth_token);
    if (c->auth_token && !c->auth_method)
        c->auth_method = strdup("api-key");
    c->name = mc__dup(o->name);
    c->agent_id_opt = mc__dup(o->agent_id);
    c->agent_name = mc__dup(o->agent_name);
    c->agent_role = mc__dup(o->agent_role);
    c->agent_parent = mc__dup(o->agent_parent);
    c->agent_metadata = o->agent_metadata ? json_deep_copy(o->agent_metadata) : NULL;
    c->insecure = o->insecure;
    c->register_agent = o->register_agent;
    c->reconnect = o->reconnect != MC_RECONNECT_OFF;
    c->ptype = o->participant_type;
    c->backoff_initial_ms = o->backoff_initial_ms > 0 ? o->backoff_initial_ms : 100;
    c->backoff_max_ms = o->backoff_max_ms > 0 ? o->backoff_max_ms : 5000;
    c->connect_timeout_ms = o->connect_timeout_ms > 0 ? o->connect_timeout_ms : 5000;
    c->max_message = o->max_message ? o->max_message : (16u << 20);
    c->backoff_ms = c->backoff_initial_ms;
    c->cbs = *o;
    c->cbs.url = c->cbs.ca_file = c->cbs.auth_method = c->cbs.auth_token = NULL;
    c->cbs.name = c->cbs.agent_id = c->cbs.agent_name = c->cbs.agent_role = c->cbs.agent_parent = NULL;
    c->cbs.agent_metadata = NULL;
    if (!c->url) {
        mc_client_free(c);
        mc__fail(err, MC_ERR_NOMEM, "out of memory");
        return NULL;
    }
    if (mc__parse_url(c, c->url)) {
        mc__fail(err, MC_ERR_USAGE, "invalid URL (expected ws://host:port/path or wss://...): %s", c->url);
        mc_client_free(c);
        return NULL;
    }

    static int log_set;
    if (!log_set) {
        const char *dbg = getenv("MC_LWS_DEBUG");
        lws_set_log_level(dbg && *dbg ? LLL_ERR | LLL_WARN | LLL_NOTICE : 0, NULL);
        log_set = 1;
    }
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.port = CONTEXT_PORT_NO_LISTEN;
    info.protocols = mc__protocols;
    info.gid = (gid_t)-1;
    info.uid = (uid_t)-1;
    info.user = c;
    info.fd_limit_per_thread = 16;
    info.options = c->tls ? LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT : 0;
    if (c->tls && c->ca_file)
        info.client_ssl_ca_filepath = c->ca_file;
    c->ctx = lws_create_context(&info);
    if (!c->ctx) {
        mc__fail(err, MC_ERR_CONNECT, "cannot create the libwebsockets context");
        mc_client_free(c);
        return NULL;
    }
    return c;
}

int mc_connect(mc_client *c, int timeout_ms, mp_err *err)
{
    if (!c)
        return mc__fail(err, MC_ERR_USAGE, "no client");
    if (c->state == MC_STATE_READY)
        return 0;
    if (c->link_up || c->state != MC_STATE_DISCONNECTED)
        return mc__fail(err, MC_ERR_USAGE, "connection already in progress");
    c->closed = 0;
    c->ever_ready = 0;
    int64_t deadline = mc__now_us() + (int64_t)(timeout_ms > 0 ? timeout_ms : c->connect_timeout_ms) * 1000;
    int saved = c->connect_timeout_ms;
    if (timeout_ms > 0)
        c->connect_timeout_ms = timeout_ms;
    mc__open(c);
    while (c->state != MC_STATE_READY && c->link_up) {
        int64_t left = deadline - mc__now_us();
        if (left <= 0 && !c->hs_failed) {
            mp_err_set(&c->hs_err, MC_ERR_TIMEOUT, NULL, "connect to %s timed out", c->url);
            c->hs_failed = 1;
            if (c->wsi)
                lws_set_timeout(c->wsi, PENDING_TIMEOUT_CLOSE_SEND, LWS_TO_KILL_ASYNC);
        }
        mc__pump(c, left > 0 ? (int)(left / 1000) + 1 : 50);
    }
    c->connect_timeout_ms = saved;
    if (c->state == MC_STATE_READY)
        return 0;
    int code = c->hs_err.code ? c->hs_err.code : MC_ERR_CONNECT;
    if (err) {
        *err = c->hs_err;
        if (!err->code)
            mp_err_set(err, code, NULL, "cannot connect to %s", c->url);
    }
    return code;
}

int mc_close(mc_client *c, int timeout_ms)
{
    if (!c)
        return 0;
    if (timeout_ms <= 0)
        timeout_ms = 2000;
    int rc = 0;
    if (c->state == MC_STATE_READY) {
        mp_err e;
        (void)mc_call(c, "map/disconnect", NULL, timeout_ms, NULL, &e);
    }
    c->closed = 1;
    if (c->link_up) {
        c->want_close = 1;
        if (c->wsi)
            lws_callback_on_writable(c->wsi);
        int64_t deadline = mc__now_us() + (int64_t)timeout_ms * 1000;
        while (c->link_up && mc__now_us() < deadline)
            mc__pump(c, 50);
        if (c->link_up) {
            rc = MC_ERR_TIMEOUT;
            if (c->wsi)
                lws_set_timeout(c->wsi, PENDING_TIMEOUT_CLOSE_SEND, LWS_TO_KILL_ASYNC);
            for (int i = 0; i < 10 && c->link_up; i++)
                mc__pump(c, 10);
            mc__on_drop(c, "closed");
        }
    }
    mc__set_state(c, MC_STATE_DISCONNECTED, "closed");
    mc__pending *p = c->pending;
    while (p) {
        mc__pending *n = p->next;
        mc__fail_pending(c, p, MC_ERR_CLOSED, "client closed");
        p = n;
    }
    return rc;
}

void mc_client_free(mc_client *c)
{
    if (!c)
        return;
    c->destroying = 1;
    if (c->ctx)
        lws_context_destroy(c->ctx);
    mc__out_clear(c);
    while (c->pending) {
        mc__pending *p = c->pending;
        c->pending = p->next;
        json_decref(p->req);
        free(p);
    }
    while (c->in_head) {
        mc__item *it = c->in_head;
        c->in_head = it->next;
        mc__item_free(it);
    }
    while (c->subs) {
        mc_sub *s = c->subs;
        c->subs = s->next;
        mc__sub_drop_parked(s);
        free(s->server_id);
        json_decref(s->filter);
        free(s);
    }
    mc__orphans_clear(c);
    free(c->rx);
    json_decref(c->connect_result);
    json_decref(c->agent_metadata);
    free(c->session_id);
    free(c->participant_id);
    free(c->resume_token);
    free(c->agent_id);
    free(c->url);
    free(c->ca_file);
    free(c->auth_method);
    free(c->auth_token);
    free(c->name);
    free(c->agent_id_opt);
    free(c->agent_name);
    free(c->agent_role);
    free(c->agent_parent);
    free(c);
}

static int mc__dispatch(mc_client *c)
{
    int n = 0;
    c->dispatching = 1;
    while (c->in_head) {
        mc__item *it = c->in_head;
        c->in_head = it->next;
        if (!c->in_head)
            c->in_tail = NULL;
        switch (it->kind) {
        case MC__I_MESSAGE:
            if (c->cbs.on_message) {
                c->cbs.on_message(c, it->j, c->cbs.message_arg);
                n++;
            }
            break;
        case MC__I_EVENT: {
            mc_sub *sub = mc__sub_by_lid(c, it->sub_lid);
            if (!sub)
                break;
            mc_event_cb cb = sub->cb ? sub->cb : c->cbs.on_event;
            void *arg = sub->cb ? sub->arg : c->cbs.event_arg;
            if (cb) {
                mc_event ev = {.event_id = mc__eid_of(it->j), .event = json_object_get(it->j, "event"),
                               .envelope = it->j, .replayed = it->replayed};
                cb(c, sub, &ev, arg);
                n++;
            }
            break;
        }
        case MC__I_NOTIFY:
            if (c->cbs.on_notify) {
                c->cbs.on_notify(c, it->method, it->j, c->cbs.notify_arg);
                n++;
            }
            break;
        case MC__I_REPLY:
            it->cb(c, it->is_err ? NULL : it->j, it->is_err ? &it->err : NULL, it->arg);
            n++;
            break;
        case MC__I_STATE:
            if (c->cbs.on_state) {
                c->cbs.on_state(c, it->state, it->detail[0] ? it->detail : NULL, c->cbs.state_arg);
                n++;
            }
            break;
        }
        mc__item_free(it);
    }
    c->dispatching = 0;
    return n;
}

int mc_service(mc_client *c, int timeout_ms)
{
    if (!c)
        return MC_ERR_USAGE;
    if (c->dispatching) {
        mc__pump(c, 0);
        return 0;
    }
    if (!c->in_head && (c->link_up || c->state == MC_STATE_RECONNECT_WAIT || c->pending))
        mc__pump(c, timeout_ms);
    int n = mc__dispatch(c);
    if (n == 0 && !c->link_up && c->state == MC_STATE_DISCONNECTED && !c->in_head)
        return MC_ERR_CLOSED;
    return n;
}

mc_state mc_get_state(const mc_client *c) { return c ? c->state : MC_STATE_DISCONNECTED; }
const char *mc_session_id(const mc_client *c) { return c ? c->session_id : NULL; }
const char *mc_participant_id(const mc_client *c) { return c ? c->participant_id : NULL; }
const char *mc_agent_id(const mc_client *c) { return c ? c->agent_id : NULL; }
unsigned mc_connect_count(const mc_client *c) { return c ? c->connects : 0; }
json_t *mc_connect_result(const mc_client *c) { return c ? c->connect_result : NULL; }

/* ---- public: requests ---- */

static int mc__usable(mc_client *c, mp_err *err)
{
    if (c->closed || (c->state == MC_STATE_DISCONNECTED && !c->link_up))
        return mc__fail(err, MC_ERR_CLOSED, "not connected");
    return 0;
}

/* Create a user request: sent now if READY, else held until the session is. */
static mc__pending *mc__user_request(mc_client *c, const char *method, json_t *params, int timeout_ms, mp_err *err,
                                     int *rc)
{
    *rc = mc__usable(c, err);
    if (*rc) {
        json_decref(params);
        return NULL;
    }
    mc__pending *p = mc__pending_new(c, method, params, timeout_ms);
    if (!p) {
        *rc = mc__fail(err, MC_ERR_NOMEM, "out of memory");
        return NULL;
    }
    if (c->state == MC_STATE_READY && mc__send_pending(c, p)) {
        mc__pending_unlink(c, p);
        json_decref(p->req);
        free(p);
        *rc = mc__fail(err, MC_ERR_NOMEM, "out of memory");
        return NULL;
    }
    return p;
}

static int mc__wait(mc_client *c, mc__sync *s, json_t **result_out, mp_err *err)
{
    while (!s->done)
        mc__pump(c, 1000);
    if (s->rc) {
        if (err)
            *err = s->err;
        if (result_out)
            *result_out = NULL;
        json_decref(s->result);
        return s->rc;
    }
    if (result_out)
        *result_out = s->result;
    else
        json_decref(s->result);
    return 0;
}

int mc_call(mc_client *c, const char *method, json_t *params, int timeout_ms, json_t **result_out, mp_err *err)
{
    if (result_out)
        *result_out = NULL;
    if (!c || !method) {
        json_decref(params);
        return mc__fail(err, MC_ERR_USAGE, "mc_call: client and method are required");
    }
    int rc;
    mc__pending *p = mc__user_request(c, method, params, timeout_ms, err, &rc);
    if (!p)
        return rc;
    mc__sync s;
    memset(&s, 0, sizeof s);
    p->sync = &s;
    return mc__wait(c, &s, result_out, err);
}

int mc_request(mc_client *c, const char *method, json_t *params, int timeout_ms, mc_reply_cb cb, void *arg,
               mp_err *err)
{
    if (!c || !method) {
        json_decref(params);
        return mc__fail(err, MC_ERR_USAGE, "mc_request: client and method are required");
    }
    int rc;
    mc__pending *p = mc__user_request(c, method, params, timeout_ms, err, &rc);
    if (!p)
        return rc;
    p->cb = cb;
    p->cb_arg = arg;
    return 0;
}

int mc_notify(mc_client *c, const char *method, json_t *params, mp_err *err)
{
    if (!c || !method) {
        json_decref(params);
        return mc__fail(err, MC_ERR_USAGE, "mc_notify: client and method are required");
    }
    if (c->state != MC_STATE_READY) {
        json_decref(params);
        return mc__fail(err, MC_ERR_CLOSED, "not connected");
    }
    json_t *n = mp_rpc_notification(method, params);
    int rc = n ? mc__enqueue_json(c, n) : MC_ERR_NOMEM;
    json_decref(n);
    return rc ? mc__fail(err, rc, "out of memory") : 0;
}

/* ---- public: subscriptions ---- */

static void mc__sub_hook(mc_client *c, mc__pending *p, json_t *result, const mp_err *err)
{
    mc_sub *sub = p->hook_arg;
    if (err)
        return;
    const char *sid = json_string_value(json_object_get(result, "subscriptionId"));
    if (!sid)
        return;
    sub->server_id = strdup(sid);
    sub->next = c->subs;
    c->subs = sub;
    mc__orphans_claim(c, sub);
}

int mc_subscribe(mc_client *c, json_t *filter, mc_event_cb cb, void *arg, int timeout_ms, mc_sub **out, mp_err *err)
{
    if (out)
        *out = NULL;
    if (!c) {
        json_decref(filter);
        return mc__fail(err, MC_ERR_USAGE, "no client");
    }
    if (filter && !json_is_object(filter)) {
        json_decref(filter);
        return mc__fail(err, MC_ERR_USAGE, "filter must be a JSON object");
    }
    mc_sub *sub = calloc(1, sizeof *sub);
    if (!sub) {
        json_decref(filter);
        return mc__fail(err, MC_ERR_NOMEM, "out of memory");
    }
    sub->filter = filter ? filter : json_object();
    sub->cb = cb;
    sub->arg = arg;
    sub->lid = ++c->next_lid;
    sub->created_ms = mp_now_ms();
    json_t *params = json_object();
    if (json_object_size(sub->filter))
        json_object_set(params, "filter", sub->filter);
    int rc;
    mc__pending *p = mc__user_request(c, "map/subscribe", params, timeout_ms, err, &rc);
    if (!p) {
        json_decref(sub->filter);
        free(sub);
        return rc;
    }
    mc__sync s;
    memset(&s, 0, sizeof s);
    p->sync = &s;
    p->hook = mc__sub_hook;
    p->hook_arg = sub;
    rc = mc__wait(c, &s, NULL, err);
    if (rc || !sub->server_id) {
        if (!rc)
            rc = mc__fail(err, MC_ERR_PROTOCOL, "map/subscribe result has no subscriptionId");
        /* not linked into c->subs unless the hook succeeded */
        for (mc_sub **pp = &c->subs; *pp; pp = &(*pp)->next)
            if (*pp == sub) {
                *pp = sub->next;
                break;
            }
        free(sub->server_id);
        json_decref(sub->filter);
        free(sub);
        return rc;
    }
    if (out)
        *out = sub;
    return 0;
}

int mc_unsubscribe(mc_client *c, mc_sub *sub, int timeout_ms, mp_err *err)
{
    if (!c || !sub)
        return mc__fail(err, MC_ERR_USAGE, "client and subscription are required");
    int found = 0;
    for (mc_sub **pp = &c->subs; *pp; pp = &(*pp)->next)
        if (*pp == sub) {
            *pp = sub->next;
            found = 1;
            break;
        }
    if (!found)
        return mc__fail(err, MC_ERR_USAGE, "unknown subscription");
    int rc = 0;
    if (sub->server_id && c->state == MC_STATE_READY)
        rc = mc_call(c, "map/unsubscribe", json_pack("{s:s}", "subscriptionId", sub->server_id), timeout_ms, NULL,
                     err);
    mc__sub_drop_parked(sub);
    free(sub->server_id);
    json_decref(sub->filter);
    free(sub);
    return rc;
}

const char *mc_sub_id(const mc_sub *sub) { return sub ? sub->server_id : NULL; }
const char *mc_sub_last_event_id(const mc_sub *sub) { return sub && sub->last_eid[0] ? sub->last_eid : NULL; }
json_t *mc_sub_filter(const mc_sub *sub) { return sub ? sub->filter : NULL; }

/* ---- public: helpers ---- */

int mc_send(mc_client *c, json_t *to, json_t *payload, json_t *meta, int timeout_ms, json_t **result_out, mp_err *err)
{
    if (!to) {
        json_decref(payload);
        json_decref(meta);
        return mc__fail(err, MC_ERR_USAGE, "map/send needs an address");
    }
    json_t *p = json_object();
    json_object_set_new(p, "to", to);
    if (payload)
        json_object_set_new(p, "payload", payload);
    if (meta)
        json_object_set_new(p, "meta", meta);
    return mc_call(c, "map/send", p, timeout_ms, result_out, err);
}

int mc_send_to_agent(mc_client *c, const char *agent_id, json_t *payload, json_t *meta, int timeout_ms,
                     json_t **result_out, mp_err *err)
{
    if (!agent_id) {
        json_decref(payload);
        json_decref(meta);
        return mc__fail(err, MC_ERR_USAGE, "agent id required");
    }
    return mc_send(c, json_pack("{s:s}", "agent", agent_id), payload, meta, timeout_ms, result_out, err);
}

int mc_reply(mc_client *c, json_t *message, json_t *payload, json_t *meta_extra, int timeout_ms, json_t **result_out,
             mp_err *err)
{
    const char *from = json_string_value(json_object_get(message, "from"));
    if (!from) {
        json_decref(payload);
        json_decref(meta_extra);
        return mc__fail(err, MC_ERR_USAGE, "message has no sender");
    }
    json_t *meta = json_object();
    if (json_is_object(meta_extra))
        json_object_update(meta, meta_extra);
    json_decref(meta_extra);
    json_object_set_new(meta, "isResult", json_true());
    const char *corr = json_string_value(json_object_get(json_object_get(message, "meta"), "correlationId"));
    if (!corr)
        corr = json_string_value(json_object_get(message, "id"));
    if (corr)
        json_object_set_new(meta, "correlationId", json_string(corr));
    return mc_send(c, json_pack("{s:s}", "agent", from), payload, meta, timeout_ms, result_out, err);
}

int mc_replay(mc_client *c, const char *after, json_t *filter, int limit, int timeout_ms, json_t **result_out,
              mp_err *err)
{
    json_t *p = json_object();
    if (after)
        json_object_set_new(p, "afterEventId", json_string(after));
    if (filter)
        json_object_set_new(p, "filter", filter);
    if (limit > 0)
        json_object_set_new(p, "limit", json_integer(limit));
    return mc_call(c, "map/replay", p, timeout_ms, result_out, err);
}

int mc_agents_list(mc_client *c, json_t *filter, int timeout_ms, json_t **result_out, mp_err *err)
{
    json_t *p = json_object();
    if (filter)
        json_object_set_new(p, "filter", filter);
    return mc_call(c, "map/agents/list", p, timeout_ms, result_out, err);
}

int mc_agents_register(mc_client *c, json_t *params, int timeout_ms, json_t **result_out, mp_err *err)
{
    return mc_call(c, "map/agents/register", params ? params : json_object(), timeout_ms, result_out, err);
}

int mc_agents_spawn(mc_client *c, json_t *params, int timeout_ms, json_t **result_out, mp_err *err)
{
    return mc_call(c, "map/agents/spawn", params ? params : json_object(), timeout_ms, result_out, err);
}

int mc_agents_stop(mc_client *c, const char *agent_id, const char *reason, int force, int timeout_ms,
                   json_t **result_out, mp_err *err)
{
    if (!agent_id)
        return mc__fail(err, MC_ERR_USAGE, "agent id required");
    json_t *p = json_pack("{s:s}", "agentId", agent_id);
    if (reason)
        json_object_set_new(p, "reason", json_string(reason));
    if (force)
        json_object_set_new(p, "force", json_true());
    return mc_call(c, "map/agents/stop", p, timeout_ms, result_out, err);
}

int mc_inject(mc_client *c, const char *agent_id, json_t *content, const char *delivery, int timeout_ms,
              json_t **result_out, mp_err *err)
{
    if (!agent_id || !content) {
        json_decref(content);
        return mc__fail(err, MC_ERR_USAGE, "agent id and content required");
    }
    json_t *p = json_pack("{s:s, s:o}", "agentId", agent_id, "content", content);
    if (delivery)
        json_object_set_new(p, "delivery", json_string(delivery));
    return mc_call(c, "map/inject", p, timeout_ms, result_out, err);
}

#define MC__MAIL(fn, method)                                                                                     \
    int fn(mc_client *c, json_t *params, int timeout_ms, json_t **result_out, mp_err *err)                      \
    {                                                                                                            \
        return mc_call(c, method, params ? params : json_object(), timeout_ms, result_out, err);                \
    }

MC__MAIL(mc_mail_create, "mail/create")
MC__MAIL(mc_mail_get, "mail/get")
MC__MAIL(mc_mail_list, "mail/list")
MC__MAIL(mc_mail_close, "mail/close")
MC__MAIL(mc_mail_join, "mail/join")
MC__MAIL(mc_mail_leave, "mail/leave")
MC__MAIL(mc_mail_invite, "mail/invite")
MC__MAIL(mc_mail_turn, "mail/turn")
MC__MAIL(mc_mail_turns_list, "mail/turns/list")
MC__MAIL(mc_mail_thread_create, "mail/thread/create")
MC__MAIL(mc_mail_thread_list, "mail/thread/list")
MC__MAIL(mc_mail_summary, "mail/summary")
MC__MAIL(mc_mail_replay, "mail/replay")
