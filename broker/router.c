/* map/send: address resolution (MAP.md 8.3), fan-out of one encoded
 * map/message per distinct recipient connection, message_* events, mail
 * interception; map/inject; federation envelopes (13.3-13.5). */
#include <stddef.h>
#include <string.h>

#include "auth.h"
#include "mb.h"
#include "mp_addr.h"

/* A resolved recipient: the id reported in `delivered` and the session that gets the frame. */
typedef struct mb_rcpt {
    const char *id;
    mb_session *s; /* NULL = offline */
} mb_rcpt;

/* Recipients, each id once. Most sends have one or a few: those live in
 * `small` and are deduplicated by a linear scan; a map of seen ids (and a heap
 * array) appears only past MB_RS_SMALL. */
#define MB_RS_SMALL 8
typedef struct mb_rset {
    mb_rcpt *v; /* small, or heap */
    size_t n, cap;
    mb_map *seen;
    mb_rcpt small[MB_RS_SMALL];
} mb_rset;

static void mb__rs_init(mb_rset *rs)
{
    rs->v = rs->small;
    rs->n = 0;
    rs->cap = MB_RS_SMALL;
    rs->seen = NULL;
}

static void mb__rs_free(mb_rset *rs)
{
    if (rs->v != rs->small)
        free(rs->v);
    mb_map_free(rs->seen, NULL);
}

static void mb__rs_add(mb_rset *rs, const char *id, mb_session *s)
{
    if (rs->seen) {
        if (mb_map_get(rs->seen, id))
            return;
    } else {
        for (size_t i = 0; i < rs->n; i++)
            if (!strcmp(rs->v[i].id, id))
                return;
    }
    if (rs->n == rs->cap) {
        size_t nc = rs->cap * 2;
        mb_rcpt *nv = rs->v == rs->small ? malloc(nc * sizeof *nv) : realloc(rs->v, nc * sizeof *nv);
        if (!nv)
            return;
        if (rs->v == rs->small)
            memcpy(nv, rs->small, sizeof rs->small);
        rs->v = nv;
        rs->cap = nc;
    }
    if (!rs->seen && rs->n == MB_RS_SMALL) { /* many: switch to a map */
        if (!(rs->seen = mb_map_new()))
            return;
        for (size_t i = 0; i < rs->n; i++)
            mb_map_put(rs->seen, rs->v[i].id, (void *)1);
    }
    rs->v[rs->n++] = (mb_rcpt){id, s};
    if (rs->seen)
        mb_map_put(rs->seen, id, (void *)1);
}

static void mb__rs_agent(mb_rset *rs, mb_agent *a)
{
    mb__rs_add(rs, a->id, a->session && a->session->wsi ? a->session : NULL);
}

static int mb__own(mb_session *s, mb_agent *a) { return a->session == s; }

static void mb__descend(mb_rset *rs, mb_agent *a, int depth, int max)
{
    if (max && depth > max)
        return;
    MB_MAP_FOREACH(a->children, e)
    {
        mb__rs_agent(rs, mb_map_val(e));
        mb__descend(rs, mb_map_val(e), depth + 1, max);
    }
}

