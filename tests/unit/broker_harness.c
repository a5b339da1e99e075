/* broker_harness.c - see broker_harness.h. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <libwebsockets.h>

#include "auth.h"
#include "broker_harness.h"
#include "mb.h"

/* ---- lws stubs: the core only calls these on a live socket; ours are fake ---- */

int lws_callback_on_writable(struct lws *wsi)
{
    (void)wsi;
    return 0;
}

void *lws_wsi_user(struct lws *wsi)
{
    (void)wsi;
    return NULL;
}

void lws_set_timeout(struct lws *wsi, enum pending_timeout reason, int secs)
{
    (void)wsi;
    (void)reason;
    (void)secs;
}

void lws_close_reason(struct lws *wsi, enum lws_close_status status, unsigned char *buf, size_t len)
{
    (void)wsi;
    (void)status;
    (void)buf;
    (void)len;
}

static char bh__fake_socket;
#define BH_WSI ((struct lws *)(void *)&bh__fake_socket)

/* ---- harness state ---- */

#define BH_MAX_SESSIONS 128

struct bh_slot {
    mb_session *s;
    json_t *inbox; /* array of parsed frames */
};

struct bh {
    mb_config cfg;
    mb_broker b;
    struct bh_slot slots[BH_MAX_SESSIONS];
    long long next_id;
};

mb_broker *bh_broker(bh *h) { return &h->b; }

bh *bh_new(const char *const *extra)
{
    bh *h = calloc(1, sizeof *h);
    if (!h)
        fail_msg("bh_new: out of memory");
    char *args[64];
    int n = 0;
    /* an explicit window, so that the tests see the group commit's hold-back
     * (memory: alone would commit after each request: commit-window-us auto) */
    static const char *base[] = {"mapbroker_unit", "--store", "memory:", "--log-level", "error",
                                 "--commit-window-us", "1000", NULL};
    for (int i = 0; base[i]; i++)
        args[n++] = (char *)base[i];
    for (int i = 0; extra && extra[i] && n < 62; i++)
        args[n++] = (char *)extra[i];
    args[n] = NULL;
    if (mb_config_load(&h->cfg, n, args) != 0)
        fail_msg("bh_new: mb_config_load failed");
    mb_log_level = mb_log_parse_level("error");
    char err[512] = "";
    if (mb_broker_init(&h->b, &h->cfg, err, sizeof err) != 0)
        fail_msg("bh_new: mb_broker_init: %s", err);
    if (mb_auth_init(&h->b, err, sizeof err) != 0)
        fail_msg("bh_new: mb_auth_init: %s", err);
    h->next_id = 1000;
    return h;
}

void bh_free(bh *h)
{
    if (!h)
        return;
    for (int i = 0; i < BH_MAX_SESSIONS; i++)
        json_decref(h->slots[i].inbox);
    mb_auth_free(&h->b);
    mb_broker_free(&h->b);
    mb_config_free(&h->cfg);
    free(h);
}

static struct bh_slot *bh__slot(bh *h, mb_session *s)
{
    for (int i = 0; i < BH_MAX_SESSIONS; i++)
        if (h->slots[i].s == s)
            return &h->slots[i];
    fail_msg("harness: session %p is not tracked (closed?)", (void *)s);
    return NULL;
}

static void bh__track(bh *h, mb_session *s)
{
    for (int i = 0; i < BH_MAX_SESSIONS; i++)
        if (!h->slots[i].s) {
            h->slots[i].s = s;
            h->slots[i].inbox = json_array();
            return;
        }
    fail_msg("harness: too many sessions");
}

