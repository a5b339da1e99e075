/* The registry: agents (with parent/child lineage and a state machine) and
 * scopes (with membership), their map/agents and map/scopes methods and
 * map/structure/graph. Agent and scope documents are written through to the
 * store so a restarted broker knows the last state. */
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "compat.h"
#include "mb.h"

static char *mb__dup(const char *s) { return s ? strdup(s) : NULL; }

static void mb__set_str(char **dst, const char *v)
{
    free(*dst);
    *dst = mb__dup(v);
}

mb_agent *mb_agent_get(mb_broker *b, const char *id) { return id ? mb_map_get(b->agents, id) : NULL; }
mb_scope *mb_scope_get(mb_broker *b, const char *id) { return id ? mb_map_get(b->scopes, id) : NULL; }

void mb_agent_free(mb_agent *a)
{
    if (!a)
        return;
    free(a->id);
    free(a->owner);
    free(a->parent);
    free(a->role);
    free(a->state);
    free(a->prev_state);
    free(a->conversation);
    free(a->principal);
    json_decref(a->doc);
    mb_map_free(a->scopes, NULL);
    mb_map_free(a->children, NULL);
    free(a);
}

void mb_scope_free(mb_scope *sc)
{
    if (!sc)
        return;
    free(sc->id);
    free(sc->parent);
    json_decref(sc->doc);
    mb_map_free(sc->members, NULL);
    free(sc);
}

json_t *mb_agent_doc(mb_agent *a)
{
    json_t *d = a->doc;
    json_object_set_new(d, "id", json_string(a->id));
    json_object_set_new(d, "ownerId", a->owner ? json_string(a->owner) : json_null());
    json_object_set_new(d, "state", json_string(a->state));
    if (a->parent)
        json_object_set_new(d, "parent", json_string(a->parent));
    else
        json_object_del(d, "parent");
    if (a->role)
        json_object_set_new(d, "role", json_string(a->role));
    else
        json_object_del(d, "role");
    if (mb_map_size(a->scopes)) {
        json_t *sc = json_array();
        MB_MAP_FOREACH(a->scopes, e)
        json_array_append_new(sc, json_string(mb_map_key(e)));
        json_object_set_new(d, "scopes", sc);
    } else {
        json_object_del(d, "scopes");
    }
    json_t *md = json_object_get(d, "metadata");
    if (a->conversation) {
        if (!json_is_object(md)) {
            md = json_object();
            json_object_set_new(d, "metadata", md);
        }
        json_object_set_new(md, "conversationId", json_string(a->conversation));
    }
    return d;
}

void mb_agent_persist(mb_broker *b, mb_agent *a)
{
    if (mb_txn(b))
        return;
    size_t len;
    char *txt = mp_dump(mb_agent_doc(a), 0, &len);
    if (!txt)
        return;
    struct mst_record r = {.kind = MST_AGENT, .key = a->id, .json = txt, .len = len};
    int rc = mst_put(b->store, &r);
    if (rc)
        mb_error("store", "agent %s not saved: %s", a->id, mst_strerror(rc));
    free(txt);
}

static void mb__scope_persist(mb_broker *b, mb_scope *sc)
{
    json_t *p = json_object_get(sc->doc, "persistent");
    if (json_is_false(p) || mb_txn(b))
        return;
    size_t len;
    char *txt = mp_dump(sc->doc, 0, &len);
    if (!txt)
        return;
    struct mst_record r = {.kind = MST_SCOPE, .key = sc->id, .json = txt, .len = len};
    mst_put(b->store, &r);
    free(txt);
}

static mb_agent *mb__agent_alloc(const char *id)
{
    mb_agent *a = calloc(1, sizeof *a);
    if (!a)
        return NULL;
    a->id = strdup(id);
    a->state = strdup("registered");
    a->doc = json_object();
    a->scopes = mb_map_new();
    a->children = mb_map_new();
    if (!a->id || !a->state || !a->doc || !a->scopes || !a->children) {
        mb_agent_free(a);
        return NULL;
    }
    return a;
}

static void mb__link_parent(mb_broker *b, mb_agent *a)
{
    mb_agent *p = mb_agent_get(b, a->parent);
    if (p)
        mb_map_put(p->children, a->id, a);
}

/* ---- scopes membership ---- */

static void mb__scope_join(mb_broker *b, mb_scope *sc, mb_agent *a, int emit)
{
    if (mb_map_get(sc->members, a->id))
        return; /* idempotent */
    mb_map_put(sc->members, a->id, a);
    mb_map_put(a->scopes, sc->id, sc);
    if (emit)
        mb_emit(b, "scope_member_joined", a->id, json_pack("{s:s, s:s}", "scopeId", sc->id, "agentId", a->id), NULL,
                NULL);
}

static void mb__scope_delete(mb_broker *b, mb_scope *sc, const char *source);

static void mb__scope_leave(mb_broker *b, mb_scope *sc, mb_agent *a, const char *caused_by)
{
    if (!mb_map_del(sc->members, a->id))
        return;
    mb_map_del(a->scopes, sc->id);
    mb_emit(b, "scope_member_left", a->id, json_pack("{s:s, s:s}", "scopeId", sc->id, "agentId", a->id), caused_by,
            NULL);
    if (!mb_map_size(sc->members) && json_is_true(json_object_get(sc->doc, "autoDelete")))
        mb__scope_delete(b, sc, a->id);
}

/* ---- restore after restart ---- */

mb_agent *mb_agent_restore(mb_broker *b, json_t *doc)
{
    const char *id = json_string_value(json_object_get(doc, "id"));
    if (!id || mb_agent_get(b, id)) {
        json_decref(doc);
        return NULL;
    }
    mb_agent *a = mb__agent_alloc(id);
    if (!a) {
        json_decref(doc);
        return NULL;
    }
    json_decref(a->doc);
    a->doc = doc;
    mb__set_str(&a->state, json_string_value(json_object_get(doc, "state")) ?: "registered");
    a->parent = mb__dup(json_string_value(json_object_get(doc, "parent")));
    a->role = mb__dup(json_string_value(json_object_get(doc, "role")));
    a->conversation = mb__dup(json_string_value(json_object_get(json_object_get(doc, "metadata"), "conversationId")));
    mb_map_put(b->agents, a->id, a);
    /* relink lineage in whatever order records come back */
    mb__link_parent(b, a);
    MB_MAP_FOREACH(b->agents, e)
    {
        mb_agent *o = mb_map_val(e);
        if (o->parent && !strcmp(o->parent, a->id))
            mb_map_put(a->children, o->id, o);
    }
    json_t *scs = json_object_get(doc, "scopes");
    size_t i;
    json_t *x;
    json_array_foreach(scs, i, x)
    {
        mb_scope *sc = mb_scope_get(b, json_string_value(x));
        if (sc)
            mb__scope_join(b, sc, a, 0);
    }
    mb_agent_doc(a);
    return a;
}

