/* Federation (MAP.md 13). A link to system X is one WebSocket between two
 * brokers, used in both directions:
 *  - inbound: X dialed us as a gateway and announced itself
 *    (map/federation/connect with systemInfo);
 *  - outbound: we dial X (--peers X=URL), connect as a gateway and announce
 *    ourselves; the socket then carries X's traffic to us as well.
 * Envelopes travel as map/federation/route notifications over the link and
 * are checked for hop limits and loops (FederationEnvelope, 13.4-13.5). */
#include <libwebsockets.h>
#include <string.h>

#include "auth.h"
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
        cx->origin = payload; /* keep the original id, from and timestamp */
        cx->origin_system = json_string_value(json_object_get(fed, "sourceSystem"));
        rc = mb_send_message(cx, lto, json_object_get(payload, "payload"), json_object_get(payload, "meta"), mid);
        cx->origin = NULL;
        cx->origin_system = NULL;
        json_decref(lto);
        if (!rc) {
            mb_ctx_drop_result(cx);
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

/* ---- outbound links (--peers) ---- */

typedef struct mb_peer {
    mb_broker *b;
    char *system, *url;
    int backoff_ms;
    lws_sorted_usec_list_t sul;
    mb_session *s;
} mb_peer;

static mb_peer *mb__peers;
static size_t mb__npeers;

static void mb__dial(lws_sorted_usec_list_t *sul);

static void mb__redial(mb_peer *p)
{
    if (p->b->stopping || !p->b->ctx)
        return;
    p->backoff_ms = p->backoff_ms ? (p->backoff_ms * 2 > 30000 ? 30000 : p->backoff_ms * 2) : 250;
    lws_sul_schedule(p->b->ctx, 0, &p->sul, mb__dial, (lws_usec_t)p->backoff_ms * LWS_US_PER_MS);
}

static void mb__dial(lws_sorted_usec_list_t *sul)
{
    mb_peer *p = lws_container_of(sul, mb_peer, sul);
    char buf[512];
    const char *prot, *addr, *path;
    int port;
    snprintf(buf, sizeof buf, "%s", p->url);
    if (lws_parse_uri(buf, &prot, &addr, &port, &path)) {
        mb_error("federation", "peer %s: cannot parse %s", p->system, p->url);
        return;
    }
    char fullpath[256];
    snprintf(fullpath, sizeof fullpath, "/%s", path);
    struct lws_client_connect_info i;
    memset(&i, 0, sizeof i);
    i.context = p->b->ctx;
    i.vhost = lws_get_vhost_by_name(p->b->ctx, "map");
    i.address = addr;
    i.port = port;
    i.path = fullpath;
    i.host = addr;
    i.origin = addr;
    i.local_protocol_name = "map";
    i.ssl_connection = !strcmp(prot, "wss") ? LCCSCF_USE_SSL : 0;
    i.opaque_user_data = p;
    mb_debug("federation", "dialing %s at %s", p->system, p->url);
    if (!lws_client_connect_via_info(&i)) {
        mb_warn("federation", "cannot dial %s at %s; retrying", p->system, p->url);
        mb__redial(p);
    }
}

int mb_federation_start(mb_broker *b, char *errbuf, size_t errlen)
{
    const char *spec = b->cfg->peers;
    if (!spec || !*spec)
        return 0;
    char *copy = strdup(spec), *save = NULL;
    for (char *item = strtok_r(copy, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(item, '=');
        if (!eq || eq == item || (strncmp(eq + 1, "ws://", 5) && strncmp(eq + 1, "wss://", 6))) {
            snprintf(errbuf, errlen, "--peers: expected SYSTEM=ws://HOST:PORT/ items, got \"%s\"", item);
            free(copy);
            return -1;
        }
        *eq = '\0';
        if (!mp_id_valid(item) || strchr(item, ':') || !strcmp(item, b->cfg->system_id)) {
            snprintf(errbuf, errlen, "--peers: \"%s\" is not a valid peer system id (no ':', not our own)", item);
            free(copy);
            return -1;
        }
        mb_peer *np = realloc(mb__peers, (mb__npeers + 1) * sizeof *np);
        if (!np) {
            free(copy);
            return -1;
        }
        mb__peers = np;
        mb_peer *p = &mb__peers[mb__npeers++];
        memset(p, 0, sizeof *p);
        p->b = b;
        p->system = strdup(item);
        p->url = strdup(eq + 1);
    }
    free(copy);
    for (size_t i = 0; i < mb__npeers; i++) {
        mb_info("federation", "will bridge with system %s at %s", mb__peers[i].system, mb__peers[i].url);
        lws_sul_schedule(b->ctx, 0, &mb__peers[i].sul, mb__dial, 1);
    }
    return 0;
}

/* The dialed socket is open: become a gateway participant there and announce ourselves. */
mb_session *mb_federation_on_established(mb_broker *b, struct lws *wsi)
{
    mb_peer *p = lws_get_opaque_user_data(wsi);
    if (!p)
        return NULL;
    mb_session *s = mb_session_new(b, wsi, p->url, lws_is_ssl(wsi));
    if (!s)
        return NULL;
    s->peer_system = strdup(p->system);
    s->ptype = MB_PT_GATEWAY;
    s->state = MB_READY; /* the peer's pushes to us are dispatched like any gateway's */
    snprintf(s->participant_id, sizeof s->participant_id, "peer:%s", p->system);
    p->s = s;
    json_t *conn = json_pack("{s:i, s:s, s:s}", "protocolVersion", 1, "participantType", "gateway", "name", b->cfg->name);
    if (*b->cfg->peer_token)
        json_object_set_new(conn, "auth", json_pack("{s:s, s:s}", "method", "api-key", "token", b->cfg->peer_token));
    char self[256];
    if (*b->cfg->public_url)
        snprintf(self, sizeof self, "%s", b->cfg->public_url);
    else
        snprintf(self, sizeof self, "ws://%s:%lld/", b->cfg->host, b->cfg->port);
    json_t *req1 = json_pack("{s:s, s:i, s:s, s:o}", "jsonrpc", "2.0", "id", 1, "method", "map/connect", "params", conn);
    json_t *req2 = json_pack("{s:s, s:i, s:s, s:{s:s, s:s, s:{s:s, s:s, s:s}}}", "jsonrpc", "2.0", "id", 2, "method",
                             "map/federation/connect", "params", "systemId", b->cfg->system_id, "endpoint", self,
                             "systemInfo", "name", b->cfg->name, "version", MB_VERSION, "systemId", b->cfg->system_id);
    mb_session_send_json(s, req1, MB_Q_RESPONSE);
    mb_session_send_json(s, req2, MB_Q_RESPONSE);
    json_decref(req1);
    json_decref(req2);
    mb_info("federation", "connected to %s at %s; announcing ourselves as %s", p->system, p->url, b->cfg->system_id);
    return s;
}

void mb_federation_on_response(mb_session *s, mp_msg *m)
{
    mb_broker *b = s->b;
    json_t *err = json_object_get(m->root, "error");
    json_t *res = json_object_get(m->root, "result");
    json_int_t id = json_integer_value(m->id);
    if (err || json_object_get(res, "authRequired")) {
        mb_error("federation", "peer %s refused %s: %s", s->peer_system, id == 1 ? "map/connect" : "map/federation/connect",
                 err ? json_string_value(json_object_get(err, "message")) : "authentication required (--peer-token)");
        if (s->wsi)
            lws_set_timeout(s->wsi, PENDING_TIMEOUT_CLOSE_SEND, LWS_TO_KILL_ASYNC);
        return;
    }
    if (id == 2 && json_is_true(json_object_get(res, "connected"))) {
        if (!mb__links)
            mb__links = mb_map_new();
        mb_map_put(mb__links, s->peer_system, s);
        for (size_t i = 0; i < mb__npeers; i++)
            if (mb__peers[i].s == s)
                mb__peers[i].backoff_ms = 0;
        mb_emit(b, "federation_connected", s->participant_id, json_pack("{s:s}", "systemId", s->peer_system), NULL, NULL);
        mb_info("federation", "federation link up: system %s (dialed)", s->peer_system);
    }
}

void mb_federation_link_down(mb_session *s)
{
    if (!s->peer_system)
        return;
    if (mb__links && mb_map_get(mb__links, s->peer_system) == s) {
        mb_map_del(mb__links, s->peer_system);
        mb_emit(s->b, "federation_disconnected", s->participant_id, json_pack("{s:s}", "systemId", s->peer_system),
                NULL, NULL);
    }
    for (size_t i = 0; i < mb__npeers; i++)
        if (mb__peers[i].s == s) {
            mb__peers[i].s = NULL;
            mb_warn("federation", "link to %s lost; redialing", s->peer_system);
            mb__redial(&mb__peers[i]);
        }
}

/* A dial failed before the socket opened. */
void mb_federation_dial_failed(struct lws *wsi, const char *why)
{
    mb_peer *p = lws_get_opaque_user_data(wsi);
    if (!p)
        return;
    mb_warn("federation", "dialing %s at %s failed: %s", p->system, p->url, why ? why : "?");
    mb__redial(p);
}

/* Before the lws context goes: no more timers. */
void mb_federation_stop(void)
{
    for (size_t i = 0; i < mb__npeers; i++)
        lws_sul_cancel(&mb__peers[i].sul);
}

void mb_federation_free(void)
{
    mb_map_free(mb__links, NULL);
    mb__links = NULL;
    for (size_t i = 0; i < mb__npeers; i++) {
        free(mb__peers[i].system);
        free(mb__peers[i].url);
    }
    free(mb__peers);
    mb__peers = NULL;
    mb__npeers = 0;
}

const mb_method mb_methods_federation[] = {
    {"map/federation/connect", h_fed_connect, 0},
    {"map/federation/route", h_fed_route, 0},
    {NULL, NULL, 0},
};
