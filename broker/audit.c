/* Audit log: every operator control (inject, stop, suspend, resume, close)
 * is recorded in the store with who, what, target, when and the payload. */
#include <string.h>

#include "mb.h"

void mb_audit(mb_ctx *cx, const char *target, json_t *payload)
{
    mb_broker *b = cx->b;
    mb_session *s = cx->s;
    char id[MP_ULID_LEN + 1];
    mb_new_id(b, NULL, id, sizeof id);
    const char *who = s->authenticated ? s->principal.id : mb_session_from(s);
    int64_t now = mb_now();
    json_t *o = json_pack("{s:s, s:I, s:s, s:s, s:s, s:s}", "id", id, "timestamp", (json_int_t)now, "principal", who,
                          "participant", mb_session_from(s), "action", cx->method, "peer", s->peer);
    if (target)
        json_object_set_new(o, "target", json_string(target));
    if (payload)
        json_object_set(o, "payload", payload);
    size_t len;
    char *txt = mp_dump(o, 0, &len);
    json_decref(o);
    if (!txt)
        return;
    if (mb_txn(b) == 0) {
        struct mst_audit a = {.id = id, .ts = now, .principal = who, .action = cx->method, .target = target,
                              .json = txt, .len = len};
        int rc = mst_audit_append(b->store, &a);
        if (rc)
            mb_error("audit", "audit entry not recorded: %s", mst_strerror(rc));
    }
    mb_info("audit", "%s by %s (%s) on %s", cx->method, who, s->peer, target ? target : "-");
    free(txt);
}

struct mb__audit_page {
    json_t *out;
};

static int mb__audit_cb(void *arg, const struct mst_audit *a)
{
    struct mb__audit_page *p = arg;
    json_t *e = json_loadb(a->json, a->len, 0, NULL);
    if (e)
        json_array_append_new(p->out, e);
    return 0;
}

/* x-mapbroker/audit/list {limit?, before?}: newest first (what GET /api/audit serves). */
static int h_audit_list(mb_ctx *cx)
{
    long long limit = 100;
    const char *before = NULL;
    if (mp_get_int_range(cx->params, "limit", 1, 1000, &limit, &cx->err) ||
        mp_get_str(cx->params, "before", 0, &before, &cx->err))
        return cx->err.code;
    struct mb__audit_page p = {.out = json_array()};
    mst_audit_scan(cx->b->store, before, (size_t)limit + 1, mb__audit_cb, &p);
    int more = json_array_size(p.out) > (size_t)limit;
    if (more)
        json_array_remove(p.out, json_array_size(p.out) - 1);
    cx->result = json_pack("{s:o, s:b}", "entries", p.out, "hasMore", more);
    return 0;
}

const mb_method mb_methods_audit[] = {
    {"x-mapbroker/audit/list", h_audit_list, MB_M_OPERATOR},
    {NULL, NULL, 0},
};
