/* Events: emission, in-memory history + store log, subscriptions, replay.
 *
 * Each event is encoded once (ev->text). A map/event notification differs per
 * subscription only in subscriptionId and sequenceNumber, so the envelope is
 * assembled around the shared text with one memcpy per recipient instead of a
 * full JSON encode. */
#include <inttypes.h>
#include <libwebsockets.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "mb.h"
#include "mail.h"
#include "observe.h"

/* ---- registry-backed filter environment ---- */

static const char *mb__env_role(void *arg, const char *agent_id)
{
    mb_agent *a = mb_agent_get(arg, agent_id);
    return a ? a->role : NULL;
}

static json_t *mb__env_environment(void *arg, const char *agent_id)
{
    mb_agent *a = mb_agent_get(arg, agent_id);
    return a ? json_object_get(a->doc, "environment") : NULL;
}

const mp_filter_env *mb_filter_env(mb_broker *b)
{
    static mp_filter_env env;
    env.agent_role = mb__env_role;
    env.agent_environment = mb__env_environment;
    env.arg = b;
    return &env;
}

/* ---- event objects ---- */

static void mb__event_free(mb_event *ev)
{
    if (!ev)
        return;
    free(ev->type);
    free(ev->source);
    free(ev->conv_id);
    json_decref(ev->data);
    mb_msgrec_unref(ev->msg);
    free(ev->rcpt);
    free(ev->text);
    free(ev->caused_by);
    free(ev);
}

void mb_msgrec_unref(mb_msgrec *m)
{
    if (m && --m->refs == 0) {
        free(m->fed_from);
        free(m);
    }
}

/* The data of a message_sent / message_delivered event, from the message
 * text: the keys and order router.c's messages always had. */
static json_t *mb__msg_data(const mb_event *ev)
{
    json_t *m = mp_json_parse(ev->msg->text, ev->msg->len, 4096);
    if (!m)
        return NULL;
    json_t *meta = json_object_get(m, "meta"), *payload = json_object_get(m, "payload");
    json_t *corr = json_object_get(meta, "correlationId");
    json_t *d;
    if (!ev->rcpt) {
        d = json_pack("{s:O, s:O, s:O, s:O, s:O}", "messageId", json_object_get(m, "id"), "from",
                      json_object_get(m, "from"), "to", json_object_get(m, "to"), "timestamp",
                      json_object_get(m, "timestamp"), "message", m);
        json_t *prio = json_object_get(meta, "priority");
        if (d && json_is_string(corr))
            json_object_set(d, "correlationId", corr);
        if (d && json_is_string(prio))
            json_object_set(d, "priority", prio);
        if (d && payload)
            json_object_set(d, "payload", payload);
        if (d && ev->msg->fed_from)
            json_object_set_new(d, "federatedFrom", json_string(ev->msg->fed_from));
    } else {
        d = json_pack("{s:O, s:O, s:[s], s:I, s:O}", "messageId", json_object_get(m, "id"), "from",
                      json_object_get(m, "from"), "deliveredTo", ev->rcpt, "timestamp", (json_int_t)ev->ts,
                      "message", m);
        if (d && json_is_string(corr) && json_is_true(json_object_get(meta, "isResult")))
            json_object_set(d, "correlationId", corr);
        if (d && payload)
            json_object_set(d, "payload", payload);
    }
    json_decref(m);
    return d;
}

json_t *mb_event_data(mb_event *ev)
{
    if (!ev->data && ev->msg) {
        ev->data = mb__msg_data(ev);
    } else if (!ev->data && ev->text) { /* dropped after emission (mb__emit) */
        json_t *o = mp_json_parse(ev->text, ev->text_len, 4096);
        ev->data = json_incref(json_object_get(o, "data"));
        json_decref(o);
    }
    return ev->data;
}