/* Resolve `addr` for sender session s. Fills rs; returns 0 or an error in cx. */
static int mb__resolve(mb_ctx *cx, const mp_addr *ad, mb_rset *rs, int *federated)
{
    mb_broker *b = cx->b;
    mb_session *s = cx->s;
    mb_agent *me = mb_agent_get(b, s->primary_agent);
    *federated = 0;
    switch (ad->kind) {
    case MP_ADDR_BARE: {
        mb_agent *a = mb_agent_get(b, ad->id);
        mb_scope *sc = mb_scope_get(b, ad->id);
        if (a && sc)
            return MB_FAIL(cx, MP_ADDRESS_AMBIGUOUS, "to", "Address \"%s\" names both an agent and a scope", ad->id);
        if (a) {
            mb__rs_agent(rs, a);
            return 0;
        }
        mb_session *p = mb_map_get(b->participants, ad->id);
        if (p) {
            mb__rs_add(rs, p->participant_id, p->wsi ? p : NULL);
            return 0;
        }
        if (sc) {
            MB_MAP_FOREACH(sc->members, e) if (!mb__own(s, mb_map_val(e))) mb__rs_agent(rs, mb_map_val(e));
            return 0;
        }
        return MB_FAIL(cx, MP_AGENT_NOT_FOUND, "to", "Agent not found: %s", ad->id);
    }
    case MP_ADDR_AGENT: {
        mb_agent *a = mb_agent_get(b, ad->id);
        if (a) {
            mb__rs_agent(rs, a);
            return 0;
        }
        mb_session *p = mb_map_get(b->participants, ad->id); /* replies to clients */
        if (p) {
            mb__rs_add(rs, p->participant_id, p->wsi ? p : NULL);
            return 0;
        }
        return MB_FAIL(cx, MP_AGENT_NOT_FOUND, "to.agent", "Agent not found: %s", ad->id);
    }
    case MP_ADDR_AGENTS: {
        size_t i;
        json_t *x;
        json_array_foreach(ad->list, i, x)
        {
            mb_agent *a = mb_agent_get(b, json_string_value(x));
            if (a)
                mb__rs_agent(rs, a);
            else {
                mb_session *p = mb_map_get(b->participants, json_string_value(x));
                if (p)
                    mb__rs_add(rs, p->participant_id, p->wsi ? p : NULL);
            }
        }
        if (!rs->n)
            return MB_FAIL(cx, MP_AGENT_NOT_FOUND, "to.agents", "None of the addressed agents exist");
        return 0;
    }
    case MP_ADDR_SCOPE: {
        mb_scope *sc = mb_scope_get(b, ad->id);
        if (!sc)
            return MB_FAIL(cx, MP_SCOPE_NOT_FOUND, "to.scope", "Scope not found: %s", ad->id);
        const char *pol = json_string_value(json_object_get(sc->doc, "sendPolicy"));
        if (pol && !strcmp(pol, "members")) {
            int member = 0;
            MB_MAP_FOREACH(s->owned, e) if (mb_map_get(sc->members, mb_map_key(e))) member = 1;
            if (!member)
                return MB_FAIL(cx, MP_PERMISSION_DENIED, "to.scope", "Only members may send to scope %s", sc->id);
        }
        MB_MAP_FOREACH(sc->members, e) if (!mb__own(s, mb_map_val(e))) mb__rs_agent(rs, mb_map_val(e));
        return 0;
    }
    case MP_ADDR_ROLE: {
        mb_scope *within = NULL;
        if (ad->within && !(within = mb_scope_get(b, ad->within)))
            return MB_FAIL(cx, MP_SCOPE_NOT_FOUND, "to.within", "Scope not found: %s", ad->within);
        MB_MAP_FOREACH(within ? within->members : b->agents, e)
        {
            mb_agent *a = mb_map_val(e);
            if (a->role && !strcmp(a->role, ad->id) && !mb__own(s, a))
                mb__rs_agent(rs, a);
        }
        return 0;
    }
    case MP_ADDR_PARENT:
        if (me && mb_agent_get(b, me->parent))
            mb__rs_agent(rs, mb_agent_get(b, me->parent));
        return 0;
    case MP_ADDR_CHILDREN:
    case MP_ADDR_DESCENDANTS:
        if (me)
            mb__descend(rs, me, 1, ad->kind == MP_ADDR_CHILDREN ? (ad->depth ? ad->depth : 1) : ad->depth);
        return 0;
    case MP_ADDR_SIBLINGS:
        if (me && mb_agent_get(b, me->parent))
            MB_MAP_FOREACH(mb_agent_get(b, me->parent)->children, e) if (mb_map_val(e) != me)
                mb__rs_agent(rs, mb_map_val(e));
        return 0;
    case MP_ADDR_ANCESTORS: {
        int d = 0;
        for (mb_agent *a = me ? mb_agent_get(b, me->parent) : NULL; a && (!ad->depth || d < ad->depth) && d < 1000;
             a = mb_agent_get(b, a->parent), d++)
            mb__rs_agent(rs, a);
        return 0;
    }
    case MP_ADDR_BROADCAST:
        MB_MAP_FOREACH(b->agents, e) if (!mb__own(s, mb_map_val(e))) mb__rs_agent(rs, mb_map_val(e));
        return 0;
    case MP_ADDR_SYSTEM:
        return 0;
    case MP_ADDR_PARTICIPANT: {
        mb_session *p = mb_map_get(b->participants, ad->id);
        if (!p)
            return MB_FAIL(cx, MP_ADDRESS_NOT_FOUND, "to.participant", "Participant not found: %s", ad->id);
        mb__rs_add(rs, p->participant_id, p->wsi ? p : NULL);
        return 0;
    }
    case MP_ADDR_PARTICIPANTS:
        MB_MAP_FOREACH(b->participants, e)
        {
            mb_session *p = mb_map_val(e);
            if (p->state != MB_READY || !p->wsi || p == s)
                continue;
            if (!strcmp(ad->which, "agents") && p->ptype != MB_PT_AGENT)
                continue;
            if (!strcmp(ad->which, "clients") && p->ptype != MB_PT_CLIENT)
                continue;
            mb__rs_add(rs, p->participant_id, p);
        }
        return 0;
    case MP_ADDR_FEDERATED:
        if (!strcmp(ad->system, b->cfg->system_id)) {
            mb_agent *a = mb_agent_get(b, ad->id);
            if (!a)
                return MB_FAIL(cx, MP_AGENT_NOT_FOUND, "to.agent", "Agent not found: %s", ad->id);
            mb__rs_agent(rs, a);
            return 0;
        }
        *federated = 1;
        return 0;
    }
    return MB_FAIL(cx, MP_INVALID_PARAMS, "to", "Unsupported address");
}