mb_scope *mb_scope_restore(mb_broker *b, json_t *doc)
{
    const char *id = json_string_value(json_object_get(doc, "id"));
    if (!id || mb_scope_get(b, id)) {
        json_decref(doc);
        return NULL;
    }
    mb_scope *sc = calloc(1, sizeof *sc);
    sc->id = strdup(id);
    sc->parent = mb__dup(json_string_value(json_object_get(doc, "parent")));
    sc->doc = doc;
    sc->members = mb_map_new();
    mb_map_put(b->scopes, sc->id, sc);
    return sc;
}

/* ---- state machine (MAP.md 6.1) ---- */

static int mb__state_known(const char *s)
{
    static const char *known[] = {"registered", "active", "busy",   "idle",     "suspended",
                                  "stopping",   "stopped", "failed", "orphaned", NULL};
    for (int i = 0; known[i]; i++)
        if (!strcmp(s, known[i]))
            return 1;
    if (!strncmp(s, "x-", 2) && s[2] >= 'a' && s[2] <= 'z') {
        for (const char *p = s + 3; *p; p++)
            if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-'))
                return 0;
        return 1;
    }
    return !strncmp(s, "custom:", 7) && s[7];
}

static int mb__custom(const char *s) { return !strncmp(s, "x-", 2) || !strncmp(s, "custom:", 7); }

static int mb__transition_ok(const char *from, const char *to)
{
    if (!strcmp(from, to) || !strcmp(to, "stopped"))
        return strcmp(from, "stopped") != 0 || !strcmp(to, "stopped");
    if (!strcmp(from, "stopped"))
        return 0;
    if (!strcmp(to, "orphaned"))
        return 0; /* only the broker orphans agents */
    if (!strcmp(from, "stopping"))
        return !strcmp(to, "failed");
    if (!strcmp(from, "registered") || !strcmp(from, "active"))
        return 1;
    if (!strcmp(from, "orphaned"))
        return !strcmp(to, "idle") || !strcmp(to, "active") || !strcmp(to, "registered");
    if (mb__custom(from) || mb__custom(to))
        return 1; /* custom states go to and from any non-terminal state */
    if (!strcmp(from, "failed"))
        return !strcmp(to, "active") || !strcmp(to, "idle") || !strcmp(to, "registered");
    if (!strcmp(from, "idle") || !strcmp(from, "busy"))
        return !strcmp(to, "idle") || !strcmp(to, "busy") || !strcmp(to, "suspended") || !strcmp(to, "active") ||
               !strcmp(to, "stopping") || !strcmp(to, "failed");
    if (!strcmp(from, "suspended"))
        return !strcmp(to, "idle") || !strcmp(to, "busy") || !strcmp(to, "active") || !strcmp(to, "registered") ||
               !strcmp(to, "stopping") || !strcmp(to, "failed");
    return 0;
}

int mb_agent_set_state(mb_broker *b, mb_agent *a, const char *state, const char *source, mp_err *e)
{
    if (!mb__state_known(state))
        return mp_err_set(e, MP_INVALID_PARAMS, "state",
                          "Unknown agent state \"%s\" (registered, active, busy, idle, suspended, stopping, stopped, "
                          "failed, or x-custom)",
                          state);
    if (!strcmp(a->state, state))
        return 0;
    if (!mb__transition_ok(a->state, state))
        return mp_err_set(e, MP_STATE_INVALID, "state", "Invalid state transition for agent %s: %s -> %s", a->id,
                          a->state, state);
    char *prev = a->state;
    a->state = strdup(state);
    if (!strcmp(state, "suspended")) {
        free(a->prev_state);
        a->prev_state = prev;
    } else {
        free(a->prev_state);
        a->prev_state = NULL;
        a->prev_state = prev;
    }
    json_t *lc = json_object_get(a->doc, "lifecycle");
    if (!json_is_object(lc)) {
        lc = json_object();
        json_object_set_new(a->doc, "lifecycle", lc);
    }
    if (!strcmp(state, "stopped"))
        json_object_set_new(lc, "stoppedAt", json_integer(mb_now()));
    if (!strcmp(state, "active") && !json_object_get(lc, "startedAt"))
        json_object_set_new(lc, "startedAt", json_integer(mb_now()));
    json_object_set_new(lc, "lastActiveAt", json_integer(mb_now()));
    mb_agent_doc(a);
    mb_agent_persist(b, a);
    mb_emit(b, "agent_state_changed", a->id,
            json_pack("{s:s, s:s, s:s, s:O}", "agentId", a->id, "previousState", a->prev_state ? a->prev_state : "",
                      "newState", a->state, "agent", a->doc),
            NULL, NULL);
    return 0;
}

void mb_agent_remove(mb_broker *b, mb_agent *a, const char *reason, const char *caused_by)
{
    char ev[MP_ULID_LEN + 1] = "";
    mb_mail_on_agent_stop(b, a, reason);
    json_t *d = json_pack("{s:s}", "agentId", a->id);
    if (reason)
        json_object_set_new(d, "reason", json_string(reason));
    mb_emit(b, "agent_unregistered", a->id, d, caused_by, ev);
    mb_map_ent *e = mb_map_first(a->scopes);
    while (e) {
        mb_map_ent *n = mb_map_next(e);
        mb__scope_leave(b, mb_map_val(e), a, ev);
        e = n;
    }
    mb_agent *p = mb_agent_get(b, a->parent);
    if (p)
        mb_map_del(p->children, a->id);
    MB_MAP_FOREACH(a->children, c)
    {
        mb_agent *ch = mb_map_val(c);
        /* children keep their record; their parent link now dangles by id only */
        (void)ch;
    }
    if (a->session) {
        mb_map_del(a->session->owned, a->id);
        if (a->session->primary_agent && !strcmp(a->session->primary_agent, a->id)) {
            free(a->session->primary_agent);
            a->session->primary_agent = NULL;
        }
    }
    if (mb_txn(b) == 0)
        mst_del(b->store, MST_AGENT, NULL, a->id);
    mb_map_del(b->agents, a->id);
    mb_agent_free(a);
}