/* Build an mb_event from a stored Event JSON text (for replay from the store). */
static mb_event *mb__event_from_text(uint64_t seq, const char *text, size_t len)
{
    json_t *o = json_loadb(text, len, 0, NULL);
    if (!o)
        return NULL;
    mb_event *ev = calloc(1, sizeof *ev);
    if (!ev) {
        json_decref(o);
        return NULL;
    }
    ev->seq = seq;
    snprintf(ev->id, sizeof ev->id, "%s", json_string_value(json_object_get(o, "id")) ?: "");
    ev->type = strdup(json_string_value(json_object_get(o, "type")) ?: "");
    const char *src = json_string_value(json_object_get(o, "source"));
    ev->source = src ? strdup(src) : NULL;
    ev->data = json_incref(json_object_get(o, "data"));
    ev->ts = json_integer_value(json_object_get(o, "timestamp"));
    const char *cid = json_string_value(json_object_get(ev->data, "conversationId"));
    ev->conv_id = cid ? strdup(cid) : NULL;
    json_t *cb = json_object_get(o, "causedBy");
    if (cb) {
        size_t n;
        char *t = mp_dump(cb, 0, &n);
        ev->caused_by = t;
    }
    ev->text = malloc(len + 1);
    if (ev->text) {
        memcpy(ev->text, text, len);
        ev->text[len] = '\0';
        ev->text_len = len;
    }
    json_decref(o);
    return ev;
}

static int mb__is_message_event(const char *type)
{
    return !strncmp(type, "message_", 8);
}

/* Assemble a map/event notification for one subscription. */
static mb_frame *mb__notification(const mb_sub *sub, uint64_t seqno, mb_event *ev)
{
    if (!mb_event_text(ev))
        return NULL;
    char head[256];
    int hn = snprintf(head, sizeof head,
                      "{\"jsonrpc\":\"2.0\",\"method\":\"map/event\",\"params\":{\"subscriptionId\":\"%s\","
                      "\"sequenceNumber\":%" PRIu64 ",\"eventId\":\"%s\",\"timestamp\":%" PRId64 ",",
                      sub->id, seqno, ev->id, ev->ts);
    const char *cb = ev->caused_by;
    size_t cbn = cb ? strlen(cb) : 0;
    size_t len = (size_t)hn + (cb ? 11 + cbn + 1 : 0) + 8 + ev->text_len + 2;
    mb_frame *f = mb_frame_alloc(len);
    if (!f)
        return NULL;
    char *p = mb_frame_buf(f);
    memcpy(p, head, (size_t)hn);
    p += hn;
    if (cb) {
        memcpy(p, "\"causedBy\":", 11);
        p += 11;
        memcpy(p, cb, cbn);
        p += cbn;
        *p++ = ',';
    }
    memcpy(p, "\"event\":", 8);
    p += 8;
    memcpy(p, ev->text, ev->text_len);
    p += ev->text_len;
    *p++ = '}';
    *p++ = '}';
    *p = '\0';
    f->len = (size_t)(p - mb_frame_buf(f));
    return f;
}

static int mb__own_event(const mb_session *s, const mb_event *ev)
{
    if (!ev->source)
        return 0;
    return !strcmp(ev->source, s->participant_id) || mb_map_get(s->owned, ev->source) != NULL;
}

int mb_event_visible(mb_broker *b, mb_session *s, const mb_event *ev)
{
    if (ev->conv_id && !strncmp(ev->type, "mail.turn.", 10)) {
        json_t *data = mb_event_data((mb_event *)ev);
        if (!data || !mb_mail_event_visible(b, s, ev->conv_id, data)) /* no data (OOM): fail closed */
            return 0;
    }
    return mb_auth_event_visible(b, s, ev);
}

static int mb__sub_matches(mb_broker *b, mb_sub *sub, const mb_event *ev)
{
    if (sub->exclude_own && mb__own_event(sub->s, ev))
        return 0;
    mp_event_view v = {.type = ev->type, .source = ev->source, .data = mb_event_data((mb_event *)ev)};
    if (!mp_filter_match(sub->filter, &v, mb_filter_env(b)))
        return 0;
    return mb_event_visible(b, sub->s, ev);
}

