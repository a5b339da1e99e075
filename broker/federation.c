/* Federation (MAP.md 13): peer links announced by remote brokers over a
 * gateway connection, and FederationEnvelope processing with hop limits and
 * loop detection. A link is the gateway session that announced a system id;
 * envelopes for that system are pushed to it as map/federation/route
 * notifications. */
#include <string.h>

#include "mb.h"

static mb_map *mb__links; /* system id -> mb_session* */

static mb_session *mb__link(mb_broker *b, const char *system)
{
    mb_session *s = mb__links ? mb_map_get(mb__links, system) : NULL;
    if (s && (s->state != MB_READY || !s->wsi)) {
        mb_map_del(mb__links, system);
        mb_emit(b, "federation_disconnected", s->participant_id, json_pack("{s:s}", "systemId", system), NULL, NULL);
        return NULL;
    }
    return s;
}

static int h_fed_connect(mb_ctx *cx)
{
    const char *sys, *endpoint = NULL;
    json_t *info = NULL;
    if (cx->s->ptype != MB_PT_GATEWAY && cx->s->ptype != MB_PT_SYSTEM)
        return MB_FAIL(cx, MP_PERMISSION_DENIED, "participantType", "Federation methods need a gateway connection");
    if (mp_get_str(cx->params, "systemId", MP_REQUIRED, &sys, &cx->err) ||
        mp_get_str(cx->params, "endpoint", 0, &endpoint, &cx->err) ||
        mp_get_obj(cx->params, "systemInfo", 0, &info, &cx->err))
        return cx->err.code;
    if (!mp_id_valid(sys) || strchr(sys, ':'))
        return MB_FAIL(cx, MP_INVALID_PARAMS, "systemId", "systemId must be a valid id without ':'");
    if (!info)
        return MB_FAIL(cx, MP_FED_UNAVAILABLE, "systemInfo",
                       "This broker does not dial peers; let the peer broker connect and announce itself (systemInfo)");
    if (!strcmp(sys, cx->b->cfg->system_id))
        return MB_FAIL(cx, MP_FED_ROUTE_REJECTED, "systemId", "A peer cannot announce this broker's own system id");
    if (!mb__links)
        mb__links = mb_map_new();
    mb_map_put(mb__links, sys, cx->s);
    json_t *d = json_pack("{s:s}", "systemId", sys);
    if (endpoint)
        json_object_set_new(d, "endpoint", json_string(endpoint));
    mb_emit(cx->b, "federation_connected", cx->s->participant_id, d, NULL, NULL);
    mb_info(cx->s->session_id, "federation link up: system %s", sys);
    cx->result = json_pack("{s:b, s:s, s:{s:s, s:s, s:s}}", "connected", 1, "sessionId", cx->s->session_id,
                           "systemInfo", "name", cx->b->cfg->name, "version", MB_VERSION, "systemId",
                           cx->b->cfg->system_id);
    return 0;
}

static int mb__in_path(json_t *path, const char *sys)
{
    size_t i;
    json_t *x;
    json_array_foreach(path, i, x) if (json_is_string(x) && !strcmp(json_string_value(x), sys)) return 1;
    return 0;
}


static int mb__push(mb_ctx *cx, mb_session *link, const char *target, json_t *env)
{
    json_t *n = mp_rpc_notification("map/federation/route", json_pack("{s:s, s:O}", "systemId", target, "envelope", env));
    int rc = mb_session_send_json(link, n, MB_Q_MESSAGE);
    json_decref(n);
    if (rc)
        return MB_FAIL(cx, MP_FED_UNAVAILABLE, "systemId", "Link to system %s is congested or down", target);
    return 0;
}

/* A local map/send to {system, agent} on another system. */
int mb_federation_forward(mb_ctx *cx, const char *system, json_t *message)
{
    mb_session *link = mb__link(cx->b, system);
    if (!link)
        return MB_FAIL(cx, MP_FED_SYSTEM_NOT_FOUND, "to.system", "No federation route to system %s", system);
    const char *own = cx->b->cfg->system_id;
    json_t *fed = json_pack("{s:s, s:s, s:i, s:i, s:[s], s:I}", "sourceSystem", own, "targetSystem", system,
                            "hopCount", 0, "maxHops", 10, "path", own, "originTimestamp", (json_int_t)mb_now());
    const char *corr = json_string_value(json_object_get(json_object_get(message, "meta"), "correlationId"));
    if (corr)
        json_object_set_new(fed, "correlationId", json_string(corr));
    json_t *env = json_pack("{s:O, s:o}", "payload", message, "federation", fed);
    int rc = mb__push(cx, link, system, env);
    json_decref(env);
    return rc;
}

