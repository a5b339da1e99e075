/* Sessions: one per MAP connection. Owns the inbound reassembly buffer and the
 * bounded outbound queue; turns complete messages into dispatch calls.
 *
 * Queue discipline (lws rules): frames are only written from the WRITEABLE
 * callback, several frames per write and large frames across several writes
 * (mb_session_on_writeable), and the callback re-arms itself while work
 * remains.
 * A frame is releasable only when the store transaction it was produced in
 * (or the newest one before it) is durable (qent.gen <= broker.committed_gen). */
#include <libwebsockets.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "compat.h"
#include "mb.h"
#include "observe.h"

#define MB_WRITE_CHUNK (64 * 1024)
/* spare queue entries kept for reuse: enough for a few events to a few
 * thousand observers (32 bytes each) */
#define MB_QENT_SPARE 16384

/* Under AddressSanitizer a spare entry is poisoned, so a use after release is
 * still reported as one. */
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define MB_POISON(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define MB_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define MB_POISON(p, n) ((void)(p), (void)(n))
#define MB_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

/* ---- frames ---- */

mb_frame *mb_frame_alloc(size_t len)
{
    mb_frame *f = malloc(sizeof *f);
    if (!f)
        return NULL;
    f->mem = malloc(LWS_PRE + len + 1);
    if (!f->mem) {
        free(f);
        return NULL;
    }
    f->mem[LWS_PRE + len] = '\0';
    f->len = len;
    f->refs = 1;
    return f;
}

char *mb_frame_buf(mb_frame *f) { return f->mem + LWS_PRE; }

mb_frame *mb_frame_text(const char *text, size_t len)
{
    mb_frame *f = mb_frame_alloc(len);
    if (!f)
        return NULL;
    memcpy(f->mem + LWS_PRE, text, len);
    f->mem[LWS_PRE + len] = '\0';
    f->len = len;
    f->refs = 1;
    return f;
}

mb_frame *mb_frame_json(const json_t *j)
{
    mb_frame *f = malloc(sizeof *f);
    if (!f)
        return NULL;
    f->mem = mp_dump(j, LWS_PRE, &f->len);
    if (!f->mem) {
        free(f);
        return NULL;
    }
    f->refs = 1;
    return f;
}

const char *mb_frame_data(const mb_frame *f) { return f->mem + LWS_PRE; }
void mb_frame_ref(mb_frame *f) { f->refs++; }

void mb_frame_unref(mb_frame *f)
{
    if (f && --f->refs == 0) {
        free(f->mem);
        free(f);
    }
}

/* ---- sessions ---- */

const char *mb_session_from(const mb_session *s)
{
    return s->primary_agent ? s->primary_agent : s->participant_id;
}

mb_session *mb_session_new(mb_broker *b, struct lws *wsi, const char *peer, int tls)
{
    mb_session *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->b = b;
    s->wsi = wsi;
    s->serial = ++b->next_serial;
    s->owned = mb_map_new();
    s->tls = tls;
    snprintf(s->peer, sizeof s->peer, "%s", peer ? peer : "?");
    s->created_at = s->last_active = mb_now();
    mb_new_id(b, NULL, s->session_id, sizeof s->session_id);
    if (!s->owned) {
        free(s);
        return NULL;
    }
    mb_map_put(b->sessions, s->session_id, s);
    b->stats.connections_total++;
    b->stats.connections_open++;
    return s;
}

static void mb__wake(mb_session *s)
{
    if (s->wsi)
        lws_callback_on_writable(s->wsi);
}

int mb_session_send(mb_session *s, mb_frame *f, enum mb_qkind kind)
{
    mb_broker *b = s->b;
    if (s->state == MB_CLOSED || !s->wsi)
        return -1; /* closed or detached: the peer replays what it missed after resuming */
    if (kind != MB_Q_RESPONSE &&
        (s->q_count >= (size_t)b->cfg->queue_max_count || s->q_bytes + f->len > (size_t)b->cfg->queue_max_bytes)) {
        /* Slow consumer: drop notifications, never responses. The subscription's
         * sequenceNumber keeps counting, so the SDK sees the gap and can replay. */
        s->dropped++;
        b->stats.events_dropped++;
        if (!s->full_since)
            s->full_since = mb_now();
        return 1;
    }
    mb_qent *q = b->qent_free;
    if (q) {
        MB_UNPOISON(q, sizeof *q);
        b->qent_free = q->next;
        b->qent_free_n--;
    } else if (!(q = malloc(sizeof *q))) {
        return 1;
    }
    mb_frame_ref(f);
    q->f = f;
    q->next = NULL;
    q->off = 0;
    q->kind = kind;
    /* the open group, or the newest committed one: a frame produced outside
     * a transaction may still show what that group wrote, so it waits until
     * the group is durable too (at once unless a sync is pending) */
    q->gen = b->txn_gen;
    if (!s->q_head)
        s->progress_at = mb_now();
    if (s->q_tail)
        s->q_tail->next = q;
    else
        s->q_head = q;
    s->q_tail = q;
    s->q_count++;
    s->q_bytes += f->len;
    if (q->gen > b->committed_gen) {
        if (!s->in_wake_list) {
            s->in_wake_list = 1;
            s->wake_next = b->wake_list;
            b->wake_list = s;
        }
    } else {
        mb__wake(s);
    }
    return 0;
}

int mb_session_send_json(mb_session *s, const json_t *j, enum mb_qkind kind)
{
    mb_frame *f = mb_frame_json(j);
    if (!f)
        return -1;
    int rc = mb_session_send(s, f, kind);
    mb_frame_unref(f);
    return rc;
}

void mb_session_close_after_flush(mb_session *s, int code, const char *reason)
{
    s->close_after_flush = code ? code : LWS_CLOSE_STATUS_NORMAL;
    if (s->wsi && !s->q_head)
        lws_callback_on_writable(s->wsi);
}

static void mb__queue_pop(mb_session *s)
{
    mb_broker *b = s->b;
    mb_qent *q = s->q_head;
    s->q_head = q->next;
    if (!s->q_head)
        s->q_tail = NULL;
    s->q_count--;
    s->q_bytes -= q->f->len;
    mb_frame_unref(q->f);
    if (b->qent_free_n < MB_QENT_SPARE) {
        q->next = b->qent_free;
        b->qent_free = q;
        b->qent_free_n++;
        MB_POISON(q, sizeof *q);
    } else {
        free(q);
    }
    if (s->full_since && s->q_count < (size_t)b->cfg->queue_max_count / 2 &&
        s->q_bytes < (size_t)b->cfg->queue_max_bytes / 2)
        s->full_since = 0;
}

void mb_session_spares_free(mb_broker *b)
{
    while (b->qent_free) {
        mb_qent *q = b->qent_free;
        MB_UNPOISON(q, sizeof *q);
        b->qent_free = q->next;
        free(q);
    }
    b->qent_free_n = 0;
}

static void mb__queue_clear(mb_session *s)
{
    while (s->q_head)
        mb__queue_pop(s);
}

/* Federation links we dialed are WebSocket clients: their frames must be
 * masked, so lws frames them. One chunk of the head frame per call; returns 1
 * if a whole frame was finished, 0 if only a fragment went out, -1 on error. */
static int mb__write_one_client(mb_session *s, mb_qent *q)
{
    mb_broker *b = s->b;
    size_t left = q->f->len - q->off;
    size_t n = left > MB_WRITE_CHUNK ? MB_WRITE_CHUNK : left;
    int first = q->off == 0, last = n == left;
    enum lws_write_protocol wp = lws_write_ws_flags(LWS_WRITE_TEXT, first, last);
    /* lws needs LWS_PRE writable bytes in front of the chunk; for continuation
     * fragments the bytes in front are already-sent payload, which we may clobber. */
    unsigned char *p = (unsigned char *)q->f->mem + LWS_PRE + q->off;
    unsigned char save[LWS_PRE];
    if (!first)
        memcpy(save, p - LWS_PRE, LWS_PRE);
    int m = lws_write(s->wsi, p, n, wp);
    if (!first)
        memcpy(p - LWS_PRE, save, LWS_PRE); /* frames are shared: restore what lws overwrote */
    if (m < (int)n) {
        mb_warn(s->session_id, "write failed (%d of %zu bytes); closing", m, n);
        return -1;
    }
    b->stats.bytes_out += n;
    s->progress_at = mb_now();
    q->off += n;
    if (!last)
        return 0;
    b->stats.frames_out++;
    mb__queue_pop(s);
    return 1;
}

/* Size of the server-side WebSocket frame header for a payload of len bytes. */
static size_t mb__ws_header_len(size_t len)
{
    return len < 126 ? 2 : len < 65536 ? 4 : 10;
}

/* Write that header (unmasked, FIN, text) into h; returns its size. */
static size_t mb__ws_header(unsigned char *h, size_t len)
{
    size_t hl = mb__ws_header_len(len);
    h[0] = 0x81;
    if (hl == 2) {
        h[1] = (unsigned char)len;
    } else if (hl == 4) {
        h[1] = 126;
        h[2] = (unsigned char)(len >> 8);
        h[3] = (unsigned char)len;
    } else {
        h[1] = 127;
        for (int i = 0; i < 8; i++)
            h[2 + i] = (unsigned char)((uint64_t)len >> (56 - 8 * i));
    }
    return hl;
}

/* Copy whole frames from the releasable head of the queue into out (at most
 * MB_WRITE_CHUNK bytes), each WebSocket frame with its header; SSE sessions
 * get the bytes without framing. Stops before a frame that does not fit. */
static size_t mb__gather(mb_session *s, unsigned char *out, int sse)
{
    mb_broker *b = s->b;
    size_t n = 0;
    for (mb_qent *q = s->q_head; q && q->gen <= b->committed_gen; q = s->q_head) {
        size_t hl = sse ? 0 : mb__ws_header_len(q->f->len);
        if (n + hl + q->f->len > MB_WRITE_CHUNK)
            break;
        if (!sse)
            mb__ws_header(out + n, q->f->len);
        memcpy(out + n + hl, mb_frame_data(q->f), q->f->len);
        n += hl + q->f->len;
        b->stats.bytes_out += q->f->len;
        b->stats.frames_out++;
        mb__queue_pop(s);
        if (s->obs)
            mb_observe_pump(b, s); /* an observer catching up refills as it drains */
    }
    return n;
}

/* A frame too big for one chunk goes out in one lws_write from its own
 * memory, header in the LWS_PRE headroom (the same bytes for every recipient
 * of a shared frame). lws sends what the socket takes and keeps the rest in
 * its own buffer, which it drains before anything else, pings and pongs
 * included, so no control frame can land inside this one. */
static int mb__write_big(mb_session *s, int sse)
{
    mb_broker *b = s->b;
    mb_qent *q = s->q_head;
    unsigned char h[10];
    size_t hl = sse ? 0 : mb__ws_header(h, q->f->len);
    unsigned char *p = (unsigned char *)q->f->mem + LWS_PRE - hl;
    memcpy(p, h, hl);
    size_t n = hl + q->f->len;
    if (lws_write(s->wsi, p, n, LWS_WRITE_HTTP) < (int)n)
        return -1;
    b->stats.bytes_out += q->f->len;
    b->stats.frames_out++;
    mb__queue_pop(s);
    if (s->obs)
        mb_observe_pump(b, s);
    return 0;
}

/* Write queued frames while the socket takes them, several frames per write:
 * a connection with many small frames waiting (a busy receiver, an observer
 * of a busy conversation) costs one send() per MB_WRITE_CHUNK bytes instead of
 * one per frame. The frames are written raw (LWS_WRITE_HTTP skips lws's own
 * framing) and every lws_write carries whole frames only: lws keeps whatever
 * the kernel does not take and flushes it before anything else, so frames
 * never interleave with each other or with lws's pings, pongs and close.
 * Each write goes out only when lws_send_pipe_choked() says there is room.
 * Bounded per callback so one busy connection cannot starve the others. */
int mb_session_on_writeable(mb_session *s)
{
    mb_broker *b = s->b;
    mb_qent *q = s->q_head;
    if (!q || q->gen > b->committed_gen) {
        if (!q && s->close_after_flush) {
            if (!mb_observe_is_sse(s))
                lws_close_reason(s->wsi, (enum lws_close_status)s->close_after_flush, NULL, 0);
            return -1;
        }
        return 0; /* spurious, or waiting for a commit */
    }
    if (!b->wbuf && !(b->wbuf = malloc(LWS_PRE + MB_WRITE_CHUNK)))
        return 0;
    for (int i = 0; i < 8; i++) {
        if (s->peer_system) {
            if (mb__write_one_client(s, q) < 0)
                return -1;
        } else {
            int sse = mb_observe_is_sse(s);
            unsigned char *out = b->wbuf + LWS_PRE;
            size_t n = mb__gather(s, out, sse);
            if (n && lws_write(s->wsi, out, n, LWS_WRITE_HTTP) < (int)n) {
                mb_warn(s->session_id, "write failed (%zu bytes); closing", n);
                return -1;
            }
            if (!n && mb__write_big(s, sse)) { /* the head frame alone is bigger than a chunk */
                mb_warn(s->session_id, "write failed (%zu bytes); closing", q->f->len);
                return -1;
            }
            s->progress_at = mb_now();
        }
        q = s->q_head;
        if (!q || q->gen > b->committed_gen || lws_send_pipe_choked(s->wsi))
            break; /* nothing releasable, or the socket is full */
    }
    if ((s->q_head && s->q_head->gen <= b->committed_gen) || (!s->q_head && s->close_after_flush))
        lws_callback_on_writable(s->wsi);
    return 0;
}

/* ---- inbound ---- */

static int mb__rate_limited(mb_session *s, int64_t now)
{
    long long limit = s->b->cfg->rate_limit;
    if (limit <= 0)
        return 0;
    if (now - s->rl_window_start >= 1000) {
        s->rl_window_start = now;
        s->rl_count = 0;
    }
    return ++s->rl_count > limit;
}

static void mb__send_error(mb_session *s, json_t *id, const mp_err *e)
{
    json_t *r = mp_rpc_error(id, e);
    mb_session_send_json(s, r, MB_Q_RESPONSE);
    json_decref(r);
    s->b->stats.errors++;
}

void mb_session_on_message(mb_session *s, const char *buf, size_t len)
{
    mb_broker *b = s->b;
    int64_t now = mb_now();
    s->last_active = now;
    b->stats.frames_in++;
    if (s->observer)
        return; /* plain observers only listen */
    b->stats.bytes_in += len;

    mp_msg m;
    json_t *bad_id = NULL;
    mp_err e;
    mp_err_clear(&e);
    if (mp_rpc_parse(buf, len, &b->limits, &m, &bad_id, &e)) {
        b->stats.parse_errors++;
        mb_debug(s->session_id, "bad message: %s", e.message);
        if (e.code == MP_INVALID_PARAMS && !bad_id) {
            /* a notification with malformed params: notifications are never answered */
            return;
        }
        mb__send_error(s, bad_id, &e);
        json_decref(bad_id);
        return;
    }
    if (m.kind == MP_KIND_RESPONSE) { /* only outbound federation links send requests */
        if (s->peer_system)
            mb_federation_on_response(s, &m);
        mp_msg_free(&m);
        return;
    }
    if (mb__rate_limited(s, now)) {
        b->stats.rate_limited++;
        if (m.kind == MP_KIND_REQUEST) {
            mp_err_set(&e, MP_RATE_LIMITED, NULL, "Rate limited: more than %lld requests per second",
                       b->cfg->rate_limit);
            e.retry_after_ms = 1000 - (now - s->rl_window_start);
            if (e.retry_after_ms < 1)
                e.retry_after_ms = 1;
            mb__send_error(s, m.id, &e);
        }
        mp_msg_free(&m);
        return;
    }
    mb_dispatch(s, &m);
    mp_msg_free(&m);
    if (b->txn_open && b->cfg->commit_window_us == 0)
        mb_broker_commit_now(b); /* no group commit: release the reply and the events now */
}

/* ---- close / destroy / resume ---- */

static void mb__forget(mb_session *s)
{
    mb_broker *b = s->b;
    if (mb_map_get(b->sessions, s->session_id) == s)
        mb_map_del(b->sessions, s->session_id);
    if (s->participant_id[0] && mb_map_get(b->participants, s->participant_id) == s)
        mb_map_del(b->participants, s->participant_id);
    if (s->resume_token[0] && mb_map_get(b->resume_tokens, s->resume_token) == s)
        mb_map_del(b->resume_tokens, s->resume_token);
}

void mb_session_destroy(mb_session *s, const char *reason)
{
    mb_broker *b = s->b;
    if (s->state == MB_CLOSED)
        return;
    char ev_id[MP_ULID_LEN + 1] = "";
    mb_observe_close(b, s);
    if (s->state == MB_READY && !s->observer) {
        json_t *d = json_pack("{s:s, s:s}", "participantId", s->participant_id, "participantType",
                              s->ptype == MB_PT_AGENT     ? "agent"
                              : s->ptype == MB_PT_GATEWAY ? "gateway"
                              : s->ptype == MB_PT_SYSTEM  ? "system"
                                                          : "client");
        if (reason)
            json_object_set_new(d, "reason", json_string(reason));
        mb_emit(b, "participant_disconnected", s->participant_id, d, NULL, ev_id);
    }
    mb_subs_drop_session(b, s);

    /* Owned agents: disconnectPolicy.agentBehavior (default unregister). */
    const char *behavior = json_string_value(json_object_get(s->disconnect_policy, "agentBehavior"));
    int orphan = behavior && !strcmp(behavior, "orphan");
    mb_map_ent *e = mb_map_first(s->owned);
    while (e) {
        mb_map_ent *next = mb_map_next(e);
        mb_agent *a = mb_map_val(e);
        mb_map_del(s->owned, mb_map_key(e));
        if (a->session == s) {
            if (orphan) {
                char prev[MB_ID_BUF];
                snprintf(prev, sizeof prev, "%s", a->owner ? a->owner : "");
                free(a->owner);
                a->owner = NULL;
                a->session = NULL;
                free(a->prev_state);
                a->prev_state = a->state;
                a->state = strdup("orphaned");
                mb_agent_doc(a);
                mb_agent_persist(b, a);
                mb_emit(b, "agent_orphaned", a->id, json_pack("{s:s, s:s}", "agentId", a->id, "previousOwner", prev),
                        ev_id[0] ? ev_id : NULL, NULL);
            } else {
                mb_agent_remove(b, a, "owner_disconnected", ev_id[0] ? ev_id : NULL);
            }
        }
        e = next;
    }
    mb__forget(s);
    mb__queue_clear(s);
    s->state = MB_CLOSED;
    if (s->wsi) {
        /* still connected (session closed while its socket is up): detach the
         * socket from this session and drop it asynchronously */
        void *pss = lws_wsi_user(s->wsi);
        if (pss)
            *(mb_session **)pss = NULL;
        lws_set_timeout(s->wsi, PENDING_TIMEOUT_CLOSE_SEND, LWS_TO_KILL_ASYNC);
        s->wsi = NULL;
        b->stats.connections_open--;
    }
    s->next_dead = b->graveyard;
    b->graveyard = s;
}

void mb_session_on_close(mb_session *s)
{
    mb_broker *b = s->b;
    s->wsi = NULL;
    if (s->state == MB_CLOSED)
        return;
    b->stats.connections_open--;
    mb__queue_clear(s);
    free(s->rx);
    s->rx = NULL;
    s->rx_len = s->rx_cap = 0;
    if (s->state == MB_READY && !s->observer && !s->peer_system && b->cfg->resume_window_ms > 0 && !b->stopping && !s->final_close) {
        s->detached = 1;
        s->detached_at = mb_now();
        mb_info(s->session_id, "connection closed; session kept %lld ms for resume", b->cfg->resume_window_ms);
        return;
    }
    mb_session_destroy(s, "closed");
}

mb_session *mb_session_resume(mb_session *fresh, mb_session *old)
{
    mb_broker *b = fresh->b;
    if (old->wsi && old->wsi != fresh->wsi) {
        /* the old socket is still up (half-open?): the new one wins */
        struct lws *ow = old->wsi;
        old->wsi = NULL;
        void *pss = lws_wsi_user(ow);
        if (pss)
            *(mb_session **)pss = NULL;
        lws_set_timeout(ow, PENDING_TIMEOUT_CLOSE_SEND, LWS_TO_KILL_ASYNC);
        b->stats.connections_open--;
    }
    old->wsi = fresh->wsi;
    old->detached = 0;
    old->close_after_flush = 0; /* a map/disconnect before the drop does not carry over */
    old->final_close = 0;
    old->detached_at = 0;
    old->tls = fresh->tls;
    snprintf(old->peer, sizeof old->peer, "%s", fresh->peer);
    old->last_active = mb_now();
    void *pss = lws_wsi_user(fresh->wsi);
    if (pss)
        *(mb_session **)pss = old;
    /* the fresh session never became ready: retire it without events */
    fresh->wsi = NULL;
    mb__forget(fresh);
    fresh->state = MB_CLOSED;
    fresh->next_dead = b->graveyard;
    b->graveyard = fresh;
    return old;
}

void mb_session_free(mb_session *s)
{
    mb__queue_clear(s);
    mb_map_free(s->owned, NULL);
    free(s->primary_agent);
    free(s->name);
    free(s->peer_system);
    free(s->rx);
    json_decref(s->disconnect_policy);
    json_decref(s->principal.agents);
    json_decref(s->principal.conversations);
    json_decref(s->principal.types);
    mb_compat_session_free(s); /* the URL credential, if map/connect never used it */
    free(s);
}

void mb_session_mark_final(mb_session *s)
{
    s->final_close = 1;
}