static void mb__deliver(mb_broker *b, mb_sub *sub, mb_event *ev)
{
    uint64_t seqno = ++sub->seq; /* assigned even if dropped: the gap tells the client */
    mb_frame *f = mb__notification(sub, seqno, ev);
    if (!f)
        return;
    if (sub->overflow_first && !sub->s->full_since)
        sub->overflow_first = 0; /* the queue drained: a new overflow episode may be reported */
    int rc = mb_session_send(sub->s, f, MB_Q_EVENT);
    mb_frame_unref(f);
    if (rc == 0) {
        b->stats.event_notifications++;
        memcpy(sub->last_id, ev->id, sizeof sub->last_id);
    } else if (rc == 1 && !sub->overflow_first) {
        /* Say once where to resume (map/replay afterEventId); the SDK ignores
         * unknown notifications, other clients can act on it. Never dropped. */
        sub->overflow_first = ev->seq;
        json_t *n = mp_rpc_notification("map/subscription.overflow",
                                        json_pack("{s:s, s:s, s:I}", "subscriptionId", sub->id, "firstDroppedEventId",
                                                  ev->id, "firstDroppedSequence", (json_int_t)seqno));
        if (sub->last_id[0])
            json_object_set_new(json_object_get(n, "params"), "resumeAfterEventId", json_string(sub->last_id));
        mb_session_send_json(sub->s, n, MB_Q_RESPONSE);
        json_decref(n);
    }
}

/* Encode the Event object {id,type,timestamp,source?,data,causedBy?}. */
static int mb__event_encode(mb_event *ev)
{
    json_t *o = json_object();
    json_object_set_new(o, "id", json_string(ev->id));
    json_object_set_new(o, "type", json_string(ev->type));
    json_object_set_new(o, "timestamp", json_integer(ev->ts));
    if (ev->source)
        json_object_set_new(o, "source", json_string(ev->source));
    json_t *data = mb_event_data(ev);
    if (!data) {
        json_decref(o);
        return -1;
    }
    json_object_set(o, "data", data);
    if (ev->caused_by)
        json_object_set_new(o, "causedBy", json_loads(ev->caused_by, 0, NULL));
    ev->text = mp_dump(o, 0, &ev->text_len);
    json_decref(o);
    return ev->text ? 0 : -1;
}

const char *mb_event_text(mb_event *ev)
{
    if (!ev->text)
        mb__event_encode(ev);
    return ev->text;
}

mb_event *mb_emit(mb_broker *b, const char *type, const char *source, json_t *data, const char *caused_by,
                  char id_out[MP_ULID_LEN + 1])
{
    return mb_emit_ex(b, type, source, data, caused_by, id_out, 0, 0);
}

/* The Event text with data spliced in as given: the same bytes
 * mb__event_encode writes ({id,type,timestamp,source?,data,causedBy?}). */
static int mb__event_splice(mb_event *ev, const char *data_text, size_t data_len)
{
    mp_buf t = {0};
    mp_buf_lit(&t, "{\"id\":\"");
    mp_buf_lit(&t, ev->id); /* a ULID: nothing to escape */
    mp_buf_lit(&t, "\",\"type\":");
    mp_buf_quote(&t, ev->type, strlen(ev->type));
    mp_buf_lit(&t, ",\"timestamp\":");
    mp_buf_int(&t, ev->ts);
    mp_buf_lit(&t, ",");
    if (ev->source) {
        mp_buf_lit(&t, "\"source\":");
        mp_buf_quote(&t, ev->source, strlen(ev->source));
        mp_buf_lit(&t, ",");
    }
    mp_buf_lit(&t, "\"data\":");
    mp_buf_put(&t, data_text, data_len);
    if (ev->caused_by) {
        mp_buf_lit(&t, ",\"causedBy\":");
        mp_buf_lit(&t, ev->caused_by);
    }
    mp_buf_lit(&t, "}");
    if (t.failed) {
        free(t.p);
        return -1;
    }
    ev->text = t.p;
    ev->text_len = t.len;
    return 0;
}

