/* Scopes created on demand (--auto-create-scopes, on by default): published
 * clients register into scopes nobody created (agent-inbox: "default",
 * "federation"; macro-agent: "swarm:macro-agent"), as the SDK's reference
 * server allows. The scope is made by map/scopes/create itself, so it gets
 * the same id validation, default join policy, permission check, store write
 * and scope_created event as an explicit create. */
#include "compat.h"

#include "auth.h"

mb_scope *mb_scope_auto(mb_ctx *cx, const char *id)
{
    mb_broker *b = cx->b;
    if (!id)
        return NULL;
    mb_scope *sc = mb_scope_get(b, id);
    if (sc || !b->cfg->auto_create_scopes)
        return sc;
    const mb_method *m = mb_method_find("map/scopes/create");
    if (!m)
        return NULL;
    json_t *params = json_pack("{s:s, s:{s:s}}", "scopeId", id, "metadata", "createdBy", "auto-create-scopes");
    mb_ctx sub = {.b = b, .s = cx->s, .method = m->name, .params = params};
    mp_err_clear(&sub.err);
    int rc = params ? mb_auth_check_method(&sub, m) : MP_INTERNAL;
    if (!rc)
        rc = m->fn(&sub);
    if (rc)
        mb_debug(cx->s->session_id, "scope %s not created on demand: %s", id, sub.err.message);
    else
        mb_info(cx->s->session_id, "scope %s created on demand by %s (%s)", id, cx->method, "--auto-create-scopes");
    mb_ctx_drop_result(&sub);
    if (sub.after)
        sub.after(NULL, sub.after_arg);
    json_decref(params);
    return rc ? NULL : mb_scope_get(b, id);
}
