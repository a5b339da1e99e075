/* The method table and the single entry point every request goes through:
 * state gate (connected? authenticated?), permission gate, handler, reply. */
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "compat.h"
#include "mb.h"

static const mb_method *const *mb__tables(void)
{
    static const mb_method *const tables[] = {mb_methods_conn,   mb_methods_agents, mb_methods_scopes,
                                              mb_methods_send,   mb_methods_events, mb_methods_mail,
                                              mb_methods_federation, mb_methods_audit, mb_methods_auth,
                                              mb_methods_mail_v11, NULL};
    return tables;
}

const mb_method *mb_method_find(const char *name)
{
    static mb_map *index;
    if (!index) {
        index = mb_map_new();
        for (const mb_method *const *t = mb__tables(); *t; t++)
            for (const mb_method *m = *t; m->name; m++)
                mb_map_put(index, m->name, (void *)m);
    }
    return mb_map_get(index, name);
}

/* Queue {"jsonrpc":"2.0","id":ID,"result":RAW} around cx->result_raw (the
 * same bytes mp_rpc_result + mp_dump would give). 0, or -1 on OOM (nothing
 * queued). */
static int mb__reply_raw(mb_ctx *cx, json_t *id)
{
    size_t idn;
    char *idt = mp_dump(id ? id : json_null(), 0, &idn);
    if (!idt)
        return -1;
    static const char head[] = "{\"jsonrpc\":\"2.0\",\"id\":", mid[] = ",\"result\":";
    size_t len = sizeof head - 1 + idn + sizeof mid - 1 + cx->result_raw_len + 1;
    mb_frame *f = mb_frame_alloc(len);
    if (!f) {
        free(idt);
        return -1;
    }
    char *p = mb_frame_buf(f);
    memcpy(p, head, sizeof head - 1);
    p += sizeof head - 1;
    memcpy(p, idt, idn);
    p += idn;
    memcpy(p, mid, sizeof mid - 1);
    p += sizeof mid - 1;
    memcpy(p, cx->result_raw, cx->result_raw_len);
    p += cx->result_raw_len;
    *p = '}';
    free(idt);
    mb_session_send(cx->s, f, MB_Q_RESPONSE); /* the handler may have moved us to another session (resume) */
    mb_frame_unref(f);
    return 0;
}

void mb_ctx_drop_result(mb_ctx *cx)
{
    json_decref(cx->result);
    cx->result = NULL;
    free(cx->result_raw);
    cx->result_raw = NULL;
    cx->result_raw_len = 0;
}

void mb_dispatch(mb_session *s, mp_msg *m)
{
    mb_broker *b = s->b;
    mb_ctx cx = {.b = b, .s = s, .method = m->method, .params = m->params, .id = m->id};
    mp_err_clear(&cx.err);
    int rc = 0;
    const mb_method *meth = mb_method_find(m->method);
    b->stats.requests++;
    mb_debug(s->session_id, "<- %s%s", m->method, m->kind == MP_KIND_NOTIFICATION ? " (notification)" : "");
    if (!meth) {
        rc = MB_FAIL(&cx, MP_METHOD_NOT_FOUND, "method", "Method not found: %s", m->method);
    } else if (s->state == MB_AWAIT_CONNECT && !(meth->flags & MB_M_PRECONNECT)) {
        rc = MB_FAIL(&cx, MP_AUTH_REQUIRED, "method", "Not connected: call map/connect before %s", m->method);
    } else if (s->state == MB_AWAIT_AUTH && !(meth->flags & (MB_M_PREAUTH | MB_M_PRECONNECT))) {
        rc = MB_FAIL(&cx, MP_AUTH_REQUIRED, "method", "Authentication required: call map/authenticate before %s",
                     m->method);
    } else {
        mb_compat_params(&cx); /* published clients' deviations (compat.c), before the permission gate reads them */
        rc = mb_auth_check_method(&cx, meth);
        if (!rc)
            rc = meth->fn(&cx);
    }
    if (rc && m->kind == MP_KIND_NOTIFICATION)
        mb_compat_notification_failed(&cx, rc);
    int replied = 0;
    if (m->kind == MP_KIND_REQUEST && !rc && cx.result_raw) {
        replied = mb__reply_raw(&cx, m->id) == 0;
        if (!replied) /* out of memory: say so rather than answer {} */
            rc = mp_err_set(&cx.err, MP_INTERNAL, NULL, "Out of memory while encoding the reply");
    }
    if (m->kind == MP_KIND_REQUEST && !replied) {
        json_t *reply;
        if (rc) {
            if (!cx.err.code)
                mp_err_set(&cx.err, rc, NULL, "Request failed");
            reply = mp_rpc_error(m->id, &cx.err);
            b->stats.errors++;
            mb_debug(s->session_id, "%s -> %d %s", m->method, cx.err.code, cx.err.message);
        } else {
            reply = mp_rpc_result(m->id, cx.result);
            cx.result = NULL;
        }
        /* the handler may have moved us to another session (resume) */
        mb_session_send_json(cx.s, reply, MB_Q_RESPONSE);
        json_decref(reply);
    }
    json_decref(cx.result);
    free(cx.result_raw);
    if (cx.after && !rc)
        cx.after(&cx, cx.after_arg);
    else if (cx.after_arg && cx.after)
        cx.after(NULL, cx.after_arg); /* let it free its argument */
}