/* ---- helpers for handlers ---- */

static int mb__find_agent(mb_ctx *cx, const char *field, mb_agent **out)
{
    const char *id;
    if (mp_get_str(cx->params, field, MP_REQUIRED, &id, &cx->err))
        return cx->err.code;
    *out = mb_agent_get(cx->b, id);
    if (!*out)
        return MB_FAIL(cx, MP_AGENT_NOT_FOUND, field, "Agent not found: %s", id);
    return 0;
}

/* The caller may act for this agent: it owns it (or owns its parent), or it is
 * an operator. `operator_ctl` marks operator controls (stop, suspend, resume),
 * which anyone may use in open development mode; acting *as* the agent
 * (unregister, update, scope membership) always needs ownership unless an
 * authenticated operator does it. */
static int mb__may_act(mb_ctx *cx, mb_agent *a, int operator_ctl)
{
    if (a->session == cx->s || (a->owner && !strcmp(a->owner, cx->s->participant_id)))
        return 0;
    if (operator_ctl ? mb_auth_is_operator(cx->s) : (cx->b->auth && mb_auth_is_operator(cx->s)))
        return 0;
    /* a parent agent's owner may control its children */
    mb_agent *p = mb_agent_get(cx->b, a->parent);
    if (p && p->session == cx->s)
        return 0;
    return MB_FAIL(cx, MP_PERMISSION_DENIED, "agentId", "Agent %s is not owned by this connection", a->id);
}

static int mb__may_control(mb_ctx *cx, mb_agent *a) { return mb__may_act(cx, a, 0); }
static int mb__may_operate(mb_ctx *cx, mb_agent *a) { return mb__may_act(cx, a, 1); }

static const char *const mb__agent_copy_keys[] = {"name", "description", "visibility", "capabilities", "environment",
                                                  "capabilityDescriptor", "persistentIdentity", "metadata",
                                                  "permissionOverrides", "relationships", NULL};

static int mb__validate_agent_params(mb_ctx *cx)
{
    static const char *strs[] = {"name", "description", "role", "parent", "visibility", NULL};
    static const char *objs[] = {"capabilities", "environment", "capabilityDescriptor", "persistentIdentity",
                                 "metadata", "permissionOverrides", NULL};
    const char *s;
    json_t *o;
    for (int i = 0; strs[i]; i++)
        if (mp_get_str(cx->params, strs[i], 0, &s, &cx->err))
            return cx->err.code;
    for (int i = 0; objs[i]; i++)
        if (mp_get_obj(cx->params, objs[i], 0, &o, &cx->err))
            return cx->err.code;
    if (mp_get_str_arr(cx->params, "scopes", 0, &o, &cx->err) || mp_get_arr(cx->params, "relationships", 0, &o, &cx->err))
        return cx->err.code;
    const char *vis = json_string_value(json_object_get(cx->params, "visibility"));
    if (vis && strcmp(vis, "public") && strcmp(vis, "parent-only") && strcmp(vis, "scope") && strcmp(vis, "system"))
        return MB_FAIL(cx, MP_INVALID_PARAMS, "visibility", "visibility must be public, parent-only, scope or system");
    return 0;
}

static void mb__apply_agent_params(mb_agent *a, json_t *p)
{
    for (int i = 0; mb__agent_copy_keys[i]; i++)
        mp_copy_key(a->doc, p, mb__agent_copy_keys[i]);
    const char *role = json_string_value(json_object_get(p, "role"));
    if (role)
        mb__set_str(&a->role, role);
}

static void mb__auto_join(mb_broker *b, mb_agent *a)
{
    if (!a->role)
        return;
    MB_MAP_FOREACH(b->scopes, e)
    {
        mb_scope *sc = mb_map_val(e);
        json_t *roles = json_object_get(sc->doc, "autoJoinRoles");
        size_t i;
        json_t *x;
        json_array_foreach(roles, i, x) if (json_is_string(x) && !strcmp(json_string_value(x), a->role))
        {
            mb__scope_join(b, sc, a, 1);
            break;
        }
    }
}

