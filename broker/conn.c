/* Connection methods: map/connect, map/disconnect, map/authenticate,
 * map/auth/refresh, map/session/list, load and close. */
#include <string.h>

#include "auth.h"
#include "compat.h"
#include "mb.h"

static const char *mb__ptype_name(enum mb_ptype t)
{
    switch (t) {
    case MB_PT_AGENT: return "agent";
    case MB_PT_GATEWAY: return "gateway";
    case MB_PT_SYSTEM: return "system";
    default: return "client";
    }
}

static json_t *mb__capabilities(void)
{
    return json_pack("{s:{s:b,s:b}, s:{s:b,s:b,s:b}, s:{s:b,s:b,s:b,s:b,s:b}, s:{s:b,s:b}, s:{s:b},"
                     " s:{s:b,s:b,s:b,s:b,s:b,s:b,s:[s,s],s:b}, s:{s:b,s:b,s:b}}",
                     "observation", "canObserve", 1, "canQuery", 1,
                     "messaging", "canSend", 1, "canReceive", 1, "canBroadcast", 1,
                     "lifecycle", "canSpawn", 1, "canRegister", 1, "canUnregister", 1, "canSteer", 1, "canStop", 1,
                     "scopes", "canCreateScopes", 1, "canManageScopes", 1,
                     "federation", "canFederate", 1,
                     "mail", "enabled", 1, "canCreate", 1, "canJoin", 1, "canInvite", 1, "canViewHistory", 1,
                     "canCreateThreads", 1, "versions", "1.0", "1.1", "turnReceived", 1,
                     "streaming", "supportsAck", 1, "supportsFlowControl", 0, "supportsPause", 0);
}

static json_t *mb__session_info(mb_session *s, int closed)
{
    json_t *o = json_pack("{s:s, s:I, s:I}", "id", s->session_id, "createdAt", (json_int_t)s->created_at,
                          "lastActiveAt", (json_int_t)s->last_active);
    if (closed)
        json_object_set_new(o, "closedAt", json_integer(mb_now()));
    return o;
}

static void mb__issue_resume_token(mb_session *s)
{
    if (s->resume_token[0] && mb_map_get(s->b->resume_tokens, s->resume_token) == s)
        mb_map_del(s->b->resume_tokens, s->resume_token);
    mb_new_id(s->b, "resume_", s->resume_token, sizeof s->resume_token);
    mb_map_put(s->b->resume_tokens, s->resume_token, s);
}

static void mb__set_participant(mb_session *s, const char *pid)
{
    mb_broker *b = s->b;
    if (s->participant_id[0] && mb_map_get(b->participants, s->participant_id) == s)
        mb_map_del(b->participants, s->participant_id);
    if (pid)
        snprintf(s->participant_id, sizeof s->participant_id, "%s", pid);
    else
        mb_new_id(b, NULL, s->participant_id, sizeof s->participant_id);
    mb_map_put(b->participants, s->participant_id, s);
}

/* Build the standard connect result for a ready session. */
static json_t *mb__connect_result(mb_session *s, int reconnected, json_t *reclaimed)
{
    mb_broker *b = s->b;
    json_t *owned = json_array();
    MB_MAP_FOREACH(s->owned, e)
    json_array_append_new(owned, json_string(mb_map_key(e)));
    json_t *r = json_pack("{s:i, s:s, s:s, s:o, s:{s:s, s:s, s:s}, s:b, s:o, s:s}", "protocolVersion", 1,
                          "sessionId", s->session_id, "participantId", s->participant_id, "capabilities",
                          mb__capabilities(), "systemInfo", "name", b->cfg->name, "version", MB_VERSION, "systemId",
                          b->cfg->system_id, "reconnected", reconnected, "ownedAgents", owned, "resumeToken",
                          s->resume_token);
    json_object_set_new(r, "reclaimedAgents", reclaimed ? reclaimed : json_array());
    if (s->authenticated)
        json_object_set_new(r, "principal", mb_auth_principal_json(&s->principal));
    return r;
}