struct mb__msg_arg {
    mb_msgrec *m;
    const char *rcpt;
    int64_t ts;
};

/* what mb__emit is given besides data: the data's text (and, with no tree,
 * the conversation it is about) */
struct mb__text_arg {
    const char *text;
    size_t len;
    const char *conv_id;
};

static mb_event *mb__emit(mb_broker *b, const char *type, const char *source, json_t *data,
                          const struct mb__text_arg *txt, const char *caused_by, char id_out[MP_ULID_LEN + 1],
                          int lazy, size_t size_hint, const struct mb__msg_arg *msg);

mb_event *mb_emit_text(mb_broker *b, const char *type, const char *source, const char *conv_id,
                       const char *data_text, size_t data_len)
{
    struct mb__text_arg t = {data_text, data_len, conv_id};
    return mb__emit(b, type, source, NULL, &t, NULL, NULL, 0, 0, NULL);
}

mb_event *mb_emit_msg(mb_broker *b, const char *type, const char *source, mb_msgrec *m, const char *rcpt,
                      int64_t ts, const char *caused_by, char id_out[MP_ULID_LEN + 1])
{
    struct mb__msg_arg a = {m, rcpt, ts};
    return mb__emit(b, type, source, NULL, NULL, caused_by, id_out, 1, m->len + (rcpt ? 64 : 0), &a);
}

mb_event *mb_emit_ex(mb_broker *b, const char *type, const char *source, json_t *data, const char *caused_by,
                     char id_out[MP_ULID_LEN + 1], int lazy, size_t size_hint)
{
    return mb__emit(b, type, source, data, NULL, caused_by, id_out, lazy, size_hint, NULL);
}

