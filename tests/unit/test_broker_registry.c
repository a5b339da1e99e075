/* test_broker_registry.c - agents and scopes (MAP.md 6, 7): register/unregister,
 * list filters, get includes, the state machine, spawn lineage, stop/suspend/resume,
 * reclaim, scopes and their join policies. */
#include "test_util.h"

#include <stdio.h>

#include "broker_harness.h"
#include "mp_err.h"

#include "broker_fixture.h"

static void force_state(const char *id, const char *st)
{
    mb_agent *a = mb_agent_get(bh_broker(H), id);
    assert_non_null(a);
    free(a->state);
    a->state = strdup(st);
    mb_agent_doc(a);
}

static const char *state_of(const char *id)
{
    mb_agent *a = mb_agent_get(bh_broker(H), id);
    return a ? a->state : NULL;
}

/* ---- register ---- */

static void register_basic(void **state)
{
    (void)state;
    mb_session *obs = bh_connect(H, "client", "obs");
    char sub[64];
    bh_subscribe(H, obs, "{'eventTypes':['agent_registered']}", NULL, sub);
    mb_session *s = bh_connect(H, "agent", "p-a1");
    json_t *r = bh_ok(H, s, "map/agents/register",
                      "{'agentId':'a1','name':'Alpha','role':'worker','metadata':{'k':1},'capabilities':{}}");
    assert_string_equal(bh_str(r, "agent.id"), "a1");
    assert_string_equal(bh_str(r, "agent.ownerId"), "p-a1");
    assert_string_equal(bh_str(r, "agent.state"), "registered");
    assert_string_equal(bh_str(r, "agent.role"), "worker");
    assert_string_equal(bh_str(r, "agent.name"), "Alpha");
    assert_int_equal(bh_int(r, "agent.metadata.k"), 1);
    assert_true(json_is_integer(bh_get(r, "agent.lifecycle.createdAt")));
    json_decref(r);
    assert_string_equal(s->primary_agent, "a1");
    json_t *evs = bh_event_objs(H, obs, "agent_registered");
    assert_int_equal(json_array_size(evs), 1);
    json_t *ev = json_array_get(evs, 0);
    assert_string_equal(bh_str(ev, "source"), "a1");
    assert_string_equal(bh_str(ev, "data.agentId"), "a1");
    assert_string_equal(bh_str(ev, "data.ownerId"), "p-a1");
    assert_string_equal(bh_str(ev, "data.role"), "worker");
    assert_string_equal(bh_str(ev, "data.name"), "Alpha");
    assert_string_equal(bh_str(ev, "data.agent.id"), "a1");
    json_decref(evs);
    /* generated id */
    r = bh_ok(H, s, "map/agents/register", "{}");
    assert_true(strlen(bh_str(r, "agent.id")) > 0);
    assert_string_equal(s->primary_agent, "a1"); /* the first agent stays primary */
    json_decref(r);
}

static void register_idempotent_same_connection(void **state)
{
    (void)state;
    mb_session *obs = bh_connect(H, "client", "obs");
    char sub[64];
    bh_subscribe(H, obs, "{'eventTypes':['agent_registered']}", NULL, sub);
    mb_session *s = bh_agent(H, "a1", "worker");
    json_decref(bh_events(H, obs));
    json_t *r = bh_ok(H, s, "map/agents/register", "{'agentId':'a1','name':'again'}");
    assert_string_equal(bh_str(r, "agent.name"), "again");
    json_decref(r);
    assert_int_equal(bh_count(H, obs, "map/event"), 0);
    assert_int_equal(mb_map_size(bh_broker(H)->agents), 1);
}

static void register_errors(void **state)
{
    (void)state;
    mb_session *s1 = bh_agent(H, "a1", NULL);
    mb_session *s2 = bh_connect(H, "agent", "p2");
    json_t *e = bh_err(H, s2, MP_AGENT_EXISTS, "map/agents/register", "{'agentId':'a1'}");
    assert_string_equal(bh_str(e, "data.field"), "agentId");
    json_decref(e);
    bh_err_field(H, s2, MP_AGENT_NOT_FOUND, "parent", "map/agents/register", "{'agentId':'b','parent':'ghost'}");
    bh_err_field(H, s1, MP_INVALID_PARAMS, "parent", "map/agents/register", "{'agentId':'a1','parent':'a1'}");
    /* unknown scopes are created on demand (--auto-create-scopes): one that cannot be created stays 2002 */
    bh_err_field(H, s2, MP_SCOPE_NOT_FOUND, "scopes", "map/agents/register", "{'agentId':'b','scopes':['no such scope']}");
    bh_err_field(H, s2, MP_INVALID_PARAMS, "scopes", "map/agents/register", "{'agentId':'b','scopes':'x'}");
    bh_err_field(H, s2, MP_INVALID_PARAMS, "visibility", "map/agents/register", "{'agentId':'b','visibility':'everyone'}");
    bh_err_field(H, s2, MP_INVALID_PARAMS, "metadata", "map/agents/register", "{'agentId':'b','metadata':[]}");
    bh_err_field(H, s2, MP_INVALID_PARAMS, "role", "map/agents/register", "{'agentId':'b','role':5}");
    bh_err_field(H, s2, MP_INVALID_PARAMS, "agentId", "map/agents/register", "{'agentId':''}");
    /* nothing half-created */
    assert_null(mb_agent_get(bh_broker(H), "b"));
    assert_int_equal(mb_map_size(bh_broker(H)->agents), 1);
}

/* ---- unregister ---- */