static int mb__finish_connect(mb_ctx *cx, int reconnected, json_t *reclaimed)
{
    mb_session *s = cx->s;
    s->state = MB_READY;
    if (!reconnected)
        mb__issue_resume_token(s);
    json_t *d = json_pack("{s:s, s:s}", "participantId", s->participant_id, "participantType", mb__ptype_name(s->ptype));
    if (s->name)
        json_object_set_new(d, "name", json_string(s->name));
    if (reconnected)
        json_object_set_new(d, "reconnected", json_true());
    mb_emit(cx->b, "participant_connected", s->participant_id, d, NULL, NULL);
    mb_info(s->session_id, "%s %s connected as %s from %s%s", reconnected ? "resumed" : "new",
            mb__ptype_name(s->ptype), s->participant_id, s->peer, s->authenticated ? " (authenticated)" : "");
    cx->result = mb__connect_result(s, reconnected, reclaimed);
    return 0;
}

static int h_connect(mb_ctx *cx)
{
    mb_session *s = cx->s;
    mb_broker *b = cx->b;
    json_t *p = cx->params;
    long long ver = 0;
    const char *ptype, *pid = NULL, *name = NULL, *token = NULL;
    json_t *auth = NULL, *policy = NULL, *reclaim = NULL;
    json_t *pv = json_object_get(p, "protocolVersion");
    if (pv && !json_is_null(pv) && !json_is_integer(pv))
        return MB_FAIL(cx, MP_INVALID_PARAMS, "protocolVersion", "Parameter protocolVersion must be an integer (1)");
    if (mp_get_int(p, "protocolVersion", MP_OPTIONAL, &ver, &cx->err) ||
        mp_get_str(p, "participantType", MP_REQUIRED, &ptype, &cx->err) ||
        mp_get_id(p, "participantId", MP_OPTIONAL, &pid, &cx->err) ||
        mp_get_str(p, "name", MP_OPTIONAL, &name, &cx->err) ||
        mp_get_str(p, "resumeToken", MP_OPTIONAL, &token, &cx->err) ||
        mp_get_obj(p, "auth", MP_OPTIONAL, &auth, &cx->err) ||
        mp_get_obj(p, "disconnectPolicy", MP_OPTIONAL, &policy, &cx->err) ||
        mp_get_str_arr(p, "reclaimAgents", MP_OPTIONAL, &reclaim, &cx->err))
        return cx->err.code;
    enum mb_ptype pt;
    if (!strcmp(ptype, "agent"))
        pt = MB_PT_AGENT;
    else if (!strcmp(ptype, "client"))
        pt = MB_PT_CLIENT;
    else if (!strcmp(ptype, "gateway"))
        pt = MB_PT_GATEWAY;
    else if (!strcmp(ptype, "system"))
        pt = MB_PT_SYSTEM;
    else
        return MB_FAIL(cx, MP_INVALID_PARAMS, "participantType",
                       "Parameter participantType must be agent, client, gateway or system");
    if (policy) {
        const char *beh = json_string_value(json_object_get(policy, "agentBehavior"));
        if (beh && strcmp(beh, "unregister") && strcmp(beh, "orphan") && strcmp(beh, "grace-period"))
            return MB_FAIL(cx, MP_INVALID_PARAMS, "disconnectPolicy.agentBehavior",
                           "disconnectPolicy.agentBehavior must be unregister, orphan or grace-period");
    }
    if (name && strlen(name) > 1024)
        return MB_FAIL(cx, MP_INVALID_PARAMS, "name", "Parameter name is longer than 1024 bytes");

    /* Authentication (up-front credentials, or the negotiated authRequired form);
     * without auth params, a ?token= of the WebSocket URL (compat.c). */
    json_t *url_auth = auth ? NULL : mb_compat_connect_auth(s);
    int ar = mb_auth_connect(cx, auth ? auth : url_auth, pt);
    json_decref(url_auth);
    mb_compat_connect_caps(s, p);
    if (ar < 0)
        return cx->err.code;

    s->ptype = pt;
    free(s->name);
    s->name = name ? strdup(name) : NULL;
    json_decref(s->disconnect_policy);
    s->disconnect_policy = json_incref(policy);

    if (ar == 1) { /* auth required and missing: session waits in awaiting-auth */
        s->state = MB_AWAIT_AUTH;
        if (!s->participant_id[0])
            mb__set_participant(s, pid);
        cx->result = json_pack("{s:i, s:s, s:s, s:o, s:o}", "protocolVersion", 1, "sessionId", s->session_id,
                               "participantId", s->participant_id, "capabilities", json_object(), "authRequired",
                               mb_auth_required_json(b));
        if (cx->err.code) { /* credentials were given but bad */
            json_object_set_new(cx->result, "error",
                                json_pack("{s:i, s:s}", "code", cx->err.code, "message", cx->err.message));
            mp_err_clear(&cx->err);
        }
        return 0;
    }

    /* Resume a session by token: its agents and subscriptions come back. */
    if (token) {
        mb_session *old = mb_map_get(b->resume_tokens, token);
        if (old == s && s->state == MB_READY) /* ClientConnection#reconnect on the same socket */
            return mb__finish_connect(cx, 1, NULL);
        if (old && old != s && old->state == MB_READY && mb_auth_same_principal(old, s)) {
            mb_session *fresh = s;
            s = cx->s = mb_session_resume(fresh, old);
            s->ptype = pt;
            json_t *reclaimed = json_array();
            size_t i;
            json_t *x;
            json_array_foreach(reclaim, i, x)
            {
                mb_agent *a = mb_map_get(s->owned, json_string_value(x));
                if (a)
                    json_array_append(reclaimed, mb_agent_doc(a));
            }
            mb__issue_resume_token(s);
            return mb__finish_connect(cx, 1, reclaimed);
        }
        /* unknown or expired token: a fresh session (MAP.md 4.2) */
    }
    if (s->state != MB_READY || (pid && strcmp(pid, s->participant_id)))
        mb__set_participant(s, pid);
    return mb__finish_connect(cx, 0, NULL);
}