static mb_event *mb__emit(mb_broker *b, const char *type, const char *source, json_t *data,
                          const struct mb__text_arg *txt, const char *caused_by, char id_out[MP_ULID_LEN + 1],
                          int lazy, size_t size_hint, const struct mb__msg_arg *msg)
{
    mb_event *ev = calloc(1, sizeof *ev);
    if (!ev) {
        json_decref(data);
        return NULL;
    }
    ev->seq = ++b->event_seq;
    mb_new_id(b, NULL, ev->id, sizeof ev->id);
    ev->type = strdup(type);
    ev->source = source ? strdup(source) : NULL;
    if (msg) {
        ev->msg = msg->m;
        msg->m->refs++;
        ev->ts = msg->ts;
        if (msg->rcpt && !(ev->rcpt = strdup(msg->rcpt))) {
            mb__event_free(ev);
            return NULL;
        }
    } else if (txt) { /* no tree: parsed back from the text by the first reader that needs it */
        ev->ts = mb_now();
    } else {
        ev->data = data ? data : json_object();
        ev->ts = mb_now();
    }
    if (!strncmp(type, "mail.", 5)) {
        const char *cid = txt ? txt->conv_id : json_string_value(json_object_get(ev->data, "conversationId"));
        ev->conv_id = cid ? strdup(cid) : NULL;
    }
    if (caused_by && *caused_by) {
        size_t n = strlen(caused_by);
        ev->caused_by = malloc(n + 5);
        if (ev->caused_by) { /* ["<id>"]: ULIDs need no escaping */
            memcpy(ev->caused_by, "[\"", 2);
            memcpy(ev->caused_by + 2, caused_by, n);
            memcpy(ev->caused_by + 2 + n, "\"]", 3);
        }
    }
    /* lazy only where nothing needs the text now: not persisted, no subscriber */
    lazy = lazy && mb__is_message_event(type) && mb_map_size(b->sub_index) == 0;
    if (!ev->type || (!lazy && (txt ? mb__event_splice(ev, txt->text, txt->len) : mb__event_encode(ev)))) {
        mb__event_free(ev);
        return NULL;
    }
    ev->cost = 2 * (ev->text ? ev->text_len : size_hint) + 256;
    if (id_out)
        memcpy(id_out, ev->id, sizeof ev->id);
    b->stats.events_emitted++;

    /* Durable log: everything except the ephemeral message_* events
     * (map/send is fire-and-forget by spec; mail is its durable form). */
    if (!mb__is_message_event(type) && mb_txn(b) == 0) {
        struct mst_event se = {.seq = ev->seq, .id = ev->id, .type = ev->type, .conv_id = ev->conv_id,
                               .ts = ev->ts, .json = ev->text, .len = ev->text_len};
        int rc = mst_event_append(b->store, &se);
        if (rc)
            mb_error("store", "event %s not recorded: %s (%s)", ev->id, mst_strerror(rc), mst_last_error(b->store));
    }

    /* history ring, bounded in count and in bytes (message events carry payloads) */
    size_t cost = ev->cost;
    while (b->hist_len && (b->hist_len == b->hist_cap || b->hist_bytes + cost > (size_t)b->cfg->event_history_bytes)) {
        mb_event *old = b->hist[b->hist_head];
        b->hist_bytes -= old->cost;
        mb__event_free(old);
        b->hist[b->hist_head] = NULL;
        b->hist_head = (b->hist_head + 1) % b->hist_cap;
        b->hist_len--;
    }
    b->hist[(b->hist_head + b->hist_len) % b->hist_cap] = ev;
    b->hist_len++;
    b->hist_bytes += cost;

    /* fan-out: plain observers, then MAP subscriptions */
    if (ev->conv_id)
        mb_observe_on_event(b, ev);
    MB_MAP_FOREACH(b->sub_index, e)
    {
        mb_sub *sub = mb_map_val(e);
        if (sub->s->state == MB_READY && sub->s->wsi && mb__sub_matches(b, sub, ev))
            mb__deliver(b, sub, ev);
    }
    /* The history keeps the text only. Each event's tree, freed node by node
     * when it aged out of the ring (cold in cache by then), was a quarter of
     * mail/turn's time; the rare later reader (a replay with a filter, a new
     * subscription) parses it back through mb_event_data. */
    if (ev->text && ev->data) {
        json_decref(ev->data);
        ev->data = NULL;
    }
    return ev;
}

/* ---- history ---- */

static mb_event *mb__hist_at(mb_broker *b, size_t i)
{
    return b->hist[(b->hist_head + i) % b->hist_cap];
}

int mb_events_seq_of(mb_broker *b, const char *event_id, uint64_t *seq)
{
    *seq = 0;
    if (mp_ulid_time(event_id) < 0)
        return MST_EINVAL;
    /* memory: binary search for the first event whose id sorts after event_id
     * (ids sort like seq), so even an id we never stored resumes exactly */
    if (b->hist_len && strcmp(event_id, mb__hist_at(b, 0)->id) >= 0) {
        size_t lo = 0, hi = b->hist_len;
        while (lo < hi) {
            size_t mid = (lo + hi) / 2;
            if (strcmp(mb__hist_at(b, mid)->id, event_id) <= 0)
                lo = mid + 1;
            else
                hi = mid;
        }
        *seq = lo < b->hist_len ? mb__hist_at(b, lo)->seq - 1 : b->event_seq;
        return 0;
    }
    /* older than memory: the store's log (which holds every non-message event) */
    uint64_t first = 0;
    mst_event_first_seq(b->store, &first);
    if (mst_event_seq_of(b->store, event_id, seq) == MST_OK)
        return 0;
    int rc = mst_event_seq_after_id(b->store, event_id, seq);
    if (rc == MST_ENOTFOUND) {
        *seq = b->hist_len ? mb__hist_at(b, 0)->seq - 1 : b->event_seq;
        return 0;
    }
    if (rc)
        return rc;
    if (first > 1 && *seq + 1 <= first) {
        /* the events right after this position were trimmed */
        *seq = 0;
        return MST_ERANGE;
    }
    return 0;
}