/* Shared by register and spawn. owner = the calling session. */
static int mb__create_agent(mb_ctx *cx, int spawn, mb_agent **out)
{
    mb_broker *b = cx->b;
    mb_session *s = cx->s;
    const char *id = NULL, *parent = NULL;
    json_t *scopes = NULL;
    if (mp_get_id(cx->params, "agentId", 0, &id, &cx->err) || mb__validate_agent_params(cx))
        return cx->err.code;
    mp_get_str(cx->params, "parent", 0, &parent, &cx->err);
    mp_get_str_arr(cx->params, "scopes", 0, &scopes, &cx->err);
    char gen[MB_ID_BUF];
    if (!id) {
        mb_new_id(b, NULL, gen, sizeof gen);
        id = gen;
    }
    if (!mb_auth_may_agent(s, id))
        return MB_FAIL(cx, MP_PERMISSION_DENIED, "agentId", "This principal may not register agent %s", id);
    if (parent && !mb_agent_get(b, parent))
        return MB_FAIL(cx, MP_AGENT_NOT_FOUND, "parent", "Parent agent not found: %s", parent);
    if (parent && !strcmp(parent, id))
        return MB_FAIL(cx, MP_INVALID_PARAMS, "parent", "An agent cannot be its own parent");
    size_t i;
    json_t *x;
    /* unknown scopes are created on demand unless --no-auto-create-scopes (scope_auto.c) */
    json_array_foreach(scopes, i, x) if (!mb_scope_auto(cx, json_string_value(x))) return MB_FAIL(
        cx, MP_SCOPE_NOT_FOUND, "scopes", "Scope not found: %s", json_string_value(x));

    mb_agent *a = mb_agent_get(b, id);
    int reclaimed = 0;
    if (a) {
        if (a->session == s && !spawn) {
            *out = a; /* re-register on the same connection: idempotent */
            mb__apply_agent_params(a, cx->params);
            mb_agent_doc(a);
            return 0;
        }
        /* a spawned record is claimed by the process that registers its id (MAP.md 6.4) */
        int free_to_take = !a->session || a->session->detached || (a->unclaimed && !spawn);
        int same_principal = !b->auth || !a->principal || (s->authenticated && !strcmp(a->principal, s->principal.id));
        if (!free_to_take || !same_principal || spawn)
            return MB_FAIL(cx, MP_AGENT_EXISTS, "agentId", "Agent already exists: %s", id);
        /* reclaim: the agent's process reconnected */
        if (a->session)
            mb_map_del(a->session->owned, a->id);
        reclaimed = 1;
        a->expires_at = 0;
        if (!strcmp(a->state, "orphaned")) {
            free(a->state);
            a->state = strdup(a->prev_state && strcmp(a->prev_state, "orphaned") ? a->prev_state : "active");
        }
    } else {
        a = mb__agent_alloc(id);
        if (!a)
            return MB_FAIL(cx, MP_INTERNAL, NULL, "out of memory");
        mb_map_put(b->agents, a->id, a);
        json_object_set_new(a->doc, "lifecycle", json_pack("{s:I}", "createdAt", (json_int_t)mb_now()));
    }
    if (parent)
        mb__set_str(&a->parent, parent);
    mb__apply_agent_params(a, cx->params);
    a->unclaimed = spawn;
    mb__set_str(&a->owner, s->participant_id);
    mb__set_str(&a->principal, s->authenticated ? s->principal.id : NULL);
    a->session = s;
    mb_map_put(s->owned, a->id, a);
    if (!spawn && !s->primary_agent)
        s->primary_agent = strdup(a->id);
    mb__link_parent(b, a);
    mb_agent_doc(a);
    json_t *d = json_pack("{s:s, s:s, s:O}", "agentId", a->id, "ownerId", a->owner, "agent", a->doc);
    mp_copy_key(d, a->doc, "name");
    if (a->role)
        json_object_set_new(d, "role", json_string(a->role));
    if (a->parent)
        json_object_set_new(d, "parent", json_string(a->parent));
    if (reclaimed)
        json_object_set_new(d, "reclaimed", json_true());
    mb_emit(b, "agent_registered", a->id, d, NULL, NULL);
    json_array_foreach(scopes, i, x) mb__scope_join(b, mb_scope_get(b, json_string_value(x)), a, 1);
    mb__auto_join(b, a);
    mb_agent_doc(a);
    mb_agent_persist(b, a);
    mb_info(s->session_id, "agent %s %s%s%s", a->id, reclaimed ? "reclaimed" : spawn ? "spawned" : "registered",
            a->parent ? " under " : "", a->parent ? a->parent : "");
    *out = a;
    return 0;
}

static int h_register(mb_ctx *cx)
{
    mb_agent *a = NULL;
    if (mb__create_agent(cx, 0, &a))
        return cx->err.code;
    cx->result = json_pack("{s:O}", "agent", mb_agent_doc(a));
    return 0;
}

static int h_spawn(mb_ctx *cx)
{
    json_t *initial = NULL;
    if (mp_get_obj(cx->params, "initialMessage", 0, &initial, &cx->err))
        return cx->err.code;
    mb_agent *a = NULL;
    if (mb__create_agent(cx, 1, &a))
        return cx->err.code;
    mb_agent *parent = mb_agent_get(cx->b, a->parent);
    mb_mail_on_spawn(cx->b, cx->s, a, parent);
    cx->result = json_pack("{s:O}", "agent", mb_agent_doc(a));
    if (initial) {
        json_t *to = json_object_get(initial, "to");
        json_t *dto = to ? json_incref(to) : json_pack("{s:s}", "agent", a->id);
        char mid[64] = "";
        mp_err saved = cx->err;
        json_t *res = cx->result;
        cx->result = NULL;
        if (mb_send_message(cx, dto, json_object_get(initial, "payload"), json_object_get(initial, "meta"), mid) == 0)
            json_object_set_new(res, "messageId", json_string(mid));
        mb_ctx_drop_result(cx);
        cx->result = res;
        cx->err = saved;
        json_decref(dto);
    }
    return 0;
}

static int h_unregister(mb_ctx *cx)
{
    mb_agent *a = NULL;
    const char *reason = NULL;
    if (mb__find_agent(cx, "agentId", &a) || mp_get_str(cx->params, "reason", 0, &reason, &cx->err) ||
        mb__may_control(cx, a))
        return cx->err.code;
    cx->result = json_pack("{s:O, s:b}", "agent", mb_agent_doc(a), "unregistered", 1);
    mb_agent_remove(cx->b, a, reason, NULL);
    return 0;
}

/* ---- list / get ---- */

static int mb__any_in(json_t *list, const char *v)
{
    size_t i;
    json_t *x;
    if (!v)
        return 0;
    json_array_foreach(list, i, x) if (json_is_string(x) && !strcmp(json_string_value(x), v)) return 1;
    return 0;
}

static int mb__agent_matches(mb_agent *a, json_t *f)
{
    json_t *v;
    if ((v = json_object_get(f, "states")) && json_array_size(v) && !mb__any_in(v, a->state))
        return 0;
    if ((v = json_object_get(f, "roles")) && json_array_size(v) && !mb__any_in(v, a->role))
        return 0;
    if ((v = json_object_get(f, "scopes")) && json_array_size(v)) {
        int hit = 0;
        size_t i;
        json_t *x;
        json_array_foreach(v, i, x) if (json_is_string(x) && mb_map_get(a->scopes, json_string_value(x))) hit = 1;
        if (!hit)
            return 0;
    }
    const char *s;
    if ((s = json_string_value(json_object_get(f, "parent"))) && (!a->parent || strcmp(a->parent, s)))
        return 0;
    if ((v = json_object_get(f, "hasChildren")) && json_is_boolean(v) &&
        json_is_true(v) != (mb_map_size(a->children) > 0))
        return 0;
    if ((s = json_string_value(json_object_get(f, "ownerId"))) && (!a->owner || strcmp(a->owner, s)))
        return 0;
    json_t *cd = json_object_get(a->doc, "capabilityDescriptor");
    if ((s = json_string_value(json_object_get(f, "capabilityId")))) {
        int hit = 0;
        size_t i;
        json_t *x;
        json_array_foreach(json_object_get(cd, "capabilities"), i, x) if (json_is_string(json_object_get(x, "id")) &&
                                                                          !strcmp(json_string_value(json_object_get(x, "id")), s)) hit = 1;
        if (!hit)
            return 0;
    }
    if ((v = json_object_get(f, "tags")) && json_array_size(v)) {
        int hit = 0;
        size_t i;
        json_t *x;
        json_array_foreach(v, i, x) if (mb__any_in(json_object_get(cd, "tags"), json_string_value(x))) hit = 1;
        if (!hit)
            return 0;
    }
    if ((s = json_string_value(json_object_get(f, "accepts")))) {
        int hit = 0;
        size_t i;
        json_t *x;
        json_array_foreach(json_object_get(cd, "accepts"), i, x) if (json_is_string(json_object_get(x, "contentType")) &&
                                                                     !strcmp(json_string_value(json_object_get(x, "contentType")), s)) hit = 1;
        if (!hit)
            return 0;
    }
    if ((s = json_string_value(json_object_get(f, "persistentId"))) &&
        (!json_is_string(json_object_get(json_object_get(a->doc, "persistentIdentity"), "persistentId")) ||
         strcmp(json_string_value(json_object_get(json_object_get(a->doc, "persistentIdentity"), "persistentId")), s)))
        return 0;
    return 1;
}