static int h_fed_route(mb_ctx *cx)
{
    mb_broker *b = cx->b;
    const char *sys;
    json_t *env = NULL, *msg = NULL;
    if (mp_get_str(cx->params, "systemId", MP_REQUIRED, &sys, &cx->err) ||
        mp_get_obj(cx->params, "envelope", 0, &env, &cx->err) || mp_get_obj(cx->params, "message", 0, &msg, &cx->err))
        return cx->err.code;
    json_t *owned_env = NULL;
    if (!env) {
        if (!msg)
            return MB_FAIL(cx, MP_INVALID_PARAMS, "envelope", "Missing required parameter: envelope (or message)");
        owned_env = env = json_pack("{s:O, s:{s:s, s:s, s:i, s:I}}", "payload", msg, "federation", "sourceSystem",
                                    "unknown", "targetSystem", sys, "hopCount", 0, "originTimestamp",
                                    (json_int_t)mb_now());
    }
    json_t *payload = json_object_get(env, "payload");
    json_t *fed = json_object_get(env, "federation");
    int rc = 0;
    if (!json_is_object(payload) || !json_is_object(fed) ||
        !json_is_string(json_object_get(fed, "sourceSystem")) || !json_is_string(json_object_get(fed, "targetSystem")) ||
        !json_is_number(json_object_get(fed, "hopCount")) || !json_is_number(json_object_get(fed, "originTimestamp"))) {
        rc = MB_FAIL(cx, MP_INVALID_PARAMS, "envelope", "Invalid federation envelope");
        goto out;
    }
    const char *own = b->cfg->system_id;
    long long hops = (long long)json_number_value(json_object_get(fed, "hopCount"));
    json_t *mh = json_object_get(fed, "maxHops");
    long long limit = json_is_number(mh) ? (long long)json_number_value(mh) : 10;
    json_t *path = json_object_get(fed, "path");
    if (hops >= limit) {
        rc = MB_FAIL(cx, MP_FED_MAX_HOPS, "envelope.federation.hopCount", "Max hops exceeded (%lld)", limit);
        goto out;
    }
    if (mb__in_path(path, own)) {
        rc = MB_FAIL(cx, MP_FED_LOOP, "envelope.federation.path", "Routing loop: %s already in path", own);
        goto out;
    }
    /* hop accounting on a private copy */
    json_t *e2 = json_deep_copy(env);
    json_t *f2 = json_object_get(e2, "federation");
    json_object_set_new(f2, "hopCount", json_integer(hops + 1));
    if (!json_is_array(json_object_get(f2, "path")))
        json_object_set_new(f2, "path", json_array());
    json_array_append_new(json_object_get(f2, "path"), json_string(own));
    const char *target = json_string_value(json_object_get(fed, "targetSystem"));
    if (!strcmp(target, own)) {
        json_t *to = json_object_get(payload, "to");
        json_t *lto = to;
        if (json_is_object(to) && json_is_string(json_object_get(to, "system")) && json_object_get(to, "agent"))
            lto = json_pack("{s:O}", "agent", json_object_get(to, "agent"));
        else
            json_incref(lto);
        char mid[64];
        rc = mb_send_message(cx, lto, json_object_get(payload, "payload"), json_object_get(payload, "meta"), mid);
        json_decref(lto);
        if (!rc) {
            json_decref(cx->result);
            const char *oid = json_string_value(json_object_get(payload, "id"));
            cx->result = json_pack("{s:b, s:s}", "routed", 1, "messageId", oid ? oid : mid);
        }
    } else {
        mb_session *link = mb__link(b, target);
        if (!link)
            rc = MB_FAIL(cx, MP_FED_SYSTEM_NOT_FOUND, "systemId", "No federation route to system %s", target);
        else if (!(rc = mb__push(cx, link, target, e2))) {
            const char *oid = json_string_value(json_object_get(payload, "id"));
            cx->result = json_pack("{s:b}", "routed", 1);
            if (oid)
                json_object_set_new(cx->result, "messageId", json_string(oid));
        }
    }
    json_decref(e2);
out:
    json_decref(owned_env);
    return rc;
}

void mb_federation_free(void)
{
    mb_map_free(mb__links, NULL);
    mb__links = NULL;
}

const mb_method mb_methods_federation[] = {
    {"map/federation/connect", h_fed_connect, 0},
    {"map/federation/route", h_fed_route, 0},
    {NULL, NULL, 0},
};