static void unregister(void **state)
{
    (void)state;
    mb_session *obs = bh_connect(H, "client", "obs");
    mb_session *s = bh_agent(H, "a1", NULL);
    mb_session *other = bh_connect(H, "client", "c2");
    json_decref(bh_ok(H, s, "map/scopes/create", "{'scopeId':'s1'}"));
    json_decref(bh_ok(H, s, "map/scopes/join", "{'scopeId':'s1','agentId':'a1'}"));
    char sub[64];
    bh_subscribe(H, obs, NULL, NULL, sub);
    bh_err_field(H, other, MP_PERMISSION_DENIED, "agentId", "map/agents/unregister", "{'agentId':'a1'}");
    bh_err_field(H, s, MP_AGENT_NOT_FOUND, "agentId", "map/agents/unregister", "{'agentId':'ghost'}");
    bh_err_field(H, s, MP_INVALID_PARAMS, "agentId", "map/agents/unregister", "{}");
    json_t *r = bh_ok(H, s, "map/agents/unregister", "{'agentId':'a1','reason':'done'}");
    assert_true(json_is_true(bh_get(r, "unregistered")));
    assert_string_equal(bh_str(r, "agent.id"), "a1");
    json_decref(r);
    assert_null(mb_agent_get(bh_broker(H), "a1"));
    assert_null(s->primary_agent);
    assert_int_equal(mb_map_size(s->owned), 0);
    json_t *evs = bh_event_objs(H, obs, NULL);
    assert_string_equal(bh_join(evs, "type"), "agent_unregistered,scope_member_left");
    assert_string_equal(bh_str(evs, "0.data.reason"), "done");
    /* scope_member_left is caused by the unregistration */
    assert_string_equal(bh_str(evs, "1.causedBy.0"), bh_str(evs, "0.id"));
    json_decref(evs);
    json_t *sc = bh_ok(H, s, "map/scopes/members", "{'scopeId':'s1'}");
    assert_int_equal(json_array_size(bh_get(sc, "members")), 0);
    json_decref(sc);
    /* the id is free again */
    json_decref(bh_ok(H, other, "map/agents/register", "{'agentId':'a1'}"));
}

/* ---- list filters ---- */

static void setup_population(void)
{
    /* p1 owns a (worker, s-red), a/c1 (worker), a/c2 (critic, s-red, s-blue); p2 owns b (critic), b/d (none) */
    mb_session *p1 = bh_connect(H, "agent", "p1");
    mb_session *p2 = bh_connect(H, "agent", "p2");
    json_decref(bh_ok(H, p1, "map/scopes/create", "{'scopeId':'s-red'}"));
    json_decref(bh_ok(H, p1, "map/scopes/create", "{'scopeId':'s-blue'}"));
    json_decref(bh_ok(H, p1, "map/agents/register", "{'agentId':'a','role':'worker','scopes':['s-red']}"));
    json_decref(bh_ok(H, p1, "map/agents/spawn", "{'agentId':'c1','role':'worker','parent':'a'}"));
    json_decref(bh_ok(H, p1, "map/agents/spawn", "{'agentId':'c2','role':'critic','parent':'a','scopes':['s-red','s-blue'],"
                                              "'capabilityDescriptor':{'tags':['fast'],'capabilities':[{'id':'cap.x'}],"
                                              "'accepts':[{'contentType':'text/plain'}]}}"));
    json_decref(bh_ok(H, p2, "map/agents/register", "{'agentId':'b','role':'critic','persistentIdentity':{'persistentId':'pid-b','identityType':'x'}}"));
    json_decref(bh_ok(H, p2, "map/agents/spawn", "{'agentId':'d','parent':'b'}"));
    force_state("c1", "busy");
    force_state("b", "idle");
}