int mb_route_deliver(mb_broker *b, mb_session *to, mb_frame *f)
{
    return mb_session_send(to, f, MB_Q_MESSAGE);
}


static void mb__buf_str(mp_buf *t, const char *s) { mp_buf_quote(t, s, strlen(s)); }

/* The Message object {id,from,to,timestamp,payload?,meta?} encoded once; the
 * same bytes mp_dump gives for the object federation forwards. The text is
 * written straight after the record's header in one block. NULL on OOM. */
static mb_msgrec *mb__msgrec(const char *mid, const char *from, json_t *to, int64_t now, json_t *payload,
                             json_t *meta, const char *fed_from)
{
    static const mb_msgrec hdr;
    mp_buf t = {0};
    char num[32];
    mp_buf_put(&t, &hdr, offsetof(mb_msgrec, text));
    mp_buf_lit(&t, "{\"id\":");
    mb__buf_str(&t, mid);
    mp_buf_lit(&t, ",\"from\":");
    mb__buf_str(&t, from);
    mp_buf_lit(&t, ",\"to\":");
    mp_buf_json(&t, to);
    snprintf(num, sizeof num, ",\"timestamp\":%lld", (long long)now);
    mp_buf_lit(&t, num);
    if (payload) {
        mp_buf_lit(&t, ",\"payload\":");
        mp_buf_json(&t, payload);
    }
    if (meta) {
        mp_buf_lit(&t, ",\"meta\":");
        mp_buf_json(&t, meta);
    }
    mp_buf_lit(&t, "}");
    char *fed = fed_from ? strdup(fed_from) : NULL;
    if (t.failed || (fed_from && !fed)) {
        free(t.p);
        free(fed);
        return NULL;
    }
    mb_msgrec *m = (mb_msgrec *)t.p;
    m->refs = 1;
    m->fed_from = fed;
    m->len = t.len - offsetof(mb_msgrec, text);
    return m;
}

/* {"jsonrpc":"2.0","method":"map/message","params":{"message":M}} */
static mb_frame *mb__message_frame(const mb_msgrec *m)
{
    static const char head[] = "{\"jsonrpc\":\"2.0\",\"method\":\"map/message\",\"params\":{\"message\":";
    mb_frame *f = mb_frame_alloc(sizeof head - 1 + m->len + 2);
    if (!f)
        return NULL;
    char *p = mb_frame_buf(f);
    memcpy(p, head, sizeof head - 1);
    memcpy(p + sizeof head - 1, m->text, m->len);
    memcpy(p + sizeof head - 1 + m->len, "}}", 2);
    return f;
}

/* Hand a message to a peer system: the Message as a tree, message_sent with
 * federatedTo (federated addresses are rare; no shared text here). */
static int mb__send_federated(mb_ctx *cx, const mp_addr *ad, json_t *to, json_t *payload, json_t *meta,
                              const char *mid, const char *from, int64_t now)
{
    mb_broker *b = cx->b;
    json_t *msg = json_pack("{s:s, s:s, s:O, s:I}", "id", mid, "from", from, "to", to, "timestamp", (json_int_t)now);
    if (payload)
        json_object_set(msg, "payload", payload);
    if (meta)
        json_object_set(msg, "meta", meta);
    json_t *sd = json_pack("{s:s, s:s, s:O, s:I, s:O}", "messageId", mid, "from", from, "to", to, "timestamp",
                           (json_int_t)now, "message", msg);
    const char *corr = json_string_value(json_object_get(meta, "correlationId"));
    const char *prio = json_string_value(json_object_get(meta, "priority"));
    if (corr)
        json_object_set_new(sd, "correlationId", json_string(corr));
    if (prio)
        json_object_set_new(sd, "priority", json_string(prio));
    if (payload)
        json_object_set(sd, "payload", payload);
    json_object_set_new(sd, "federatedTo", json_string(ad->system));
    if (cx->origin_system)
        json_object_set_new(sd, "federatedFrom", json_string(cx->origin_system));
    mb_emit_ex(b, "message_sent", from, sd, NULL, NULL, mb_map_size(b->sub_index) == 0, 0);
    int rc = mb_federation_forward(cx, ad->system, msg);
    if (!rc)
        cx->result = json_pack("{s:s, s:[]}", "messageId", mid, "delivered");
    json_decref(msg);
    return rc;
}

