/* Plain observer streams (docs/observers.md): WebSocket /observe and SSE.
 *
 * An observer is an mb_session with `observer` set: it gets the same bounded
 * queue and write path as a MAP peer but never dispatches requests. Each
 * mail.* event becomes one stream message, encoded once per wire form (a
 * WebSocket text frame and an SSE block) and shared by every observer of the
 * conversation. Resume is by (epoch, seq): a new stream replays the turns
 * after the requested seq from the store before going live, so a reconnecting
 * observer sees each turn exactly once. */
#include "observe.h"

#include <libwebsockets.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "mail.h"

typedef struct mb_obs {
    char *conv;          /* NULL = global feed */
    uint64_t last_seq;   /* newest seq queued to this observer */
    int overflowed;      /* fell behind: the overflow notice is queued, nothing more is */
    int catching_up;     /* replaying stored turns; live turns are read from the store too */
    int sse;
} mb_obs;

static mb_map *mb__by_conv; /* conv id -> mb_map(session serial -> mb_session*) */
static mb_map *mb__global;  /* serial -> mb_session* */

static void mb__key(const mb_session *s, char out[24])
{
    snprintf(out, 24, "%llu", (unsigned long long)s->serial);
}

/* ---- frames ---- */

/* An SSE block: optional id, event name, one data line (JSON has no raw newlines). */
static mb_frame *mb__sse_frame(const char *type, const char *id, const char *json, size_t len)
{
    char head[160];
    int n = snprintf(head, sizeof head, "%s%s%sevent: %s\ndata: ", id ? "id: " : "", id ? id : "", id ? "\n" : "",
                     type);
    mb_frame *f = mb_frame_alloc((size_t)n + len + 2);
    if (!f)
        return NULL;
    char *p = mb_frame_buf(f);
    memcpy(p, head, (size_t)n);
    memcpy(p + n, json, len);
    memcpy(p + n + len, "\n\n", 2);
    return f;
}

typedef struct mb__msg {
    json_t *j;          /* the message */
    const char *type;
    uint64_t seq;       /* turn seq (0 for updates) */
    mb_frame *ws, *sse; /* encoded lazily, shared */
    char *text;
    size_t len;
    char sse_id[64];
} mb__msg;

static void mb__msg_encode(mb__msg *m)
{
    if (!m->text)
        m->text = mp_dump(m->j, 0, &m->len);
}

static mb_frame *mb__msg_frame(mb__msg *m, int sse)
{
    mb__msg_encode(m);
    if (!m->text)
        return NULL;
    if (sse) {
        if (!m->sse)
            m->sse = mb__sse_frame(m->type, m->seq ? m->sse_id : NULL, m->text, m->len);
        return m->sse;
    }
    if (!m->ws)
        m->ws = mb_frame_text(m->text, m->len);
    return m->ws;
}

static void mb__msg_free(mb__msg *m)
{
    json_decref(m->j);
    mb_frame_unref(m->ws);
    mb_frame_unref(m->sse);
    free(m->text);
}

static void mb__push(mb_broker *b, mb_session *s, mb__msg *m)
{
    mb_obs *o = s->obs;
    mb_frame *f = mb__msg_frame(m, o->sse);
    if (!f)
        return;
    if (o->overflowed)
        return; /* the stream has a gap and ends with the overflow notice */
    int rc = mb_session_send(s, f, MB_Q_EVENT);
    if (rc == 0) {
        if (m->seq)
            o->last_seq = m->seq;
        return;
    }
    if (rc == 1 && !o->overflowed) {
        /* tell it where to resume; this notice itself is never dropped */
        o->overflowed = 1;
        mb__msg n = {.type = "overflow",
                     .j = json_pack("{s:s, s:s, s:I}", "type", "overflow", "epoch", mst_epoch(b->store), "resumeAfter",
                                    (json_int_t)o->last_seq)};
        if (o->conv)
            json_object_set_new(n.j, "conversationId", json_string(o->conv));
        mb_frame *nf = mb__msg_frame(&n, o->sse);
        if (nf)
            mb_session_send(s, nf, MB_Q_RESPONSE);
        mb__msg_free(&n);
        /* its stream now has a gap: end it once the notice is out (it resumes
         * from resumeAfter); a reader that never drains is cut at the deadline */
        mb_session_close_after_flush(s, 1008, "overflow");
        mb_warn(s->session_id, "observer fell behind; overflow notice sent (resume after seq %llu)",
                (unsigned long long)o->last_seq);
    }
}