/* Pop a session's queued frames into its inbox. */
static void bh__drain(bh *h, struct bh_slot *sl)
{
    mb_session *s = sl->s;
    while (s->q_head) {
        mb_qent *q = s->q_head;
        if (q->gen > h->b.committed_gen)
            fail_msg("harness: frame still held after commit (gen %llu > committed %llu)",
                     (unsigned long long)q->gen, (unsigned long long)h->b.committed_gen);
        json_error_t je;
        json_t *j = json_loads(mb_frame_data(q->f), 0, &je);
        if (!j)
            fail_msg("harness: session received invalid JSON (%s): %.200s", je.text, mb_frame_data(q->f));
        json_array_append_new(sl->inbox, j);
        s->q_head = q->next;
        if (!s->q_head)
            s->q_tail = NULL;
        s->q_count--;
        s->q_bytes -= q->f->len;
        mb_frame_unref(q->f);
        free(q);
    }
}

/* Forget closed sessions (they sit in the graveyard, freed by the commit), commit, collect. */
static void bh__commit(bh *h)
{
    for (int i = 0; i < BH_MAX_SESSIONS; i++) {
        struct bh_slot *sl = &h->slots[i];
        if (sl->s && sl->s->state == MB_CLOSED) {
            sl->s = NULL;
            json_decref(sl->inbox);
            sl->inbox = NULL;
        }
    }
    mb_broker_commit(&h->b);
    for (int i = 0; i < BH_MAX_SESSIONS; i++)
        if (h->slots[i].s)
            bh__drain(h, &h->slots[i]);
}

mb_session *bh_raw(bh *h)
{
    mb_session *s = mb_session_new(&h->b, NULL, "127.0.0.1", 0);
    if (!s)
        fail_msg("harness: mb_session_new failed");
    s->wsi = BH_WSI;
    bh__track(h, s);
    return s;
}

mb_session *bh_connect(bh *h, const char *ptype, const char *pid)
{
    mb_session *s = bh_raw(h);
    json_t *r = pid ? bh_ok(h, s, "map/connect", "{'protocolVersion':1,'participantType':'%s','participantId':'%s'}",
                            ptype, pid)
                    : bh_ok(h, s, "map/connect", "{'protocolVersion':1,'participantType':'%s'}", ptype);
    json_decref(r);
    if (s->state != MB_READY)
        fail_msg("harness: session not ready after map/connect");
    bh_clear(h, s);
    return s;
}

mb_session *bh_agent(bh *h, const char *aid, const char *role)
{
    mb_session *s = bh_connect(h, "agent", aid);
    json_t *r = role ? bh_ok(h, s, "map/agents/register", "{'agentId':'%s','role':'%s'}", aid, role)
                     : bh_ok(h, s, "map/agents/register", "{'agentId':'%s'}", aid);
    json_decref(r);
    bh_clear(h, s);
    return s;
}

/* ---- text helpers ---- */

/* Format, then turn every ' into " (also inside substituted arguments, so
 * nested JSON texts can use the same convention; write \u0027 for a quote). */
static char *bh__vfmt(const char *fmt, va_list ap)
{
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap2);
    va_end(ap2);
    char *out = malloc((size_t)n + 1);
    vsnprintf(out, (size_t)n + 1, fmt, ap);
    for (char *p = out; *p; p++)
        if (*p == '\'')
            *p = '"';
    return out;
}

json_t *bh_json(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *t = bh__vfmt(fmt, ap);
    va_end(ap);
    json_error_t je;
    json_t *j = json_loads(t, JSON_DECODE_ANY, &je);
    if (!j)
        fail_msg("bh_json: bad JSON (%s): %s", je.text, t);
    free(t);
    return j;
}

void bh_send_raw(bh *h, mb_session *s, const char *text)
{
    mb_session_on_message(s, text, strlen(text));
    bh__commit(h);
}

static json_t *bh__find_response(bh *h, long long id)
{
    for (int i = 0; i < BH_MAX_SESSIONS; i++) {
        struct bh_slot *sl = &h->slots[i];
        if (!sl->s)
            continue;
        size_t k;
        json_t *f;
        json_array_foreach(sl->inbox, k, f)
        {
            json_t *fid = json_object_get(f, "id");
            if (!json_object_get(f, "method") && json_is_integer(fid) && json_integer_value(fid) == id) {
                json_incref(f);
                json_array_remove(sl->inbox, k);
                return f;
            }
        }
    }
    return NULL;
}