static int h_disconnect(mb_ctx *cx)
{
    const char *reason = NULL;
    if (mp_get_str(cx->params, "reason", 0, &reason, &cx->err))
        return cx->err.code;
    mb_session *s = cx->s;
    if (reason)
        mb_info(s->session_id, "disconnect requested: %s", reason);
    cx->result = json_pack("{s:b, s:o}", "acknowledged", 1, "session", mb__session_info(s, 1));
    if (s->resume_token[0])
        json_object_set_new(cx->result, "resumeToken", json_string(s->resume_token));
    /* the reply is queued by the dispatcher before anything else; close once flushed */
    mb_session_close_after_flush(s, 1000, "disconnect");
    return 0;
}

static int h_authenticate(mb_ctx *cx)
{
    mb_session *s = cx->s;
    const char *method, *cred = NULL, *tok = NULL;
    json_t *meta = NULL;
    if (mp_get_str(cx->params, "method", MP_REQUIRED, &method, &cx->err) ||
        mp_get_str(cx->params, "credential", 0, &cred, &cx->err) ||
        mp_get_str(cx->params, "token", 0, &tok, &cx->err) ||
        mp_get_obj(cx->params, "metadata", 0, &meta, &cx->err))
        return cx->err.code;
    const char *code = NULL;
    char msg[256];
    mb_principal pr;
    if (mb_auth_verify(cx->b, s, method, cred ? cred : tok, meta, &pr, &code, msg, sizeof msg)) {
        mb_warn(s->session_id, "authentication failed from %s: %s", s->peer, msg);
        cx->result = json_pack("{s:b, s:{s:s, s:s}}", "success", 0, "error", "code", code, "message", msg);
        return 0;
    }
    if (mb_auth_apply(cx, &pr))
        return cx->err.code;
    int was_pending = s->state == MB_AWAIT_AUTH;
    if (was_pending) {
        int rc = mb__finish_connect(cx, 0, NULL);
        json_decref(cx->result);
        cx->result = NULL;
        if (rc)
            return rc;
    }
    cx->result = json_pack("{s:b, s:s, s:s, s:o}", "success", 1, "sessionId", s->session_id, "participantId",
                           s->participant_id, "principal", mb_auth_principal_json(&s->principal));
    return 0;
}