static void mb__fanout(mb_broker *b, mb_map *set, mb__msg *m)
{
    if (!set)
        return;
    MB_MAP_FOREACH(set, e)
    {
        mb_session *s = mb_map_val(e);
        if (s->wsi && s->state != MB_CLOSED)
            mb__push(b, s, m);
    }
}

/* ---- building messages ---- */

static json_t *mb__snapshot(mb_broker *b, mb_conv *c)
{
    json_t *parts = json_array(), *threads = json_array(), *kids = json_array();
    MB_MAP_FOREACH(c->parts, e) json_array_append(parts, ((mb_part *)mb_map_val(e))->doc);
    MB_MAP_FOREACH(c->threads, e)
    {
        json_t *t = json_deep_copy(((mb_thread *)mb_map_val(e))->doc);
        json_object_del(t, "_meta");
        json_array_append_new(threads, t);
    }
    MB_MAP_FOREACH(c->children, e) json_array_append(kids, ((mb_conv *)mb_map_val(e))->doc);
    return json_pack("{s:s, s:s, s:s, s:O, s:o, s:o, s:o}", "type", "conversation_update", "conversationId", c->id,
                     "reason", "snapshot", "conversation", c->doc, "participants", parts, "threads", threads,
                     "children", kids);
}

void mb_observe_on_event(mb_broker *b, const mb_event *ev)
{
    if (!ev->conv_id || (!mb__by_conv && !mb__global))
        return;
    mb_conv *c = mb_conv_get(b, ev->conv_id);
    if (!c)
        return;
    mb_map *set = mb__by_conv ? mb_map_get(mb__by_conv, c->id) : NULL;
    const char *t = ev->type + 5; /* past "mail." */
    if (!strcmp(t, "turn.added") && !set)
        return; /* nobody watches: the data is not even parsed back (mb_emit_text) */
    json_t *data = mb_event_data((mb_event *)ev);
    if (!strcmp(t, "turn.added")) {
        json_t *turn = json_object_get(data, "turn");
        uint64_t seq = (uint64_t)json_integer_value(json_object_get(data, "seq"));
        mb__msg m = {.type = "turn_added", .seq = seq,
                     .j = json_pack("{s:s, s:s, s:s, s:I, s:O}", "type", "turn_added", "conversationId", c->id, "epoch",
                                    mst_epoch(b->store), "seq", (json_int_t)seq, "turn", turn)};
        snprintf(m.sse_id, sizeof m.sse_id, "%s:%llu", mst_epoch(b->store), (unsigned long long)seq);
        MB_MAP_FOREACH(set, e)
        {
            mb_session *s = mb_map_val(e);
            mb_obs *o = s->obs;
            if (s->wsi && s->state != MB_CLOSED && !o->catching_up) /* catch-up reads it from the store */
                mb__push(b, s, &m);
        }
        mb__msg_free(&m);
        return;
    }
    const char *reason = !strcmp(t, "created")                ? "created"
                         : !strcmp(t, "closed")               ? "closed"
                         : !strcmp(t, "reopened")             ? "reopened"
                         : !strcmp(t, "participant.joined")   ? "participant_joined"
                         : !strcmp(t, "participant.left")     ? "participant_left"
                         : !strcmp(t, "thread.created")       ? "thread_created"
                         : !strcmp(t, "summary.generated")    ? "summary"
                                                              : NULL;
    if (!reason)
        return;
    mb__msg m = {.type = "conversation_update",
                 .j = json_pack("{s:s, s:s, s:s, s:O}", "type", "conversation_update", "conversationId", c->id,
                                "reason", reason, "conversation", c->doc)};
    static const char *extra[] = {"participant", "participantId", "thread", "summary", "closedBy", "reason", NULL};
    for (int i = 0; extra[i]; i++)
        if (strcmp(extra[i], "reason"))
            mp_copy_key(m.j, data, extra[i]);
    if (json_object_get(data, "reason"))
        json_object_set(m.j, "closeReason", json_object_get(data, "reason"));
    mb__fanout(b, set, &m);
    /* the global feed also learns about new child conversations under the parent */
    mb__fanout(b, mb__global, &m);
    mb__msg_free(&m);
}