static void list_filters(void **state)
{
    (void)state;
    setup_population();
    mb_session *c = bh_connect(H, "client", "cl");
    static const struct {
        const char *filter;
        const char *want;
    } cases[] = {
        {"{}", "a,c1,c2,b,d"},
        {"{'states':[]}", "a,c1,c2,b,d"},
        {"{'states':['busy']}", "c1"},
        {"{'states':['busy','idle']}", "c1,b"},
        {"{'states':['stopped']}", ""},
        {"{'roles':['worker']}", "a,c1"},
        {"{'roles':['critic','worker']}", "a,c1,c2,b"},
        {"{'scopes':['s-red']}", "a,c2"},
        {"{'scopes':['s-blue','nope']}", "c2"},
        {"{'parent':'a'}", "c1,c2"},
        {"{'parent':'b'}", "d"},
        {"{'parent':'zzz'}", ""},
        {"{'hasChildren':true}", "a,b"},
        {"{'hasChildren':false}", "c1,c2,d"},
        {"{'ownerId':'p2'}", "b,d"},
        {"{'ownerId':'p1','roles':['critic']}", "c2"},
        {"{'ownerId':'p2','roles':['worker']}", ""},
        {"{'parent':'a','states':['busy']}", "c1"},
        {"{'tags':['fast']}", "c2"},
        {"{'capabilityId':'cap.x'}", "c2"},
        {"{'accepts':'text/plain'}", "c2"},
        {"{'persistentId':'pid-b'}", "b"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json_t *r = bh_ok(H, c, "map/agents/list", "{'filter':%s}", cases[i].filter);
        const char *got = bh_join(bh_get(r, "agents"), "id");
        if (strcmp(got, cases[i].want))
            fail_msg("filter %s: got [%s], want [%s]", cases[i].filter, got, cases[i].want);
        assert_null(bh_get(r, "nextCursor"));
        json_decref(r);
    }
    bh_err_field(H, c, MP_INVALID_PARAMS, "filter.states", "map/agents/list", "{'filter':{'states':'busy'}}");
    bh_err_field(H, c, MP_INVALID_PARAMS, "filter.roles", "map/agents/list", "{'filter':{'roles':[1]}}");
    bh_err_field(H, c, MP_INVALID_PARAMS, "filter", "map/agents/list", "{'filter':[]}");
    bh_err_field(H, c, MP_INVALID_PARAMS, "limit", "map/agents/list", "{'limit':0}");
}

static void list_paging(void **state)
{
    (void)state;
    setup_population();
    mb_session *c = bh_connect(H, "client", "cl");
    char seen[256] = "";
    char cursor[64] = "";
    int pages = 0;
    for (;;) {
        json_t *r = cursor[0] ? bh_ok(H, c, "map/agents/list", "{'limit':2,'cursor':'%s'}", cursor)
                              : bh_ok(H, c, "map/agents/list", "{'limit':2}");
        pages++;
        size_t n = json_array_size(bh_get(r, "agents"));
        assert_true(n <= 2);
        if (n) {
            strcat(seen, seen[0] ? "," : "");
            strcat(seen, bh_join(bh_get(r, "agents"), "id"));
        }
        const char *next = bh_str(r, "nextCursor");
        if (!next) {
            json_decref(r);
            break;
        }
        assert_string_equal(next, bh_str(r, "agents.1.id"));
        snprintf(cursor, sizeof cursor, "%s", next);
        json_decref(r);
        assert_true(pages < 10);
    }
    assert_string_equal(seen, "a,c1,c2,b,d");
    assert_int_equal(pages, 3);
}

/* ---- get includes ---- */

static void get_includes(void **state)
{
    (void)state;
    mb_session *p = bh_agent(H, "root", NULL);
    json_decref(bh_ok(H, p, "map/agents/spawn", "{'agentId':'m','parent':'root'}"));
    json_decref(bh_ok(H, p, "map/agents/spawn", "{'agentId':'m2','parent':'root'}"));
    json_decref(bh_ok(H, p, "map/agents/spawn", "{'agentId':'leaf','parent':'m'}"));
    json_decref(bh_ok(H, p, "map/agents/spawn", "{'agentId':'leaf2','parent':'leaf'}"));
    json_t *r = bh_ok(H, p, "map/agents/get", "{'agentId':'m'}");
    assert_string_equal(bh_str(r, "agent.id"), "m");
    assert_string_equal(bh_str(r, "agent.parent"), "root");
    assert_null(bh_get(r, "children"));
    assert_null(bh_get(r, "parent"));
    json_decref(r);
    r = bh_ok(H, p, "map/agents/get",
              "{'agentId':'m','include':{'parent':true,'children':true,'siblings':true,'ancestors':true,'descendants':true}}");
    assert_string_equal(bh_str(r, "parent.id"), "root");
    assert_string_equal(bh_join(bh_get(r, "children"), "id"), "leaf");
    assert_string_equal(bh_join(bh_get(r, "siblings"), "id"), "m2");
    assert_string_equal(bh_join(bh_get(r, "ancestors"), "id"), "root");
    assert_string_equal(bh_join(bh_get(r, "descendants"), "id"), "leaf,leaf2");
    json_decref(r);
    r = bh_ok(H, p, "map/agents/get", "{'agentId':'root','include':{'descendants':true,'maxDepth':1}}");
    assert_string_equal(bh_join(bh_get(r, "descendants"), "id"), "m,m2");
    json_decref(r);
    r = bh_ok(H, p, "map/agents/get", "{'agentId':'leaf2','include':{'ancestors':true,'maxDepth':2}}");
    assert_string_equal(bh_join(bh_get(r, "ancestors"), "id"), "leaf,m");
    json_decref(r);
    r = bh_ok(H, p, "map/agents/get", "{'agentId':'root','include':{'parent':true,'siblings':true}}");
    assert_null(bh_get(r, "parent"));
    assert_int_equal(json_array_size(bh_get(r, "siblings")), 0);
    json_decref(r);
    bh_err_field(H, p, MP_AGENT_NOT_FOUND, "agentId", "map/agents/get", "{'agentId':'zz'}");
    bh_err_field(H, p, MP_INVALID_PARAMS, "include", "map/agents/get", "{'agentId':'m','include':true}");
}

/* ---- the state machine (MAP.md 6.1) ---- */

static const char *const k_states[] = {"registered", "active", "busy", "idle", "suspended", "stopping",
                                       "stopped",    "failed", "orphaned", "x-a"};
static const char *const k_targets[] = {"registered", "active", "busy", "idle", "suspended", "stopping",
                                        "stopped",    "failed", "orphaned", "x-a", "x-b"};
/* rows: from k_states[i]; columns: to k_targets[j]; y = allowed, n = 3001 */
static const char *const k_allowed[] = {
    /* registered */ "yyyyyyyynyy",
    /* active     */ "yyyyyyyynyy",
    /* busy       */ "nyyyyyyynyy",
    /* idle       */ "nyyyyyyynyy",
    /* suspended  */ "yyyyyyyynyy",
    /* stopping   */ "nnnnnyyynnn",
    /* stopped    */ "nnnnnnynnnn",
    /* failed     */ "yynynnyynyy",
    /* orphaned   */ "yynynnynynn",
    /* x-a        */ "yyyyyyyynyy",
};

static void update_state_machine(void **state)
{
    (void)state;
    mb_session *obs = bh_connect(H, "client", "obs");
    char sub[64];
    bh_subscribe(H, obs, "{'eventTypes':['agent_state_changed']}", NULL, sub);
    mb_session *s = bh_connect(H, "agent", "owner");
    int n = 0;
    for (size_t i = 0; i < sizeof k_states / sizeof k_states[0]; i++)
        for (size_t j = 0; j < sizeof k_targets / sizeof k_targets[0]; j++) {
            char id[32];
            snprintf(id, sizeof id, "sm-%zu-%zu", i, j);
            json_decref(bh_ok(H, s, "map/agents/register", "{'agentId':'%s'}", id));
            force_state(id, k_states[i]);
            json_decref(bh_events(H, obs));
            json_t *r = bh_call(H, s, "map/agents/update", "{'agentId':'%s','state':'%s'}", id, k_targets[j]);
            int ok = json_object_get(r, "result") != NULL;
            int want = k_allowed[i][j] == 'y';
            if (ok != want)
                fail_msg("%s -> %s: %s, want %s", k_states[i], k_targets[j], ok ? "allowed" : "refused",
                         want ? "allowed" : "refused");
            json_t *evs = bh_event_objs(H, obs, "agent_state_changed");
            if (ok) {
                assert_string_equal(bh_str(r, "result.agent.state"), k_targets[j]);
                assert_string_equal(state_of(id), k_targets[j]);
                if (strcmp(k_states[i], k_targets[j])) {
                    assert_int_equal(json_array_size(evs), 1);
                    assert_string_equal(bh_str(evs, "0.data.previousState"), k_states[i]);
                    assert_string_equal(bh_str(evs, "0.data.newState"), k_targets[j]);
                    assert_string_equal(bh_str(evs, "0.data.agentId"), id);
                    assert_string_equal(bh_str(evs, "0.source"), id);
                } else {
                    assert_int_equal(json_array_size(evs), 0); /* same-state update is a no-op */
                }
            } else {
                assert_int_equal(bh_int(r, "error.code"), MP_STATE_INVALID);
                assert_string_equal(bh_str(r, "error.data.field"), "state");
                assert_string_equal(state_of(id), k_states[i]);
                assert_int_equal(json_array_size(evs), 0);
            }
            json_decref(evs);
            json_decref(r);
            n++;
        }
    assert_int_equal(n, 110);
}

/* MAP.md 6.1: "custom x- states may go to/from any non-terminal state"; failed is not terminal. */
static void update_failed_to_custom(void **state)
{
    (void)state;
    mb_session *s = bh_agent(H, "a1", NULL);
    force_state("a1", "failed");
    json_t *r = bh_call(H, s, "map/agents/update", "{'agentId':'a1','state':'x-retrying'}");
    assert_non_null(json_object_get(r, "result"));
    json_decref(r);
    assert_string_equal(state_of("a1"), "x-retrying");
}

static void update_bad_states(void **state)
{
    (void)state;
    mb_session *s = bh_agent(H, "a1", NULL);
    static const char *const bad[] = {"running", "x-", "x-Upper", "X-a", "x-a_b", "", "REGISTERED", NULL};
    for (int i = 0; bad[i]; i++) {
        bh_err_field(H, s, MP_INVALID_PARAMS, "state", "map/agents/update", "{'agentId':'a1','state':'%s'}", bad[i]);
        assert_string_equal(state_of("a1"), "registered");
    }
    bh_err_field(H, s, MP_INVALID_PARAMS, "state", "map/agents/update", "{'agentId':'a1','state':3}");
    bh_err_field(H, s, MP_AGENT_NOT_FOUND, "agentId", "map/agents/update", "{'agentId':'nope','state':'idle'}");
    mb_session *other = bh_connect(H, "client", "other");
    bh_err_field(H, other, MP_PERMISSION_DENIED, "agentId", "map/agents/update", "{'agentId':'a1','state':'idle'}");
    assert_string_equal(state_of("a1"), "registered");
}

static void update_fields(void **state)
{
    (void)state;
    mb_session *obs = bh_connect(H, "client", "obs");
    char sub[64];
    bh_subscribe(H, obs, NULL, NULL, sub);
    mb_session *s = bh_agent(H, "a1", NULL);
    json_decref(bh_events(H, obs));
    json_decref(bh_ok(H, s, "map/agents/update", "{'agentId':'a1','metadata':{'x':1}}"));
    json_t *r = bh_ok(H, s, "map/agents/update",
                      "{'agentId':'a1','metadata':{'y':2},'environment':{'os':{'type':'linux'}},'permissionOverrides':{'canSee':{}}}");
    assert_int_equal(bh_int(r, "agent.metadata.x"), 1); /* merged */
    assert_int_equal(bh_int(r, "agent.metadata.y"), 2);
    assert_string_equal(bh_str(r, "agent.environment.os.type"), "linux");
    json_decref(r);
    json_t *evs = bh_event_objs(H, obs, NULL);
    assert_string_equal(bh_join(evs, "type"), "agent_environment_changed,permissions_agent_updated");
    assert_string_equal(bh_str(evs, "0.data.environment.os.type"), "linux");
    json_decref(evs);
}

/* ---- stop / suspend / resume ---- */

static void stop_suspend_resume(void **state)
{
    (void)state;
    mb_session *s = bh_agent(H, "a1", NULL);
    mb_session *op = bh_connect(H, "client", "op");
    force_state("a1", "busy");
    json_t *r = bh_ok(H, op, "map/agents/suspend", "{'agentId':'a1','reason':'pause'}");
    assert_true(json_is_true(bh_get(r, "suspended")));
    assert_string_equal(bh_str(r, "agent.state"), "suspended");
    json_decref(r);
    json_t *m = bh_messages(H, s); /* the owner is told */
    assert_int_equal(json_array_size(m), 1);
    assert_string_equal(bh_str(m, "0.from"), "system");
    assert_string_equal(bh_str(m, "0.payload.type"), "map/agents/suspend");
    assert_string_equal(bh_str(m, "0.payload.reason"), "pause");
    json_decref(m);
    r = bh_ok(H, op, "map/agents/resume", "{'agentId':'a1'}");
    assert_true(json_is_true(bh_get(r, "resumed")));
    assert_string_equal(bh_str(r, "agent.state"), "busy"); /* back to the state before suspend */
    json_decref(r);
    bh_err_field(H, op, MP_STATE_INVALID, "agentId", "map/agents/resume", "{'agentId':'a1'}");
    r = bh_ok(H, op, "map/agents/stop", "{'agentId':'a1'}");
    assert_true(json_is_true(bh_get(r, "stopping")));
    assert_string_equal(bh_str(r, "agent.state"), "stopping");
    json_decref(r);
    bh_clear(H, s);
    bh_err_field(H, op, MP_STATE_INVALID, "state", "map/agents/suspend", "{'agentId':'a1'}");
    r = bh_ok(H, op, "map/agents/stop", "{'agentId':'a1','force':true}");
    assert_string_equal(bh_str(r, "agent.state"), "stopped");
    assert_true(json_is_integer(bh_get(r, "agent.lifecycle.stoppedAt")));
    json_decref(r);
    bh_err_field(H, op, MP_TERMINATED, "agentId", "map/agents/stop", "{'agentId':'a1'}");
    bh_err_field(H, op, MP_TERMINATED, "agentId", "map/agents/suspend", "{'agentId':'a1'}");
    bh_err_field(H, op, MP_STATE_INVALID, "agentId", "map/agents/resume", "{'agentId':'a1'}");
    bh_err_field(H, op, MP_AGENT_NOT_FOUND, "agentId", "map/agents/stop", "{'agentId':'zz'}");
    bh_err_field(H, op, MP_INVALID_PARAMS, "force", "map/agents/stop", "{'agentId':'a1','force':'yes'}");
}

static void resume_from_registered(void **state)
{
    (void)state;
    mb_session *s = bh_agent(H, "a1", NULL);
    json_decref(bh_ok(H, s, "map/agents/suspend", "{'agentId':'a1'}"));
    json_t *r = bh_ok(H, s, "map/agents/resume", "{'agentId':'a1'}");
    assert_string_equal(bh_str(r, "agent.state"), "registered");
    json_decref(r);
}

/* ---- spawn lineage ---- */

static void spawn_lineage(void **state)
{
    (void)state;
    mb_session *p = bh_agent(H, "parent", NULL);
    json_t *r = bh_ok(H, p, "map/agents/spawn",
                      "{'agentId':'kid','parent':'parent','role':'worker','initialMessage':{'payload':{'task':'go'}}}");
    assert_string_equal(bh_str(r, "agent.parent"), "parent");
    assert_string_equal(bh_str(r, "agent.ownerId"), "parent");
    const char *mid = bh_str(r, "messageId");
    assert_non_null(mid);
    /* the spawning connection owns the child, so it receives the initial message */
    json_t *m = bh_messages(H, p);
    assert_int_equal(json_array_size(m), 1);
    assert_string_equal(bh_str(m, "0.id"), mid);
    assert_string_equal(bh_str(m, "0.to.agent"), "kid");
    assert_string_equal(bh_str(m, "0.payload.task"), "go");
    json_decref(m);
    json_decref(r);
    assert_string_equal(p->primary_agent, "parent");
    mb_agent *par = mb_agent_get(bh_broker(H), "parent");
    assert_non_null(mb_map_get(par->children, "kid"));
    bh_err_field(H, p, MP_AGENT_EXISTS, "agentId", "map/agents/spawn", "{'agentId':'kid','parent':'parent'}");
    bh_err_field(H, p, MP_AGENT_NOT_FOUND, "parent", "map/agents/spawn", "{'agentId':'k2','parent':'ghost'}");
    bh_err_field(H, p, MP_INVALID_PARAMS, "initialMessage", "map/agents/spawn", "{'agentId':'k2','initialMessage':1}");
    /* the parent owner controls the child even from a connection that does not own it? (it owns it here) */
    json_decref(bh_ok(H, p, "map/agents/update", "{'agentId':'kid','state':'active'}"));
    /* the child's own process claims the spawned record by registering its id */
    mb_session *kidproc = bh_connect(H, "agent", "kid-proc");
    r = bh_ok(H, kidproc, "map/agents/register", "{'agentId':'kid'}");
    assert_string_equal(bh_str(r, "agent.ownerId"), "kid-proc");
    assert_string_equal(bh_str(r, "agent.parent"), "parent");
    json_decref(r);
    assert_null(mb_map_get(p->owned, "kid"));
    /* but not twice */
    mb_session *third = bh_connect(H, "agent", "third");
    bh_err_field(H, third, MP_AGENT_EXISTS, "agentId", "map/agents/register", "{'agentId':'kid'}");
    /* the parent's owner may still control its child */
    json_decref(bh_ok(H, p, "map/agents/update", "{'agentId':'kid','state':'idle'}"));
    /* unregistering the parent leaves the child (dangling parent id) */
    json_decref(bh_ok(H, p, "map/agents/unregister", "{'agentId':'parent'}"));
    r = bh_ok(H, kidproc, "map/agents/get", "{'agentId':'kid','include':{'parent':true}}");
    assert_string_equal(bh_str(r, "agent.parent"), "parent");
    assert_null(bh_get(r, "parent"));
    json_decref(r);
}

/* ---- reclaim ---- */

static void reclaim_after_orphan(void **state)
{
    (void)state;
    mb_session *obs = bh_connect(H, "client", "obs");
    char sub[64];
    bh_subscribe(H, obs, NULL, NULL, sub);
    mb_session *s1 = bh_raw(H);
    json_decref(bh_ok(H, s1, "map/connect",
                      "{'participantType':'agent','participantId':'w1','disconnectPolicy':{'agentBehavior':'orphan'}}"));
    json_decref(bh_ok(H, s1, "map/agents/register", "{'agentId':'a1'}"));
    json_decref(bh_ok(H, s1, "map/agents/update", "{'agentId':'a1','state':'busy'}"));
    json_decref(bh_events(H, obs));
    bh_end(H, s1, "gone");
    mb_agent *a = mb_agent_get(bh_broker(H), "a1");
    assert_non_null(a);
    assert_string_equal(a->state, "orphaned");
    assert_null(a->owner);
    assert_null(a->session);
    json_t *evs = bh_event_objs(H, obs, NULL);
    assert_string_equal(bh_join(evs, "type"), "participant_disconnected,agent_orphaned");
    assert_string_equal(bh_str(evs, "1.data.previousOwner"), "w1");
    assert_string_equal(bh_str(evs, "1.causedBy.0"), bh_str(evs, "0.id"));
    json_decref(evs);
    json_t *r = bh_ok(H, obs, "map/agents/get", "{'agentId':'a1'}");
    assert_true(json_is_null(bh_get(r, "agent.ownerId")));
    json_decref(r);
    /* a new connection registering the id reclaims it */
    mb_session *s2 = bh_connect(H, "agent", "w1-again");
    r = bh_ok(H, s2, "map/agents/register", "{'agentId':'a1'}");
    assert_string_equal(bh_str(r, "agent.ownerId"), "w1-again");
    assert_string_equal(bh_str(r, "agent.state"), "busy");
    json_decref(r);
    evs = bh_event_objs(H, obs, "agent_registered");
    assert_int_equal(json_array_size(evs), 1);
    assert_true(json_is_true(bh_get(evs, "0.data.reclaimed")));
    json_decref(evs);
    assert_ptr_equal(mb_agent_get(bh_broker(H), "a1")->session, s2);
}

static void reclaim_after_detach(void **state)
{
    (void)state;
    mb_session *s1 = bh_agent(H, "a1", NULL);
    bh_drop(H, s1); /* socket gone; session kept for resume */
    assert_true(s1->detached);
    mb_session *s2 = bh_connect(H, "agent", "p2");
    json_t *r = bh_ok(H, s2, "map/agents/register", "{'agentId':'a1'}");
    assert_string_equal(bh_str(r, "agent.ownerId"), "p2");
    json_decref(r);
    assert_null(mb_map_get(s1->owned, "a1"));
    /* the old session ending later does not take the agent with it */
    bh_end(H, s1, "expired");
    assert_non_null(mb_agent_get(bh_broker(H), "a1"));
    /* and a live owner's agent cannot be taken */
    mb_session *s3 = bh_connect(H, "agent", "p3");
    bh_err_field(H, s3, MP_AGENT_EXISTS, "agentId", "map/agents/register", "{'agentId':'a1'}");
}

static void default_policy_unregisters(void **state)
{
    (void)state;
    mb_session *obs = bh_connect(H, "client", "obs");
    char sub[64];
    bh_subscribe(H, obs, "{'eventTypes':['agent_unregistered']}", NULL, sub);
    mb_session *s1 = bh_agent(H, "a1", NULL);
    json_decref(bh_ok(H, s1, "map/agents/spawn", "{'agentId':'a1-kid','parent':'a1'}"));
    bh_end(H, s1, "gone");
    assert_null(mb_agent_get(bh_broker(H), "a1"));
    assert_null(mb_agent_get(bh_broker(H), "a1-kid"));
    json_t *evs = bh_event_objs(H, obs, NULL);
    assert_int_equal(json_array_size(evs), 2);
    assert_string_equal(bh_str(evs, "0.data.reason"), "owner_disconnected");
    json_decref(evs);
    mb_session *s2 = bh_connect(H, "agent", "p2");
    json_t *r = bh_ok(H, s2, "map/agents/register", "{'agentId':'a1'}");
    assert_string_equal(bh_str(r, "agent.state"), "registered");
    json_decref(r);
}

/* ---- scopes ---- */

static void scope_create_get_delete(void **state)
{
    (void)state;
    mb_session *obs = bh_connect(H, "client", "obs");
    char sub[64];
    bh_subscribe(H, obs, NULL, NULL, sub);
    mb_session *s = bh_agent(H, "a1", NULL);
    json_decref(bh_events(H, obs));
    json_t *r = bh_ok(H, s, "map/scopes/create",
                      "{'scopeId':'team','name':'Team','joinPolicy':'open','metadata':{'k':'v'},'sendPolicy':'any'}");
    assert_string_equal(bh_str(r, "scope.id"), "team");
    assert_string_equal(bh_str(r, "scope.name"), "Team");
    json_decref(r);
    json_t *evs = bh_event_objs(H, obs, NULL);
    assert_string_equal(bh_join(evs, "type"), "scope_created");
    assert_string_equal(bh_str(evs, "0.data.scopeId"), "team");
    assert_string_equal(bh_str(evs, "0.data.name"), "Team");
    assert_string_equal(bh_str(evs, "0.source"), "a1");
    json_decref(evs);
    bh_err_field(H, s, MP_INVALID_PARAMS, "scopeId", "map/scopes/create", "{'scopeId':'team'}");
    bh_err_field(H, s, MP_SCOPE_NOT_FOUND, "parent", "map/scopes/create", "{'scopeId':'t2','parent':'nope'}");
    bh_err_field(H, s, MP_INVALID_PARAMS, "joinPolicy", "map/scopes/create", "{'scopeId':'t2','joinPolicy':'closed'}");
    bh_err_field(H, s, MP_INVALID_PARAMS, "visibility", "map/scopes/create", "{'scopeId':'t2','visibility':'x'}");
    bh_err_field(H, s, MP_INVALID_PARAMS, "sendPolicy", "map/scopes/create", "{'scopeId':'t2','sendPolicy':'none'}");
    bh_err_field(H, s, MP_INVALID_PARAMS, "autoDelete", "map/scopes/create", "{'scopeId':'t2','autoDelete':1}");
    json_decref(bh_ok(H, s, "map/scopes/create", "{'scopeId':'sub','parent':'team'}"));
    r = bh_ok(H, s, "map/scopes/list", "{'parent':'team'}");
    assert_string_equal(bh_join(bh_get(r, "scopes"), "id"), "sub");
    json_decref(r);
    r = bh_ok(H, s, "map/scopes/list", "{}");
    assert_string_equal(bh_join(bh_get(r, "scopes"), "id"), "team,sub");
    json_decref(r);
    json_decref(bh_ok(H, s, "map/scopes/join", "{'scopeId':'team','agentId':'a1'}"));
    json_decref(bh_events(H, obs));
    r = bh_ok(H, s, "map/scopes/delete", "{'scopeId':'team'}");
    assert_true(json_is_true(bh_get(r, "deleted")));
    json_decref(r);
    evs = bh_event_objs(H, obs, NULL);
    assert_string_equal(bh_join(evs, "type"), "scope_deleted,scope_member_left");
    assert_string_equal(bh_str(evs, "1.causedBy.0"), bh_str(evs, "0.id"));
    json_decref(evs);
    r = bh_ok(H, s, "map/agents/get", "{'agentId':'a1'}");
    assert_null(bh_get(r, "agent.scopes"));
    json_decref(r);
    bh_err_field(H, s, MP_SCOPE_NOT_FOUND, "scopeId", "map/scopes/get", "{'scopeId':'team'}");
    bh_err_field(H, s, MP_SCOPE_NOT_FOUND, "scopeId", "map/scopes/delete", "{'scopeId':'team'}");
    bh_err_field(H, s, MP_SCOPE_NOT_FOUND, "scopeId", "map/scopes/members", "{'scopeId':'team'}");
}

static void scope_join_policies(void **state)
{
    (void)state;
    static const struct {
        const char *create;
        const char *agent_role; /* NULL = none */
        const char *ptype;
        int code;
    } cases[] = {
        {"{'scopeId':'S','joinPolicy':'open'}", NULL, "agent", 0},
        {"{'scopeId':'S'}", NULL, "agent", 0},
        {"{'scopeId':'S','joinPolicy':'invite'}", NULL, "agent", MP_PERMISSION_DENIED},
        {"{'scopeId':'S','joinPolicy':'role','autoJoinRoles':['critic']}", "worker", "agent", MP_PERMISSION_DENIED},
        {"{'scopeId':'S','joinPolicy':'role'}", "worker", "agent", MP_PERMISSION_DENIED},
        {"{'scopeId':'S','joinPolicy':'role','autoJoinRoles':['worker']}", "worker", "agent", 0},
        {"{'scopeId':'S','joinPolicy':'system'}", NULL, "agent", MP_PERMISSION_DENIED},
        {"{'scopeId':'S','joinPolicy':'system'}", NULL, "client", MP_PERMISSION_DENIED},
        {"{'scopeId':'S','joinPolicy':'system'}", NULL, "system", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        bh_free(H);
        H = bh_new(NULL);
        mb_session *s = bh_connect(H, cases[i].ptype, "p");
        json_decref(bh_ok(H, s, "map/scopes/create", "%s", cases[i].create));
        if (cases[i].agent_role)
            json_decref(bh_ok(H, s, "map/agents/register", "{'agentId':'a','role':'%s'}", cases[i].agent_role));
        else
            json_decref(bh_ok(H, s, "map/agents/register", "{'agentId':'a'}"));
        /* role-policy scopes auto-join matching agents: leave first so join is exercised */
        json_decref(bh_ok(H, s, "map/scopes/leave", "{'scopeId':'S','agentId':'a'}"));
        if (!mb_scope_get(bh_broker(H), "S"))
            fail_msg("case %zu: scope vanished", i);
        json_t *r = bh_call(H, s, "map/scopes/join", "{'scopeId':'S','agentId':'a'}");
        long long code = bh_int(r, "error.code");
        if (code != cases[i].code)
            fail_msg("case %zu %s (%s, %s): code %lld, want %d", i, cases[i].create, cases[i].ptype,
                     cases[i].agent_role ? cases[i].agent_role : "-", code, cases[i].code);
        if (!code) {
            assert_true(json_is_true(bh_get(r, "result.joined")));
            assert_string_equal(bh_str(r, "result.agent.scopes.0"), "S");
        } else {
            assert_string_equal(bh_str(r, "error.data.field"), "scopeId");
            assert_null(mb_map_get(mb_scope_get(bh_broker(H), "S")->members, "a"));
        }
        json_decref(r);
    }
}

static void scope_join_leave_members(void **state)
{
    (void)state;
    mb_session *obs = bh_connect(H, "client", "obs");
    char sub[64];
    bh_subscribe(H, obs, "{'eventTypes':['scope_member_joined','scope_member_left','scope_deleted']}", NULL, sub);
    mb_session *s = bh_connect(H, "agent", "p");
    json_decref(bh_ok(H, s, "map/scopes/create", "{'scopeId':'S','autoDelete':true}"));
    for (int i = 0; i < 5; i++)
        json_decref(bh_ok(H, s, "map/agents/register", "{'agentId':'m%d'}", i));
    for (int i = 0; i < 5; i++)
        json_decref(bh_ok(H, s, "map/scopes/join", "{'scopeId':'S','agentId':'m%d'}", i));
    json_decref(bh_ok(H, s, "map/scopes/join", "{'scopeId':'S','agentId':'m0'}")); /* idempotent */
    json_t *evs = bh_event_objs(H, obs, NULL);
    assert_int_equal(json_array_size(evs), 5);
    assert_string_equal(bh_str(evs, "0.source"), "m0");
    assert_string_equal(bh_str(evs, "0.data.agentId"), "m0");
    json_decref(evs);
    json_t *r = bh_ok(H, s, "map/scopes/members", "{'scopeId':'S','limit':2}");
    assert_string_equal(bh_join(bh_get(r, "members"), NULL), "m0,m1");
    assert_string_equal(bh_str(r, "nextCursor"), "m1");
    json_decref(r);
    r = bh_ok(H, s, "map/scopes/members", "{'scopeId':'S','limit':2,'cursor':'m1'}");
    assert_string_equal(bh_join(bh_get(r, "members"), NULL), "m2,m3");
    json_decref(r);
    r = bh_ok(H, s, "map/scopes/members", "{'scopeId':'S','limit':2,'cursor':'m3'}");
    assert_string_equal(bh_join(bh_get(r, "members"), NULL), "m4");
    assert_null(bh_get(r, "nextCursor"));
    json_decref(r);
    mb_session *stranger = bh_connect(H, "client", "x");
    bh_err_field(H, stranger, MP_PERMISSION_DENIED, "agentId", "map/scopes/join", "{'scopeId':'S','agentId':'m0'}");
    bh_err_field(H, s, MP_AGENT_NOT_FOUND, "agentId", "map/scopes/join", "{'scopeId':'S','agentId':'zz'}");
    bh_err_field(H, s, MP_SCOPE_NOT_FOUND, "scopeId", "map/scopes/leave", "{'scopeId':'Q','agentId':'m0'}");
    for (int i = 0; i < 4; i++) {
        r = bh_ok(H, s, "map/scopes/leave", "{'scopeId':'S','agentId':'m%d'}", i);
        assert_true(json_is_true(bh_get(r, "left")));
        json_decref(r);
    }
    assert_non_null(mb_scope_get(bh_broker(H), "S"));
    json_decref(bh_events(H, obs));
    json_decref(bh_ok(H, s, "map/scopes/leave", "{'scopeId':'S','agentId':'m4'}"));
    assert_null(mb_scope_get(bh_broker(H), "S")); /* autoDelete: the last member left */
    evs = bh_event_objs(H, obs, NULL);
    assert_string_equal(bh_join(evs, "type"), "scope_member_left,scope_deleted");
    json_decref(evs);
}

static void scope_auto_join_roles(void **state)
{
    (void)state;
    mb_session *s = bh_connect(H, "agent", "p");
    json_decref(bh_ok(H, s, "map/agents/register", "{'agentId':'early','role':'critic'}"));
    json_decref(bh_ok(H, s, "map/scopes/create", "{'scopeId':'crit','autoJoinRoles':['critic']}"));
    json_decref(bh_ok(H, s, "map/agents/register", "{'agentId':'late','role':'critic'}"));
    json_decref(bh_ok(H, s, "map/agents/register", "{'agentId':'other','role':'worker'}"));
    json_t *r = bh_ok(H, s, "map/scopes/members", "{'scopeId':'crit'}");
    assert_string_equal(bh_join(bh_get(r, "members"), NULL), "early,late");
    json_decref(r);
    r = bh_ok(H, s, "map/agents/get", "{'agentId':'late'}");
    assert_string_equal(bh_str(r, "agent.scopes.0"), "crit");
    json_decref(r);
}

static void scope_visibility(void **state)
{
    (void)state;
    mb_session *member = bh_agent(H, "m", NULL);
    mb_session *outsider = bh_agent(H, "o", NULL);
    json_decref(bh_ok(H, member, "map/scopes/create", "{'scopeId':'priv','visibility':'members'}"));
    json_decref(bh_ok(H, member, "map/scopes/create", "{'scopeId':'sys','visibility':'system'}"));
    json_decref(bh_ok(H, member, "map/scopes/create", "{'scopeId':'pub'}"));
    json_decref(bh_ok(H, member, "map/scopes/join", "{'scopeId':'priv','agentId':'m'}"));
    json_t *r = bh_ok(H, member, "map/scopes/list", "{}");
    /* open mode: every connection is an operator, so even system scopes are listed */
    assert_string_equal(bh_join(bh_get(r, "scopes"), "id"), "priv,sys,pub");
    json_decref(r);
    r = bh_ok(H, outsider, "map/scopes/list", "{}");
    assert_string_equal(bh_join(bh_get(r, "scopes"), "id"), "sys,pub");
    json_decref(r);
}

int main(void)
{
    tu_init();
    const struct CMUnitTest tests[] = {
        TB(register_basic),
        TB(register_idempotent_same_connection),
        TB(register_errors),
        TB(unregister),
        TB(list_filters),
        TB(list_paging),
        TB(get_includes),
        TB(update_state_machine),
        TB(update_failed_to_custom),
        TB(update_bad_states),
        TB(update_fields),
        TB(stop_suspend_resume),
        TB(resume_from_registered),
        TB(spawn_lineage),
        TB(reclaim_after_orphan),
        TB(reclaim_after_detach),
        TB(default_policy_unregisters),
        TB(scope_create_get_delete),
        TB(scope_join_policies),
        TB(scope_join_leave_members),
        TB(scope_auto_join_roles),
        TB(scope_visibility),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