/* Where retention starts, for error messages. */
static void mb__oldest_id(mb_broker *b, char *out, size_t n)
{
    uint64_t first = 0;
    mst_event_first_seq(b->store, &first);
    snprintf(out, n, "seq %llu", (unsigned long long)first);
}

struct mb__scan_ctx {
    mb_event_cb cb;
    void *arg;
    uint64_t last;
    int stop;
};

static int mb__scan_store_cb(void *arg, const struct mst_event *se)
{
    struct mb__scan_ctx *c = arg;
    mb_event *ev = mb__event_from_text(se->seq, se->json, se->len);
    if (!ev)
        return 0;
    c->last = se->seq;
    c->stop = c->cb(c->arg, ev);
    mb__event_free(ev);
    return c->stop;
}

int mb_events_scan(mb_broker *b, uint64_t after_seq, mb_event_cb cb, void *arg)
{
    uint64_t mem_first = b->hist_len ? mb__hist_at(b, 0)->seq : b->event_seq + 1;
    struct mb__scan_ctx c = {.cb = cb, .arg = arg, .last = after_seq};
    if (after_seq + 1 < mem_first) {
        /* older than memory: the store has it (except message_* events) */
        struct mst_event_query q = {.after_seq = after_seq};
        mst_event_scan(b->store, &q, mb__scan_store_cb, &c);
        if (c.stop)
            return 0;
    }
    for (size_t i = 0; i < b->hist_len; i++) {
        mb_event *ev = mb__hist_at(b, i);
        if (ev->seq <= c.last)
            continue;
        if (cb(arg, ev))
            return 0;
    }
    return 0;
}

void mb_events_free(mb_broker *b)
{
    for (size_t i = 0; i < b->hist_len; i++)
        mb__event_free(mb__hist_at(b, i));
    b->hist_len = 0;
}

/* ---- subscriptions ---- */

static void mb__sub_free(mb_sub *sub)
{
    mp_filter_free(sub->filter);
    json_decref(sub->filter_json);
    free(sub);
}

void mb_subs_drop_session(mb_broker *b, mb_session *s)
{
    mb_sub *sub = s->subs;
    while (sub) {
        mb_sub *n = sub->next;
        mb_map_del(b->sub_index, sub->id);
        mb__sub_free(sub);
        sub = n;
    }
    s->subs = NULL;
    s->nsubs = 0;
}

struct mb__replay_sub {
    mb_broker *b;
    mb_sub *sub;
    int64_t from_ts;
};

static int mb__replay_sub_cb(void *arg, const mb_event *ev)
{
    struct mb__replay_sub *r = arg;
    if (ev->ts < r->from_ts)
        return 0;
    if (mb__sub_matches(r->b, r->sub, ev))
        mb__deliver(r->b, r->sub, (mb_event *)ev); /* may fill the lazily encoded text: a cache, not a change */
    return 0;
}

static void mb__subscribe_replay(mb_ctx *cx, void *arg)
{
    if (!cx) { /* request failed: only release the argument */
        free(arg);
        return;
    }
    mb_sub *sub = mb_map_get(cx->b->sub_index, (const char *)arg);
    free(arg);
    if (!sub)
        return;
    json_t *rf = json_object_get(cx->params, "replayFrom");
    struct mb__replay_sub r = {.b = cx->b, .sub = sub};
    uint64_t after = 0;
    if (json_is_string(rf)) {
        if (mb_events_seq_of(cx->b, json_string_value(rf), &after))
            after = 0; /* validated in h_subscribe; trimmed meanwhile: from the oldest retained */
    } else {
        r.from_ts = json_integer_value(rf);
    }
    mb_events_scan(cx->b, after, mb__replay_sub_cb, &r);
}