static int h_list(mb_ctx *cx)
{
    json_t *f = NULL;
    const char *cursor = NULL;
    long long limit = 1000;
    if (mp_get_obj(cx->params, "filter", 0, &f, &cx->err) || mp_get_str(cx->params, "cursor", 0, &cursor, &cx->err) ||
        mp_get_int_range(cx->params, "limit", 1, 10000, &limit, &cx->err))
        return cx->err.code;
    static const char *arrs[] = {"states", "roles", "scopes", "tags", NULL};
    for (int i = 0; f && arrs[i]; i++) {
        json_t *a;
        char path[48];
        snprintf(path, sizeof path, "filter.%s", arrs[i]);
        if (mp_get_str_arr_p(f, arrs[i], path, &a, &cx->err))
            return cx->err.code;
    }
    json_t *out = json_array();
    int started = cursor == NULL || !mb_agent_get(cx->b, cursor);
    const char *last = NULL;
    int more = 0;
    MB_MAP_FOREACH(cx->b->agents, e)
    {
        mb_agent *a = mb_map_val(e);
        if (!started) {
            started = !strcmp(a->id, cursor);
            continue;
        }
        if (!mb__agent_matches(a, f))
            continue;
        if ((long long)json_array_size(out) == limit) {
            more = 1;
            break;
        }
        json_array_append(out, mb_agent_doc(a));
        last = a->id;
    }
    cx->result = json_pack("{s:o}", "agents", out);
    if (more && last)
        json_object_set_new(cx->result, "nextCursor", json_string(last));
    return 0;
}

static void mb__collect_desc(mb_agent *a, json_t *out, int depth, int max)
{
    if (max && depth > max)
        return;
    MB_MAP_FOREACH(a->children, e)
    {
        mb_agent *c = mb_map_val(e);
        json_array_append(out, mb_agent_doc(c));
        mb__collect_desc(c, out, depth + 1, max);
    }
}

static int h_get(mb_ctx *cx)
{
    mb_agent *a = NULL;
    json_t *inc = NULL;
    if (mb__find_agent(cx, "agentId", &a) || mp_get_obj(cx->params, "include", 0, &inc, &cx->err))
        return cx->err.code;
    mb_broker *b = cx->b;
    cx->result = json_pack("{s:O}", "agent", mb_agent_doc(a));
    if (!inc)
        return 0;
    int max = (int)json_integer_value(json_object_get(inc, "maxDepth"));
    mb_agent *p = mb_agent_get(b, a->parent);
    if (json_is_true(json_object_get(inc, "parent")) && p)
        json_object_set(cx->result, "parent", mb_agent_doc(p));
    if (json_is_true(json_object_get(inc, "children"))) {
        json_t *c = json_array();
        MB_MAP_FOREACH(a->children, e)
        json_array_append(c, mb_agent_doc(mb_map_val(e)));
        json_object_set_new(cx->result, "children", c);
    }
    if (json_is_true(json_object_get(inc, "siblings"))) {
        json_t *c = json_array();
        if (p)
            MB_MAP_FOREACH(p->children, e)
            {
                mb_agent *sb = mb_map_val(e);
                if (sb != a)
                    json_array_append(c, mb_agent_doc(sb));
            }
        json_object_set_new(cx->result, "siblings", c);
    }
    if (json_is_true(json_object_get(inc, "ancestors"))) {
        json_t *c = json_array();
        int d = 0;
        for (mb_agent *x = p; x && (!max || d < max) && d < 1000; x = mb_agent_get(b, x->parent), d++)
            json_array_append(c, mb_agent_doc(x));
        json_object_set_new(cx->result, "ancestors", c);
    }
    if (json_is_true(json_object_get(inc, "descendants"))) {
        json_t *c = json_array();
        mb__collect_desc(a, c, 1, max);
        json_object_set_new(cx->result, "descendants", c);
    }
    return 0;
}

static int h_update(mb_ctx *cx)
{
    mb_agent *a = NULL;
    const char *state = NULL;
    json_t *md = NULL, *env = NULL, *po = NULL;
    if (mb__find_agent(cx, "agentId", &a) || mp_get_str(cx->params, "state", 0, &state, &cx->err) ||
        mp_get_obj(cx->params, "metadata", 0, &md, &cx->err) ||
        mp_get_obj(cx->params, "environment", 0, &env, &cx->err) ||
        mp_get_obj(cx->params, "permissionOverrides", 0, &po, &cx->err) || mb__may_control(cx, a))
        return cx->err.code;
    if (state && mb_agent_set_state(cx->b, a, state, a->id, &cx->err))
        return cx->err.code;
    if (md) {
        json_t *cur = json_object_get(a->doc, "metadata");
        if (!json_is_object(cur)) {
            cur = json_object();
            json_object_set_new(a->doc, "metadata", cur);
        }
        json_object_update(cur, md);
    }
    if (env) {
        json_object_set(a->doc, "environment", env);
        mb_emit(cx->b, "agent_environment_changed", a->id,
                json_pack("{s:s, s:O}", "agentId", a->id, "environment", env), NULL, NULL);
    }
    if (po) {
        json_object_set(a->doc, "permissionOverrides", po);
        mb_emit(cx->b, "permissions_agent_updated", a->id,
                json_pack("{s:s, s:O, s:O, s:s}", "agentId", a->id, "changes", po, "effectivePermissions", po,
                          "updatedBy", mb_session_from(cx->s)),
                NULL, NULL);
    }
    const char *name = json_string_value(json_object_get(cx->params, "name"));
    if (name)
        json_object_set_new(a->doc, "name", json_string(name));
    const char *role = json_string_value(json_object_get(cx->params, "role"));
    if (role)
        mb__set_str(&a->role, role);
    mb_agent_doc(a);
    if (md || env || po || name || role)
        mb_agent_persist(cx->b, a);
    cx->result = json_pack("{s:O}", "agent", a->doc);
    return 0;
}