static int h_auth_refresh(mb_ctx *cx)
{
    mb_session *s = cx->s;
    const char *method = NULL, *cred = NULL, *tok = NULL, *refresh = NULL;
    if (mp_get_str(cx->params, "method", 0, &method, &cx->err) ||
        mp_get_str(cx->params, "credential", 0, &cred, &cx->err) ||
        mp_get_str(cx->params, "token", 0, &tok, &cx->err) ||
        mp_get_str(cx->params, "refreshToken", 0, &refresh, &cx->err))
        return cx->err.code;
    const char *c = cred ? cred : tok ? tok : refresh;
    if (!c)
        return MB_FAIL(cx, MP_INVALID_PARAMS, "credential", "Missing required parameter: credential");
    if (!method)
        method = s->principal.method[0] ? s->principal.method : "bearer";
    const char *code = NULL;
    char msg[256];
    mb_principal pr;
    if (mb_auth_verify(cx->b, s, method, c, NULL, &pr, &code, msg, sizeof msg)) {
        cx->result = json_pack("{s:b, s:{s:s, s:s}}", "success", 0, "error", "code", code, "message", msg);
        return 0;
    }
    if (s->authenticated && strcmp(pr.id, s->principal.id)) {
        mb_auth_principal_clear(&pr);
        return MB_FAIL(cx, MP_PERMISSION_DENIED, "credential", "Refresh credential belongs to another principal");
    }
    if (mb_auth_apply(cx, &pr))
        return cx->err.code;
    cx->result = json_pack("{s:b, s:o}", "success", 1, "principal", mb_auth_principal_json(&s->principal));
    if (refresh) {
        json_object_set_new(cx->result, "accessToken", json_string(c));
        if (s->principal.expires_at)
            json_object_set_new(cx->result, "expiresAt", json_integer(s->principal.expires_at));
    }
    return 0;
}

static int h_session_list(mb_ctx *cx)
{
    json_t *arr = json_array();
    MB_MAP_FOREACH(cx->b->sessions, e)
    {
        mb_session *o = mb_map_val(e);
        if (o == cx->s || (cx->s->authenticated && mb_auth_same_principal(o, cx->s)))
            json_array_append_new(arr, mb__session_info(o, 0));
    }
    cx->result = json_pack("{s:o}", "sessions", arr);
    return 0;
}

static int h_session_load(mb_ctx *cx)
{
    const char *sid;
    if (mp_get_str(cx->params, "sessionId", MP_REQUIRED, &sid, &cx->err))
        return cx->err.code;
    if (!strcmp(sid, cx->s->session_id)) {
        cx->result = json_pack("{s:s, s:b}", "sessionId", sid, "restored", 1);
        return 0;
    }
    mb_session *old = mb_map_get(cx->b->sessions, sid);
    if (!old || old->state != MB_READY || !old->detached || !mb_auth_same_principal(old, cx->s))
        return MB_FAIL(cx, MP_ADDRESS_NOT_FOUND, "sessionId", "Session not found or not resumable: %s", sid);
    /* move this connection onto the old session */
    mb_session *fresh = cx->s;
    cx->s = mb_session_resume(fresh, old);
    cx->result = json_pack("{s:s, s:b}", "sessionId", sid, "restored", 1);
    return 0;
}

static int h_session_close(mb_ctx *cx)
{
    const char *sid = NULL;
    if (mp_get_str(cx->params, "sessionId", 0, &sid, &cx->err))
        return cx->err.code;
    mb_session *t = sid ? mb_map_get(cx->b->sessions, sid) : cx->s;
    if (!t || (t != cx->s && !mb_auth_same_principal(t, cx->s)))
        return MB_FAIL(cx, MP_ADDRESS_NOT_FOUND, "sessionId", "Session not found: %s", sid ? sid : "");
    cx->result = json_pack("{s:o, s:b}", "session", mb__session_info(t, 1), "closed", 1);
    if (t == cx->s) {
        /* reply first, then end the session for good (no resume) */
        mb_session_close_after_flush(t, 1000, "session closed");
        t->disconnect_policy = t->disconnect_policy ? t->disconnect_policy : NULL;
        if (t->resume_token[0])
            mb_map_del(cx->b->resume_tokens, t->resume_token);
        t->resume_token[0] = '\0';
        mb_session_mark_final(t);
    } else {
        mb_session_destroy(t, "session_closed");
    }
    return 0;
}

const mb_method mb_methods_conn[] = {
    {"map/connect", h_connect, MB_M_PRECONNECT},
    {"map/disconnect", h_disconnect, MB_M_PREAUTH},
    {"map/authenticate", h_authenticate, MB_M_PREAUTH},
    {"map/auth/refresh", h_auth_refresh, 0},
    {"map/session/list", h_session_list, 0},
    {"map/session/load", h_session_load, 0},
    {"map/session/close", h_session_close, 0},
    {NULL, NULL, 0},
};