static int h_subscribe(mb_ctx *cx)
{
    mb_session *s = cx->s;
    json_t *filter = NULL, *options = NULL;
    if (mp_get_obj(cx->params, "filter", 0, &filter, &cx->err) ||
        mp_get_obj(cx->params, "options", 0, &options, &cx->err))
        return cx->err.code;
    json_t *rf = json_object_get(cx->params, "replayFrom");
    if (rf && !json_is_null(rf) && !json_is_string(rf) && !json_is_integer(rf))
        return MB_FAIL(cx, MP_INVALID_PARAMS, "replayFrom", "Parameter replayFrom must be an event id or a timestamp (ms)");
    if (json_is_string(rf)) {
        uint64_t probe;
        int prc = mb_events_seq_of(cx->b, json_string_value(rf), &probe);
        if (prc == MST_EINVAL)
            return MB_FAIL(cx, MP_INVALID_PARAMS, "replayFrom", "replayFrom is not an event id (ULID) or a timestamp");
        if (prc == MST_ERANGE)
            return MB_FAIL(cx, MP_INVALID_PARAMS, "replayFrom", "replayFrom is beyond retention: events after it were trimmed");
    }
    if (s->nsubs >= cx->b->cfg->max_subscriptions)
        return MB_FAIL(cx, MP_QUOTA_EXCEEDED, "filter", "Too many subscriptions on this connection (limit %lld)",
                       cx->b->cfg->max_subscriptions);
    if (mb_auth_check_filter(cx, filter))
        return cx->err.code;
    mp_filter *f = NULL;
    if (mp_filter_compile(filter, &f, &cx->err)) {
        return cx->err.code;
    }
    mb_sub *sub = calloc(1, sizeof *sub);
    if (!sub) {
        mp_filter_free(f);
        return MB_FAIL(cx, MP_INTERNAL, NULL, "out of memory");
    }
    sub->s = s;
    sub->filter = f;
    sub->filter_json = json_incref(filter);
    sub->include_payloads = 1;
    if (mp_get_bool(options, "excludeOwnEvents", &sub->exclude_own, &cx->err) ||
        mp_get_bool(options, "includeMessagePayloads", &sub->include_payloads, &cx->err)) {
        mb__sub_free(sub);
        return cx->err.code;
    }
    mb_new_id(cx->b, NULL, sub->id, sizeof sub->id);
    sub->next = s->subs;
    s->subs = sub;
    s->nsubs++;
    mb_map_put(cx->b->sub_index, sub->id, sub);
    cx->result = json_pack("{s:s}", "subscriptionId", sub->id);
    if (rf && !json_is_null(rf)) {
        cx->after = mb__subscribe_replay;
        cx->after_arg = strdup(sub->id);
    }
    return 0;
}

static int h_unsubscribe(mb_ctx *cx)
{
    const char *id;
    if (mp_get_str(cx->params, "subscriptionId", MP_REQUIRED, &id, &cx->err))
        return cx->err.code;
    mb_sub *sub = mb_map_get(cx->b->sub_index, id);
    if (sub && sub->s != cx->s)
        return MB_FAIL(cx, MP_PERMISSION_DENIED, "subscriptionId", "Subscription %s belongs to another connection", id);
    if (sub) {
        for (mb_sub **pp = &cx->s->subs; *pp; pp = &(*pp)->next)
            if (*pp == sub) {
                *pp = sub->next;
                break;
            }
        cx->s->nsubs--;
        mb_map_del(cx->b->sub_index, id);
        mb__sub_free(sub);
    }
    /* idempotent: the SDK closes its side before the call returns */
    cx->result = json_pack("{s:{s:s, s:I}, s:b}", "subscription", "id", id, "closedAt", (json_int_t)mb_now(),
                           "unsubscribed", 1);
    return 0;
}

static int h_subscribe_ack(mb_ctx *cx)
{
    const char *id;
    long long upto = 0;
    if (mp_get_str(cx->params, "subscriptionId", MP_REQUIRED, &id, &cx->err) ||
        mp_get_int(cx->params, "upToSequence", MP_REQUIRED, &upto, &cx->err))
        return cx->err.code;
    mb_sub *sub = mb_map_get(cx->b->sub_index, id);
    if (sub && sub->s == cx->s && upto > 0 && (uint64_t)upto <= sub->seq && (uint64_t)upto > sub->acked)
        sub->acked = (uint64_t)upto;
    return 0;
}