/* Tell the owning connection about a lifecycle command (there is no SDK
 * handler for it; agents that care see it as a system message). */
static void mb__notify_owner(mb_broker *b, mb_agent *a, const char *what, const char *reason)
{
    if (!a->session || !a->session->wsi)
        return;
    char mid[64];
    mb_new_id(b, NULL, mid, sizeof mid);
    json_t *payload = json_pack("{s:s}", "type", what);
    if (reason)
        json_object_set_new(payload, "reason", json_string(reason));
    json_t *n = mp_rpc_notification(
        "map/message", json_pack("{s:{s:s, s:s, s:{s:s}, s:I, s:o}}", "message", "id", mid, "from", "system", "to",
                                 "agent", a->id, "timestamp", (json_int_t)mb_now(), "payload", payload));
    mb_session_send_json(a->session, n, MB_Q_MESSAGE);
    json_decref(n);
}

static int h_stop(mb_ctx *cx)
{
    mb_agent *a = NULL;
    const char *reason = NULL;
    int force = 0;
    if (mb__find_agent(cx, "agentId", &a) || mp_get_str(cx->params, "reason", 0, &reason, &cx->err) ||
        mp_get_bool(cx->params, "force", &force, &cx->err) || mb__may_operate(cx, a))
        return cx->err.code;
    if (!strcmp(a->state, "stopped"))
        return MB_FAIL(cx, MP_TERMINATED, "agentId", "Agent %s is already stopped", a->id);
    if (mb_agent_set_state(cx->b, a, force ? "stopped" : "stopping", mb_session_from(cx->s), &cx->err))
        return cx->err.code;
    mb__notify_owner(cx->b, a, "map/agents/stop", reason);
    mb_mail_on_agent_stop(cx->b, a, reason ? reason : "stopped");
    mb_audit(cx, a->id, cx->params);
    cx->result = json_pack("{s:b, s:O}", "stopping", 1, "agent", mb_agent_doc(a));
    return 0;
}

static int h_suspend(mb_ctx *cx)
{
    mb_agent *a = NULL;
    const char *reason = NULL;
    if (mb__find_agent(cx, "agentId", &a) || mp_get_str(cx->params, "reason", 0, &reason, &cx->err) ||
        mb__may_operate(cx, a))
        return cx->err.code;
    if (!strcmp(a->state, "stopped"))
        return MB_FAIL(cx, MP_TERMINATED, "agentId", "Agent %s is stopped", a->id);
    if (mb_agent_set_state(cx->b, a, "suspended", mb_session_from(cx->s), &cx->err))
        return cx->err.code;
    mb__notify_owner(cx->b, a, "map/agents/suspend", reason);
    mb_audit(cx, a->id, cx->params);
    cx->result = json_pack("{s:b, s:O}", "suspended", 1, "agent", mb_agent_doc(a));
    return 0;
}

static int h_resume(mb_ctx *cx)
{
    mb_agent *a = NULL;
    if (mb__find_agent(cx, "agentId", &a) || mb__may_operate(cx, a))
        return cx->err.code;
    if (strcmp(a->state, "suspended"))
        return MB_FAIL(cx, MP_STATE_INVALID, "agentId", "Agent %s is not suspended (state %s)", a->id, a->state);
    const char *back = a->prev_state && strcmp(a->prev_state, "suspended") ? a->prev_state : "active";
    char *to = strdup(back);
    int rc = mb_agent_set_state(cx->b, a, to, mb_session_from(cx->s), &cx->err);
    free(to);
    if (rc)
        return rc;
    mb__notify_owner(cx->b, a, "map/agents/resume", NULL);
    mb_audit(cx, a->id, cx->params);
    cx->result = json_pack("{s:b, s:O}", "resumed", 1, "agent", mb_agent_doc(a));
    return 0;
}

/* ---- structure graph ---- */

static void mb__graph_add(mb_broker *b, mb_agent *a, json_t *nodes, json_t *edges, int rel, int depth, int max,
                          mb_map *seen)
{
    if (mb_map_get(seen, a->id))
        return;
    mb_map_put(seen, a->id, a);
    json_array_append(nodes, mb_agent_doc(a));
    if (rel) {
        size_t i;
        json_t *r;
        json_array_foreach(json_object_get(a->doc, "relationships"), i, r)
        {
            const char *t = json_string_value(json_object_get(r, "type"));
            const char *other = json_string_value(json_object_get(r, "agentId"));
            if (!t || !other)
                continue;
            if (!strcmp(t, "supervised"))
                json_array_append_new(edges, json_pack("{s:s, s:s, s:s}", "from", other, "to", a->id, "type", "supervisor"));
            else
                json_array_append_new(edges, json_pack("{s:s, s:s, s:s}", "from", a->id, "to", other, "type", t));
        }
    }
    if (max && depth >= max)
        return;
    MB_MAP_FOREACH(a->children, e)
    {
        mb_agent *c = mb_map_val(e);
        json_array_append_new(edges, json_pack("{s:s, s:s, s:s}", "from", a->id, "to", c->id, "type", "parent-child"));
        mb__graph_add(b, c, nodes, edges, rel, depth + 1, max, seen);
    }
}