static json_t *bh__vcall(bh *h, mb_session *s, const char *method, const char *fmt, va_list ap)
{
    char *params = bh__vfmt(fmt ? fmt : "{}", ap);
    long long id = ++h->next_id;
    size_t n = strlen(params) + strlen(method) + 128;
    char *msg = malloc(n);
    snprintf(msg, n, "{\"jsonrpc\":\"2.0\",\"id\":%lld,\"method\":\"%s\",\"params\":%s}", id, method, params);
    free(params);
    mb_session_on_message(s, msg, strlen(msg));
    bh__commit(h);
    json_t *r = bh__find_response(h, id);
    if (!r)
        fail_msg("no response to %s", msg);
    free(msg);
    return r;
}

json_t *bh_call(bh *h, mb_session *s, const char *method, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    json_t *r = bh__vcall(h, s, method, fmt, ap);
    va_end(ap);
    return r;
}

json_t *bh_ok(bh *h, mb_session *s, const char *method, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    json_t *r = bh__vcall(h, s, method, fmt, ap);
    va_end(ap);
    json_t *res = json_object_get(r, "result");
    if (!res) {
        char *t = json_dumps(r, JSON_COMPACT);
        fail_msg("%s failed: %s", method, t);
    }
    json_incref(res);
    json_decref(r);
    return res;
}

static json_t *bh__verr(bh *h, mb_session *s, int code, const char *method, const char *fmt, va_list ap)
{
    json_t *r = bh__vcall(h, s, method, fmt, ap);
    json_t *e = json_object_get(r, "error");
    if (!e || json_integer_value(json_object_get(e, "code")) != code) {
        char *t = json_dumps(r, JSON_COMPACT);
        fail_msg("%s: want error %d, got %s", method, code, t);
    }
    json_incref(e);
    json_decref(r);
    return e;
}

json_t *bh_err(bh *h, mb_session *s, int code, const char *method, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    json_t *e = bh__verr(h, s, code, method, fmt, ap);
    va_end(ap);
    return e;
}

void bh_err_field(bh *h, mb_session *s, int code, const char *field, const char *method, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    json_t *e = bh__verr(h, s, code, method, fmt, ap);
    va_end(ap);
    const char *got = bh_str(e, "data.field");
    if (!got || strcmp(got, field)) {
        char *t = json_dumps(e, JSON_COMPACT);
        fail_msg("%s: error %d: want data.field '%s', got %s", method, code, field, t);
    }
    json_decref(e);
}

void bh_notify(bh *h, mb_session *s, const char *method, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *params = bh__vfmt(fmt ? fmt : "{}", ap);
    va_end(ap);
    size_t n = strlen(params) + strlen(method) + 128;
    char *msg = malloc(n);
    snprintf(msg, n, "{\"jsonrpc\":\"2.0\",\"method\":\"%s\",\"params\":%s}", method, params);
    free(params);
    bh_send_raw(h, s, msg);
    free(msg);
}

/* ---- inbox ---- */

size_t bh_inbox_len(bh *h, mb_session *s) { return json_array_size(bh__slot(h, s)->inbox); }

static int bh__is(json_t *f, const char *method)
{
    const char *m = json_string_value(json_object_get(f, "method"));
    return method ? (m && !strcmp(m, method)) : 1;
}

json_t *bh_pop(bh *h, mb_session *s, const char *method)
{
    struct bh_slot *sl = bh__slot(h, s);
    size_t i;
    json_t *f;
    json_array_foreach(sl->inbox, i, f) if (bh__is(f, method))
    {
        json_incref(f);
        json_array_remove(sl->inbox, i);
        return f;
    }
    return NULL;
}

size_t bh_count(bh *h, mb_session *s, const char *method)
{
    size_t i, n = 0;
    json_t *f;
    json_array_foreach(bh__slot(h, s)->inbox, i, f) if (bh__is(f, method)) n++;
    return n;
}

void bh_clear(bh *h, mb_session *s) { json_array_clear(bh__slot(h, s)->inbox); }