/* ---- opening a stream ---- */

static void mb__send_now(mb_broker *b, mb_session *s, const char *type, json_t *j_stolen)
{
    mb__msg m = {.type = type, .j = j_stolen};
    mb_frame *f = mb__msg_frame(&m, ((mb_obs *)s->obs)->sse);
    if (f)
        mb_session_send(s, f, MB_Q_RESPONSE);
    mb__msg_free(&m);
}

struct mb__replay {
    mb_broker *b;
    mb_session *s;
    mb_conv *c;
    size_t n;
};

static int mb__replay_cb(void *arg, const struct mst_turn *t)
{
    struct mb__replay *r = arg;
    /* The stored turn text goes into the envelope as is: no parse, no re-encode
     * (ids and the epoch are broker-made ULIDs, safe to print unescaped). */
    const char *ep = mst_epoch(r->b->store);
    char head[256];
    int hn = snprintf(head, sizeof head,
                      "{\"type\":\"turn_added\",\"conversationId\":\"%s\",\"epoch\":\"%s\",\"seq\":%llu,\"turn\":",
                      r->c->id, ep, (unsigned long long)t->seq);
    mb__msg m = {.type = "turn_added", .seq = t->seq};
    m.len = (size_t)hn + t->len + 1;
    m.text = malloc(m.len + 1);
    if (!m.text || hn <= 0 || (size_t)hn >= sizeof head) {
        free(m.text);
        return 1;
    }
    memcpy(m.text, head, (size_t)hn);
    memcpy(m.text + hn, t->json, t->len);
    m.text[m.len - 1] = '}';
    m.text[m.len] = '\0';
    snprintf(m.sse_id, sizeof m.sse_id, "%s:%llu", ep, (unsigned long long)t->seq);
    mb__push(r->b, r->s, &m);
    mb__msg_free(&m);
    r->n++;
    mb_session *s = r->s;
    mb_broker *b = r->b;
    /* stop at half the limits: the pump continues as the queue drains */
    return ((mb_obs *)s->obs)->overflowed || s->q_count >= (size_t)b->cfg->queue_max_count / 2 ||
           s->q_bytes >= (size_t)b->cfg->queue_max_bytes / 2;
}

static int mb__fail(mb_broker *b, mb_session *s, const char *code, const char *msg)
{
    mb__send_now(b, s, "error", json_pack("{s:s, s:s, s:s}", "type", "error", "code", code, "message", msg));
    mb_session_close_after_flush(s, 1008, code);
    mb_info(s->session_id, "observer refused: %s (%s)", code, msg);
    return 0;
}