static int h_graph(mb_ctx *cx)
{
    const char *root = NULL;
    long long depth = 0;
    int rel = 1;
    if (mp_get_str(cx->params, "rootAgentId", 0, &root, &cx->err) ||
        mp_get_int_range(cx->params, "depth", 1, 1000, &depth, &cx->err) ||
        mp_get_bool(cx->params, "includeRelationships", &rel, &cx->err))
        return cx->err.code;
    json_t *nodes = json_array(), *edges = json_array();
    mb_map *seen = mb_map_new();
    if (root) {
        mb_agent *a = mb_agent_get(cx->b, root);
        if (!a) {
            json_decref(nodes);
            json_decref(edges);
            mb_map_free(seen, NULL);
            return MB_FAIL(cx, MP_AGENT_NOT_FOUND, "rootAgentId", "Agent not found: %s", root);
        }
        mb__graph_add(cx->b, a, nodes, edges, rel, 0, (int)depth, seen);
    } else {
        MB_MAP_FOREACH(cx->b->agents, e)
        {
            mb_agent *a = mb_map_val(e);
            if (!a->parent || !mb_agent_get(cx->b, a->parent))
                mb__graph_add(cx->b, a, nodes, edges, rel, 0, (int)depth, seen);
        }
    }
    mb_map_free(seen, NULL);
    cx->result = json_pack("{s:o, s:o}", "nodes", nodes, "edges", edges);
    return 0;
}

const mb_method mb_methods_agents[] = {
    {"map/agents/register", h_register, MB_M_WRITES},
    {"map/agents/unregister", h_unregister, MB_M_WRITES},
    {"map/agents/list", h_list, 0},
    {"map/agents/get", h_get, 0},
    {"map/agents/update", h_update, MB_M_WRITES},
    {"map/agents/spawn", h_spawn, MB_M_WRITES},
    {"map/agents/stop", h_stop, MB_M_WRITES},
    {"map/agents/suspend", h_suspend, MB_M_WRITES},
    {"map/agents/resume", h_resume, MB_M_WRITES},
    {"map/structure/graph", h_graph, 0},
    {NULL, NULL, 0},
};

/* ---- scopes ---- */

static int mb__find_scope(mb_ctx *cx, mb_scope **out)
{
    const char *id;
    if (mp_get_str(cx->params, "scopeId", MP_REQUIRED, &id, &cx->err))
        return cx->err.code;
    *out = mb_scope_get(cx->b, id);
    if (!*out)
        return MB_FAIL(cx, MP_SCOPE_NOT_FOUND, "scopeId", "Scope not found: %s", id);
    return 0;
}

static int mb__enum_ok(mb_ctx *cx, const char *key, const char *const *allowed)
{
    const char *v;
    if (mp_get_str(cx->params, key, 0, &v, &cx->err))
        return cx->err.code;
    if (!v)
        return 0;
    for (int i = 0; allowed[i]; i++)
        if (!strcmp(v, allowed[i]))
            return 0;
    return MB_FAIL(cx, MP_INVALID_PARAMS, key, "Parameter %s has an unsupported value \"%s\"", key, v);
}

static int h_scope_create(mb_ctx *cx)
{
    mb_broker *b = cx->b;
    const char *id = NULL, *parent = NULL, *name = NULL;
    json_t *o;
    static const char *const join[] = {"open", "invite", "role", "system", NULL};
    static const char *const vis[] = {"public", "members", "system", NULL};
    static const char *const send[] = {"members", "any", NULL};
    if (mp_get_id(cx->params, "scopeId", 0, &id, &cx->err) || mp_get_str(cx->params, "parent", 0, &parent, &cx->err) ||
        mp_get_str(cx->params, "name", 0, &name, &cx->err) ||
        mp_get_str(cx->params, "description", 0, (const char **)&o, &cx->err) ||
        mp_get_str_arr(cx->params, "autoJoinRoles", 0, &o, &cx->err) ||
        mp_get_obj(cx->params, "metadata", 0, &o, &cx->err) || mb__enum_ok(cx, "joinPolicy", join) ||
        mb__enum_ok(cx, "visibility", vis) || mb__enum_ok(cx, "messageVisibility", vis) ||
        mb__enum_ok(cx, "sendPolicy", send))
        return cx->err.code;
    int flag;
    if (mp_get_bool(cx->params, "persistent", &flag, &cx->err) || mp_get_bool(cx->params, "autoDelete", &flag, &cx->err))
        return cx->err.code;
    char gen[MB_ID_BUF];
    if (!id) {
        mb_new_id(b, NULL, gen, sizeof gen);
        id = gen;
    }
    if (mb_scope_get(b, id))
        return MB_FAIL(cx, MP_INVALID_PARAMS, "scopeId", "Scope already exists: %s", id);
    if (parent && !mb_scope_get(b, parent))
        return MB_FAIL(cx, MP_SCOPE_NOT_FOUND, "parent", "Parent scope not found: %s", parent);
    mb_scope *sc = calloc(1, sizeof *sc);
    sc->id = strdup(id);
    sc->parent = mb__dup(parent);
    sc->members = mb_map_new();
    sc->doc = json_pack("{s:s}", "id", id);
    static const char *keys[] = {"name", "description", "parent", "joinPolicy", "autoJoinRoles", "visibility",
                                 "messageVisibility", "sendPolicy", "persistent", "autoDelete", "metadata", NULL};
    for (int i = 0; keys[i]; i++)
        mp_copy_key(sc->doc, cx->params, keys[i]);
    mb_map_put(b->scopes, sc->id, sc);
    json_t *d = json_pack("{s:s, s:O}", "scopeId", sc->id, "scope", sc->doc);
    if (name)
        json_object_set_new(d, "name", json_string(name));
    mb_emit(b, "scope_created", mb_session_from(cx->s), d, NULL, NULL);
    /* agents already holding an auto-join role */
    json_t *roles = json_object_get(sc->doc, "autoJoinRoles");
    if (json_array_size(roles))
        MB_MAP_FOREACH(b->agents, e)
        {
            mb_agent *a = mb_map_val(e);
            if (a->role && mb__any_in(roles, a->role)) {
                mb__scope_join(b, sc, a, 1);
                mb_agent_doc(a);
            }
        }
    mb__scope_persist(b, sc);
    cx->result = json_pack("{s:O}", "scope", sc->doc);
    return 0;
}

static int h_scope_get(mb_ctx *cx)
{
    mb_scope *sc = NULL;
    if (mb__find_scope(cx, &sc))
        return cx->err.code;
    cx->result = json_pack("{s:O}", "scope", sc->doc);
    return 0;
}

static int mb__scope_visible(mb_session *s, mb_scope *sc)
{
    const char *vis = json_string_value(json_object_get(sc->doc, "visibility"));
    if (!vis || !strcmp(vis, "public"))
        return 1;
    if (!strcmp(vis, "system"))
        return s->ptype == MB_PT_SYSTEM || mb_auth_is_operator(s);
    MB_MAP_FOREACH(s->owned, e) if (mb_map_get(sc->members, mb_map_key(e))) return 1;
    return mb_auth_is_operator(s) && s->b->auth;
}