/* Route one message. msg_id_out gets the message id (>= 40 bytes).
 *
 * The Message is encoded once (mb_msgrec): the map/message frame is that text
 * in an envelope, the reply is spliced as text, and message_sent /
 * message_delivered keep a reference to it and build their data only if a
 * subscription, a replay or /api/agents/:id/messages reads them. */
int mb_send_message(mb_ctx *cx, json_t *to, json_t *payload, json_t *meta, char *msg_id_out)
{
    mb_broker *b = cx->b;
    mb_session *s = cx->s;
    mp_addr ad;
    if (mp_addr_parse(to, &ad, &cx->err))
        return cx->err.code;
    if (meta && !json_is_object(meta))
        return MB_FAIL(cx, MP_INVALID_PARAMS, "meta", "Parameter meta must be an object");
    mb_rset rs;
    mb__rs_init(&rs);
    int federated = 0;
    if (mb__resolve(cx, &ad, &rs, &federated)) {
        mb__rs_free(&rs);
        return cx->err.code;
    }
    /* Messages to/from an agent working on a task carry its task conversation
     * (unless the sender named one), so the exchange is recorded as turns. */
    json_t *own_meta = NULL;
    if (!federated && !json_object_get(meta, "mail")) {
        const char *task = mb_mail_task_context(b, s, to);
        if (task) {
            own_meta = meta ? json_deep_copy(meta) : json_object();
            json_object_set_new(own_meta, "mail", json_pack("{s:s}", "conversationId", task));
            meta = own_meta;
        }
    }
    char mid[64];
    mb_new_id(b, NULL, mid, sizeof mid);
    const char *from = mb_session_from(s);
    int64_t now = mb_now();
    if (cx->origin) { /* a federated message keeps its identity */
        const char *oid = json_string_value(json_object_get(cx->origin, "id"));
        const char *ofrom = json_string_value(json_object_get(cx->origin, "from"));
        json_t *ots = json_object_get(cx->origin, "timestamp");
        if (oid && strlen(oid) < sizeof mid)
            snprintf(mid, sizeof mid, "%s", oid);
        if (ofrom)
            from = ofrom;
        if (json_is_integer(ots))
            now = json_integer_value(ots);
    }
    if (msg_id_out)
        snprintf(msg_id_out, 64, "%s", mid);
    b->stats.messages_routed++;

    int rc = 0;
    if (federated) {
        rc = mb__send_federated(cx, &ad, to, payload, meta, mid, from, now);
    } else {
        mb_msgrec *mr = mb__msgrec(mid, from, to, now, payload, meta, cx->origin_system);
        mb_frame *f = mr && rs.n ? mb__message_frame(mr) : NULL;
        if (!mr || (rs.n && !f)) {
            mb_msgrec_unref(mr);
            rc = mp_err_set(&cx->err, MP_INTERNAL, NULL, "Out of memory while routing the message");
            goto out;
        }
        char sent_id[MP_ULID_LEN + 1] = "";
        mb_emit_msg(b, "message_sent", from, mr, NULL, now, NULL, sent_id);
        mp_buf res = {0}; /* the result, {"messageId":..,"delivered":[..]} */
        mp_buf_lit(&res, "{\"messageId\":");
        mb__buf_str(&res, mid);
        mp_buf_lit(&res, ",\"delivered\":[");
        size_t failed = 0, ndel = 0;
        mb_map *sent_to = rs.n > 1 ? mb_map_new() : NULL;
        for (size_t i = 0; i < rs.n; i++) {
            mb_rcpt *r = &rs.v[i];
            int ok = 0;
            if (r->s) {
                char key[32] = "";
                if (sent_to)
                    snprintf(key, sizeof key, "%llu", (unsigned long long)r->s->serial);
                if (sent_to && mb_map_get(sent_to, key))
                    ok = 1; /* one frame per connection even if it owns several targets */
                else if (mb_route_deliver(b, r->s, f) == 0) {
                    if (sent_to)
                        mb_map_put(sent_to, key, (void *)1);
                    ok = 1;
                }
            }
            if (ok) {
                b->stats.deliveries++;
                if (ndel++)
                    mp_buf_lit(&res, ",");
                mb__buf_str(&res, r->id);
                mb_emit_msg(b, "message_delivered", from, mr, r->id, mb_now(), sent_id, NULL);
            } else {
                failed++;
                b->stats.delivery_failures++;
                mb_emit_ex(b, "message_failed", from,
                           json_pack("{s:s, s:s, s:O, s:s, s:s, s:i}", "messageId", mid, "from", from, "to", to,
                                     "recipient", r->id, "reason", r->s ? "queue overflow" : "recipient offline",
                                     "code", MP_DELIVERY_FAILED),
                           sent_id, NULL, mb_map_size(b->sub_index) == 0, 0);
            }
        }
        mp_buf_lit(&res, "]}");
        mb_frame_unref(f);
        mb_map_free(sent_to, NULL);
        mb_msgrec_unref(mr);
        if (rs.n && failed == rs.n)
            rc = MB_FAIL(cx, MP_DELIVERY_FAILED, "to", "Delivery failed: no addressed recipient is reachable");
        else if (res.failed)
            rc = mp_err_set(&cx->err, MP_INTERNAL, NULL, "Out of memory while encoding the reply");
        if (!rc) {
            cx->result_raw = res.p;
            cx->result_raw_len = res.len;
        } else {
            free(res.p);
        }
    }
    /* mail interception: recorded even if delivery failed; never fails the send */
    if (json_is_object(json_object_get(meta, "mail"))) {
        json_t *ip = json_pack("{s:O*, s:O}", "payload", payload, "meta", meta);
        mb_mail_intercept(b, s, mid, ip);
        json_decref(ip);
    }
out:
    json_decref(own_meta);
    mb__rs_free(&rs);
    return rc;
}