int mb_observe_open(mb_broker *b, mb_session *s, const char *conv_id, const char *after, const char *epoch, int sse)
{
    mb_obs *o = calloc(1, sizeof *o);
    if (!o)
        return -1;
    o->sse = sse;
    s->obs = o;
    s->observer = 1;
    s->state = MB_READY;
    char key[24];
    mb__key(s, key);
    const char *ep = mst_epoch(b->store);
    if (!conv_id || !*conv_id) {
        if (!mb__global)
            mb__global = mb_map_new();
        mb_map_put(mb__global, key, s);
        mb__send_now(b, s, "hello", json_pack("{s:s, s:s}", "type", "hello", "epoch", ep));
        mb_debug(s->session_id, "global observer attached");
        return 0;
    }
    o->conv = strdup(conv_id);
    mb_conv *c = mb_conv_get(b, conv_id);
    if (!c)
        return mb__fail(b, s, "not_found", "no such conversation");
    if (!mb_mail_may_read(s, c))
        return mb__fail(b, s, "forbidden", "this principal may not observe the conversation");
    if (epoch && *epoch && strcmp(epoch, ep))
        return mb__fail(b, s, "epoch_mismatch", "the position is from another store epoch; start again from 0");
    char *end = NULL;
    unsigned long long from = after && *after ? strtoull(after, &end, 10) : 0;
    if (after && *after && (!end || *end))
        return mb__fail(b, s, "bad_request", "after must be a turn sequence number");
    if (from > c->last_seq)
        return mb__fail(b, s, "position_out_of_range", "after is beyond the newest turn of this conversation");
    mb__send_now(b, s, "hello",
                 json_pack("{s:s, s:s, s:s, s:I}", "type", "hello", "epoch", ep, "conversationId", c->id, "lastSeq",
                           (json_int_t)c->last_seq));
    mb__send_now(b, s, "conversation_update", mb__snapshot(b, c));
    o->last_seq = from;
    o->catching_up = 1;
    if (!mb__by_conv)
        mb__by_conv = mb_map_new();
    mb_map *set = mb_map_get(mb__by_conv, c->id);
    if (!set) {
        set = mb_map_new();
        mb_map_put(mb__by_conv, c->id, set);
    }
    mb_map_put(set, key, s);
    mb_debug(s->session_id, "observer attached to %s after seq %llu", c->id, from);
    mb_observe_pump(b, s);
    return 0;
}

/* Catch-up with backpressure: queue stored turns only while the connection's
 * queue is below half its limits, in small batches; called again from the
 * writeable callback as the queue drains. Turns recorded meanwhile are read
 * from the store too, so the observer goes live exactly at the newest turn. */
void mb_observe_pump(mb_broker *b, mb_session *s)
{
    mb_obs *o = s->obs;
    if (!o || !o->catching_up || o->overflowed || !o->conv)
        return;
    mb_conv *c = mb_conv_get(b, o->conv);
    if (!c) {
        o->catching_up = 0;
        return;
    }
    while (s->wsi && !o->overflowed) {
        if (s->q_count >= (size_t)b->cfg->queue_max_count / 2 || s->q_bytes >= (size_t)b->cfg->queue_max_bytes / 2)
            return; /* resume when the queue drains */
        if (o->last_seq >= c->last_seq) {
            o->catching_up = 0; /* caught up: live from here */
            return;
        }
        struct mb__replay r = {.b = b, .s = s, .c = c};
        mb_mail_scan_turns(b, c, o->last_seq, 16, mb__replay_cb, &r);
        if (!r.n) {
            o->catching_up = 0;
            return;
        }
    }
}

void mb_observe_close(mb_broker *b, mb_session *s)
{
    mb_obs *o = s->obs;
    if (!o)
        return;
    char key[24];
    mb__key(s, key);
    if (o->conv && mb__by_conv) {
        mb_map *set = mb_map_get(mb__by_conv, o->conv);
        if (set) {
            mb_map_del(set, key);
            if (!mb_map_size(set)) {
                mb_map_del(mb__by_conv, o->conv);
                mb_map_free(set, NULL);
            }
        }
    } else if (mb__global) {
        mb_map_del(mb__global, key);
    }
    free(o->conv);
    free(o);
    s->obs = NULL;
}

void mb_observe_free(void)
{
    if (mb__by_conv) {
        MB_MAP_FOREACH(mb__by_conv, e) mb_map_free(mb_map_val(e), NULL);
        mb_map_free(mb__by_conv, NULL);
    }
    mb_map_free(mb__global, NULL);
    mb__by_conv = mb__global = NULL;
}

int mb_observe_is_sse(const mb_session *s)
{
    return s->obs && ((mb_obs *)s->obs)->sse;
}

void mb_observe_keepalive(mb_broker *b)
{
    static mb_frame *ka;
    if (!ka)
        ka = mb_frame_text(": keepalive\n\n", 13);
    if (!ka)
        return;
    MB_MAP_FOREACH(b->sessions, e)
    {
        mb_session *s = mb_map_val(e);
        if (s->wsi && mb_observe_is_sse(s) && !s->q_head)
            mb_session_send(s, ka, MB_Q_EVENT);
    }
}