static int h_scope_list(mb_ctx *cx)
{
    const char *parent = NULL;
    if (mp_get_str(cx->params, "parent", 0, &parent, &cx->err))
        return cx->err.code;
    json_t *out = json_array();
    MB_MAP_FOREACH(cx->b->scopes, e)
    {
        mb_scope *sc = mb_map_val(e);
        if (parent && (!sc->parent || strcmp(sc->parent, parent)))
            continue;
        if (mb__scope_visible(cx->s, sc))
            json_array_append(out, sc->doc);
    }
    cx->result = json_pack("{s:o}", "scopes", out);
    return 0;
}

static void mb__scope_delete(mb_broker *b, mb_scope *sc, const char *source)
{
    char ev[MP_ULID_LEN + 1];
    mb_emit(b, "scope_deleted", source, json_pack("{s:s}", "scopeId", sc->id), NULL, ev);
    mb_map_ent *e = mb_map_first(sc->members);
    while (e) {
        mb_map_ent *n = mb_map_next(e);
        mb_agent *a = mb_map_val(e);
        mb_map_del(a->scopes, sc->id);
        mb_map_del(sc->members, a->id);
        mb_emit(b, "scope_member_left", a->id, json_pack("{s:s, s:s}", "scopeId", sc->id, "agentId", a->id), ev, NULL);
        mb_agent_doc(a);
        mb_agent_persist(b, a);
        e = n;
    }
    if (mb_txn(b) == 0)
        mst_del(b->store, MST_SCOPE, NULL, sc->id);
    mb_map_del(b->scopes, sc->id);
    mb_scope_free(sc);
}

static int h_scope_delete(mb_ctx *cx)
{
    mb_scope *sc = NULL;
    if (mb__find_scope(cx, &sc))
        return cx->err.code;
    cx->result = json_pack("{s:O, s:b}", "scope", sc->doc, "deleted", 1);
    mb__scope_delete(cx->b, sc, mb_session_from(cx->s));
    return 0;
}

static int mb__scope_member_args(mb_ctx *cx, mb_scope **sc, mb_agent **a)
{
    if (mb__find_scope(cx, sc) || mb__find_agent(cx, "agentId", a) || mb__may_control(cx, *a))
        return cx->err.code;
    return 0;
}

static int h_scope_join(mb_ctx *cx)
{
    mb_scope *sc = NULL;
    mb_agent *a = NULL;
    const char *join_id = json_string_value(json_object_get(cx->params, "agentId"));
    if (join_id && mb_agent_get(cx->b, join_id)) /* a scope that does not exist is created (scope_auto.c) */
        (void)mb_scope_auto(cx, json_string_value(json_object_get(cx->params, "scopeId")));
    if (mb__scope_member_args(cx, &sc, &a))
        return cx->err.code;
    const char *pol = json_string_value(json_object_get(sc->doc, "joinPolicy"));
    if (pol && !mb_map_get(sc->members, a->id)) {
        if (!strcmp(pol, "invite"))
            return MB_FAIL(cx, MP_PERMISSION_DENIED, "scopeId", "Scope %s is invite-only", sc->id);
        if (!strcmp(pol, "role") && !(a->role && mb__any_in(json_object_get(sc->doc, "autoJoinRoles"), a->role)))
            return MB_FAIL(cx, MP_PERMISSION_DENIED, "scopeId", "Scope %s admits only the roles in autoJoinRoles", sc->id);
        if (!strcmp(pol, "system") && cx->s->ptype != MB_PT_SYSTEM)
            return MB_FAIL(cx, MP_PERMISSION_DENIED, "scopeId", "Scope %s admits only system participants", sc->id);
    }
    mb__scope_join(cx->b, sc, a, 1);
    mb_agent_doc(a);
    mb_agent_persist(cx->b, a);
    cx->result = json_pack("{s:O, s:O, s:b}", "scope", sc->doc, "agent", a->doc, "joined", 1);
    return 0;
}

static int h_scope_leave(mb_ctx *cx)
{
    mb_scope *sc = NULL;
    mb_agent *a = NULL;
    if (mb__scope_member_args(cx, &sc, &a))
        return cx->err.code;
    json_t *doc = json_incref(sc->doc);
    mb__scope_leave(cx->b, sc, a, NULL); /* may auto-delete sc */
    mb_agent_doc(a);
    mb_agent_persist(cx->b, a);
    cx->result = json_pack("{s:o, s:O, s:b}", "scope", doc, "agent", a->doc, "left", 1);
    return 0;
}

static int h_scope_members(mb_ctx *cx)
{
    mb_scope *sc = NULL;
    const char *cursor = NULL;
    long long limit = 1000;
    if (mb__find_scope(cx, &sc) || mp_get_str(cx->params, "cursor", 0, &cursor, &cx->err) ||
        mp_get_int_range(cx->params, "limit", 1, 100000, &limit, &cx->err))
        return cx->err.code;
    json_t *out = json_array();
    int started = !cursor || !mb_map_get(sc->members, cursor), more = 0;
    const char *last = NULL;
    MB_MAP_FOREACH(sc->members, e)
    {
        if (!started) {
            started = !strcmp(mb_map_key(e), cursor);
            continue;
        }
        if ((long long)json_array_size(out) == limit) {
            more = 1;
            break;
        }
        json_array_append_new(out, json_string(mb_map_key(e)));
        last = mb_map_key(e);
    }
    cx->result = json_pack("{s:o}", "members", out);
    if (more && last)
        json_object_set_new(cx->result, "nextCursor", json_string(last));
    return 0;
}

const mb_method mb_methods_scopes[] = {
    {"map/scopes/create", h_scope_create, MB_M_WRITES},
    {"map/scopes/get", h_scope_get, 0},
    {"map/scopes/list", h_scope_list, 0},
    {"map/scopes/delete", h_scope_delete, MB_M_WRITES},
    {"map/scopes/join", h_scope_join, MB_M_WRITES},
    {"map/scopes/leave", h_scope_leave, MB_M_WRITES},
    {"map/scopes/members", h_scope_members, 0},
    {NULL, NULL, 0},
};