static int h_send(mb_ctx *cx)
{
    json_t *to = json_object_get(cx->params, "to");
    json_t *payload = json_object_get(cx->params, "payload");
    json_t *meta = json_object_get(cx->params, "meta");
    if (json_is_null(meta))
        meta = NULL;
    char mid[64];
    return mb_send_message(cx, to, payload, meta, mid);
}

static int h_inject(mb_ctx *cx)
{
    const char *aid, *delivery = "best-effort";
    if (mp_get_str(cx->params, "agentId", MP_REQUIRED, &aid, &cx->err) ||
        mp_get_str(cx->params, "delivery", 0, &delivery, &cx->err))
        return cx->err.code;
    if (!delivery)
        delivery = "best-effort";
    if (strcmp(delivery, "interrupt") && strcmp(delivery, "queue") && strcmp(delivery, "best-effort"))
        return MB_FAIL(cx, MP_INVALID_PARAMS, "delivery", "delivery must be interrupt, queue or best-effort");
    json_t *content = json_object_get(cx->params, "content");
    if (!content)
        return MB_FAIL(cx, MP_INVALID_PARAMS, "content", "Missing required parameter: content");
    mb_agent *a = mb_agent_get(cx->b, aid);
    if (!a)
        return MB_FAIL(cx, MP_AGENT_NOT_FOUND, "agentId", "Agent not found: %s", aid);
    if (!strcmp(a->state, "stopped"))
        return MB_FAIL(cx, MP_TERMINATED, "agentId", "Agent %s is stopped", aid);
    mb_audit(cx, aid, cx->params);
    int injected = 0;
    if (a->session && a->session->wsi) {
        char mid[64];
        mb_new_id(cx->b, NULL, mid, sizeof mid);
        json_t *n = mp_rpc_notification(
            "map/message",
            json_pack("{s:{s:s, s:s, s:{s:s}, s:I, s:O, s:{s:s, s:{s:{s:s}}}}}", "message", "id", mid, "from",
                      mb_session_from(cx->s), "to", "agent", aid, "timestamp", (json_int_t)mb_now(), "payload", content,
                      "meta", "priority", !strcmp(delivery, "interrupt") ? "urgent" : "high", "_meta", "map/inject",
                      "delivery", delivery));
        injected = mb_session_send_json(a->session, n, MB_Q_MESSAGE) == 0;
        json_decref(n);
    }
    cx->result = json_pack("{s:b, s:s}", "injected", injected, "delivery", "message");
    return 0;
}

const mb_method mb_methods_send[] = {
    {"map/send", h_send, 0},
    {"map/inject", h_inject, MB_M_OPERATOR | MB_M_WRITES},
    {NULL, NULL, 0},
};