void bh_subscribe(bh *h, mb_session *s, const char *filter, const char *options, char *id_out)
{
    char buf[4096];
    snprintf(buf, sizeof buf, "{%s%s%s%s%s}", filter ? "'filter':" : "", filter ? filter : "",
             filter && options ? "," : "", options ? "'options':" : "", options ? options : "");
    json_t *r = bh_ok(h, s, "map/subscribe", "%s", buf);
    const char *id = bh_str(r, "subscriptionId");
    if (!id)
        fail_msg("map/subscribe: no subscriptionId");
    snprintf(id_out, 64, "%s", id);
    json_decref(r);
}

json_t *bh_events(bh *h, mb_session *s)
{
    json_t *out = json_array();
    json_t *f;
    while ((f = bh_pop(h, s, "map/event"))) {
        json_array_append(out, json_object_get(f, "params"));
        json_decref(f);
    }
    return out;
}

json_t *bh_event_objs(bh *h, mb_session *s, const char *type)
{
    json_t *all = bh_events(h, s), *out = json_array();
    size_t i;
    json_t *p;
    json_array_foreach(all, i, p)
    {
        json_t *ev = json_object_get(p, "event");
        const char *t = json_string_value(json_object_get(ev, "type"));
        if (!type || (t && !strcmp(t, type)))
            json_array_append(out, ev);
    }
    json_decref(all);
    return out;
}

json_t *bh_messages(bh *h, mb_session *s)
{
    json_t *out = json_array();
    json_t *f;
    while ((f = bh_pop(h, s, "map/message"))) {
        json_array_append(out, json_object_get(json_object_get(f, "params"), "message"));
        json_decref(f);
    }
    return out;
}

void bh_drop(bh *h, mb_session *s)
{
    mb_session_on_close(s);
    bh__commit(h);
}

void bh_end(bh *h, mb_session *s, const char *reason)
{
    mb_session_destroy(s, reason);
    bh__commit(h);
}

/* ---- JSON accessors ---- */

json_t *bh_get(json_t *j, const char *path)
{
    char buf[256];
    snprintf(buf, sizeof buf, "%s", path);
    char *save = NULL;
    for (char *tok = strtok_r(buf, ".", &save); tok && j; tok = strtok_r(NULL, ".", &save)) {
        if (json_is_array(j)) {
            char *end;
            long k = strtol(tok, &end, 10);
            j = *end ? NULL : json_array_get(j, (size_t)k);
        } else {
            j = json_object_get(j, tok);
        }
    }
    return j;
}

const char *bh_str(json_t *j, const char *path) { return json_string_value(bh_get(j, path)); }
long long bh_int(json_t *j, const char *path) { return (long long)json_integer_value(bh_get(j, path)); }

static int bh__cmp(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }

void bh_assert_ids(json_t *arr, const char *csv, int sorted)
{
    const char *got[256];
    size_t n = 0, i;
    json_t *x;
    if (!json_is_array(arr))
        fail_msg("bh_assert_ids: not an array (want %s)", csv);
    json_array_foreach(arr, i, x) if (n < 256) got[n++] = json_string_value(x) ? json_string_value(x) : "<non-string>";
    if (sorted)
        qsort(got, n, sizeof got[0], bh__cmp);
    char buf[4096] = "";
    size_t off = 0;
    for (i = 0; i < n; i++)
        off += (size_t)snprintf(buf + off, sizeof buf - off, "%s%s", i ? "," : "", got[i]);
    if (strcmp(buf, csv))
        fail_msg("ids: got [%s], want [%s]", buf, csv);
}

const char *bh_join(json_t *arr, const char *key)
{
    static char buf[8192];
    size_t off = 0, i;
    json_t *x;
    buf[0] = '\0';
    json_array_foreach(arr, i, x)
    {
        const char *v = key ? bh_str(x, key) : json_string_value(x);
        off += (size_t)snprintf(buf + off, sizeof buf - off, "%s%s", i ? "," : "", v ? v : "?");
        if (off >= sizeof buf)
            break;
    }
    return buf;
}