struct mb__replay_page {
    mb_broker *b;
    mb_session *s;
    mp_filter *filter;
    int64_t from_ts, to_ts;
    size_t limit, n;
    int more;
    json_t *events;
};

static int mb__replay_page_cb(void *arg, const mb_event *ev)
{
    struct mb__replay_page *p = arg;
    if (p->from_ts && ev->ts < p->from_ts)
        return 0;
    if (p->to_ts && ev->ts > p->to_ts)
        return 1;
    mp_event_view v = {.type = ev->type, .source = ev->source, .data = mb_event_data((mb_event *)ev)};
    if (!mp_filter_match(p->filter, &v, mb_filter_env(p->b)) || !mb_event_visible(p->b, p->s, ev))
        return 0;
    if (p->n == p->limit) {
        p->more = 1;
        return 1;
    }
    const char *text = mb_event_text((mb_event *)ev);
    json_t *evj = text ? json_loadb(text, ev->text_len, 0, NULL) : NULL;
    json_t *item = json_pack("{s:s, s:I, s:o}", "eventId", ev->id, "timestamp", (json_int_t)ev->ts, "event",
                             evj ? evj : json_object());
    json_t *cb = json_object_get(evj, "causedBy");
    json_object_set_new(item, "causedBy", cb ? json_incref(cb) : json_array());
    json_array_append_new(p->events, item);
    p->n++;
    return 0;
}

static int h_replay(mb_ctx *cx)
{
    const char *after = NULL;
    json_t *filter = NULL;
    long long from = 0, to = 0, limit = 100;
    if (mp_get_str(cx->params, "afterEventId", 0, &after, &cx->err) ||
        mp_get_int(cx->params, "fromTimestamp", 0, &from, &cx->err) ||
        mp_get_int(cx->params, "toTimestamp", 0, &to, &cx->err) ||
        mp_get_int_range(cx->params, "limit", 1, 1000, &limit, &cx->err) ||
        mp_get_obj(cx->params, "filter", 0, &filter, &cx->err))
        return cx->err.code;
    if (mb_auth_check_filter(cx, filter))
        return cx->err.code;
    struct mb__replay_page p = {.b = cx->b, .s = cx->s, .from_ts = after ? 0 : from, .to_ts = to,
                                .limit = (size_t)limit};
    if (mp_filter_compile(filter, &p.filter, &cx->err))
        return cx->err.code;
    uint64_t after_seq = 0;
    int prc = after ? mb_events_seq_of(cx->b, after, &after_seq) : 0;
    if (prc == MST_EINVAL) {
        mp_filter_free(p.filter);
        return MB_FAIL(cx, MP_INVALID_PARAMS, "afterEventId", "afterEventId is not an event id (ULID)");
    }
    if (prc == MST_ERANGE) {
        char oldest[48];
        mb__oldest_id(cx->b, oldest, sizeof oldest);
        mp_filter_free(p.filter);
        return MB_FAIL(cx, MP_INVALID_PARAMS, "afterEventId",
                       "afterEventId is beyond retention: events after it were trimmed (oldest retained: %s)", oldest);
    }
    p.events = json_array();
    mb_events_scan(cx->b, after_seq, mb__replay_page_cb, &p);
    mp_filter_free(p.filter);
    cx->result = json_pack("{s:o, s:b}", "events", p.events, "hasMore", p.more);
    return 0;
}

const mb_method mb_methods_events[] = {
    {"map/subscribe", h_subscribe, 0},
    {"map/unsubscribe", h_unsubscribe, 0},
    {"map/subscribe.ack", h_subscribe_ack, 0},
    {"map/replay", h_replay, 0},
    {NULL, NULL, 0},
};
