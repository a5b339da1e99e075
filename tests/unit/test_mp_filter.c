/* test_mp_filter.c - subscription filters (MAP.md 9.4, 10.8). */
#include "test_util.h"

#include <stdio.h>

#include "mp_err.h"
#include "mp_filter.h"

/* ---- a tiny registry for the env callbacks ------------------------------------ */

typedef struct {
    json_t *env_a, *env_b;
    int calls;
} registry;

static const char *reg_role(void *arg, const char *agent_id)
{
    registry *r = arg;
    r->calls++;
    if (!strcmp(agent_id, "agent-a"))
        return "worker";
    if (!strcmp(agent_id, "agent-b"))
        return "planner";
    if (!strcmp(agent_id, "agent-c"))
        return "worker_eu";
    return NULL;
}

static json_t *reg_env(void *arg, const char *agent_id)
{
    registry *r = arg;
    r->calls++;
    if (!strcmp(agent_id, "agent-a"))
        return r->env_a;
    if (!strcmp(agent_id, "agent-b"))
        return r->env_b;
    return NULL;
}

static registry g_reg;
static mp_filter_env g_env = {reg_role, reg_env, &g_reg};

static int group_setup(void **state)
{
    (void)state;
    g_reg.env_a = tu_json("{\"os\":{\"type\":\"linux\",\"arch\":\"x64\"},\"region\":\"eu\",\"gpu\":true}");
    g_reg.env_b = tu_json("{\"os\":{\"type\":\"darwin\"},\"region\":\"us\"}");
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    json_decref(g_reg.env_a);
    json_decref(g_reg.env_b);
    return 0;
}

/* ---- helpers ------------------------------------------------------------------- */

static mp_filter *compile(const char *filter_text)
{
    json_t *j = filter_text ? tu_json(filter_text) : NULL;
    mp_filter *f = (mp_filter *)1;
    mp_err e;
    int rc = mp_filter_compile(j, &f, &e);
    if (rc)
        fail_msg("filter %s: error %d field=%s: %s", filter_text, rc, e.field, e.message);
    assert_non_null(f);
    json_decref(j); /* the filter keeps its own reference */
    return f;
}

/* Match one event (data may be NULL) against a filter, with or without the registry. */
static int match_env(const char *filter_text, const char *type, const char *source, const char *data_text,
                     const mp_filter_env *env)
{
    mp_filter *f = compile(filter_text);
    json_t *data = data_text ? tu_json(data_text) : NULL;
    mp_event_view ev = {type, source, data};
    int m = mp_filter_match(f, &ev, env);
    json_decref(data);
    mp_filter_free(f);
    return m;
}

static int match(const char *filter_text, const char *type, const char *source, const char *data_text)
{
    return match_env(filter_text, type, source, data_text, &g_env);
}

static void expect_bad(const char *filter_text, const char *field)
{
    json_t *j = tu_json(filter_text);
    mp_filter *f = (mp_filter *)1;
    mp_err e;
    mp_err_clear(&e);
    int rc = mp_filter_compile(j, &f, &e);
    if (rc != MP_INVALID_PARAMS)
        fail_msg("filter %s: rc %d, want -32602", filter_text, rc);
    assert_null(f);
    assert_int_equal(e.code, MP_INVALID_PARAMS);
    if (strcmp(e.field, field) != 0)
        fail_msg("filter %s: field '%s', want '%s'", filter_text, e.field, field);
    /* the message names the same field */
    assert_non_null(strstr(e.message, field));
    json_decref(j);
}

#define YES(...) assert_int_equal(match(__VA_ARGS__), 1)
#define NO(...) assert_int_equal(match(__VA_ARGS__), 0)

/* ---- tests ---------------------------------------------------------------------- */

static void empty_filters_match_everything(void **state)
{
    (void)state;
    mp_event_view ev = {"agent_registered", "agent-a", NULL};
    assert_int_equal(mp_filter_match(NULL, &ev, NULL), 1);
    YES(NULL, "agent_registered", NULL, NULL);
    YES("null", "anything", NULL, NULL);
    YES("{}", "mail.created", "x", "{}");
    /* every array key empty: no constraint */
    YES("{\"eventTypes\":[],\"fromAgents\":[],\"agents\":[],\"fromRoles\":[],\"roles\":[],\"scopes\":[],"
        "\"priorities\":[],\"correlationIds\":[],\"metadataMatch\":{},\"environmentMatch\":{}}",
        "agent_registered", NULL, NULL);
    /* null values count as absent */
    YES("{\"eventTypes\":null,\"fromAgents\":null,\"mail\":null,\"match\":null,\"$or\":null}", "x", NULL, NULL);
    /* unknown keys are ignored */
    YES("{\"_meta\":{\"a\":1},\"messageTypes\":[\"x\"],\"subtree\":true}", "x", NULL, NULL);
}

static void event_type_names(void **state)
{
    (void)state;
    assert_int_equal(mp_event_type_match("agent_registered", "agent_registered"), 1);
    assert_int_equal(mp_event_type_match("agent.registered", "agent_registered"), 1);
    assert_int_equal(mp_event_type_match("agent_registered", "agent.registered"), 1);
    assert_int_equal(mp_event_type_match("agent_registered", "agent_unregistered"), 0);
    assert_int_equal(mp_event_type_match("agent_registered", "agent_registered_x"), 0);
    assert_int_equal(mp_event_type_match("agent_registered_x", "agent_registered"), 0);
    assert_int_equal(mp_event_type_match("message.*", "message_sent"), 1);
    assert_int_equal(mp_event_type_match("message.*", "message.delivered"), 1);
    assert_int_equal(mp_event_type_match("message_*", "message.failed"), 1);
    assert_int_equal(mp_event_type_match("message.*", "message"), 0);
    assert_int_equal(mp_event_type_match("message.*", "messages_x"), 0);
    assert_int_equal(mp_event_type_match("mail.*", "mail.turn.added"), 1);
    assert_int_equal(mp_event_type_match("mail.turn.*", "mail.turn.added"), 1);
    assert_int_equal(mp_event_type_match("mail.turn.*", "mail.thread.created"), 0);
    assert_int_equal(mp_event_type_match("*", "anything"), 1);
    assert_int_equal(mp_event_type_match("a*b", "a*b"), 1); /* '*' only wild at the end */
    assert_int_equal(mp_event_type_match("a*b", "axb"), 0);
    assert_int_equal(mp_event_type_match("", ""), 1);
    assert_int_equal(mp_event_type_match("", "x"), 0);
}

static void event_types_key(void **state)
{
    (void)state;
    const char *f = "{\"eventTypes\":[\"agent.registered\",\"message_*\"]}";
    YES(f, "agent_registered", NULL, NULL);
    YES(f, "agent.registered", NULL, NULL);
    YES(f, "message_delivered", NULL, NULL);
    YES(f, "message.sent", NULL, NULL);
    NO(f, "agent_unregistered", NULL, NULL);
    NO(f, "scope_created", NULL, NULL);
    NO(f, "mail.created", NULL, NULL);
    YES("{\"eventTypes\":[\"mail.*\"]}", "mail.turn.added", NULL, NULL);
}

static void from_agents_and_agents(void **state)
{
    (void)state;
    const char *keys[] = {"fromAgents", "agents"};
    for (int k = 0; k < 2; k++) {
        char f[128];
        snprintf(f, sizeof f, "{\"%s\":[\"agent-a\",\"worker_*\"]}", keys[k]);
        YES(f, "message_delivered", "agent-a", NULL);
        YES(f, "message_delivered", "worker_1", NULL);
        YES(f, "message_delivered", "worker_", NULL);
        NO(f, "message_delivered", "worker-1", NULL);
        NO(f, "message_delivered", "agent-b", NULL);
        NO(f, "message_delivered", "agent-a2", NULL);
        NO(f, "message_delivered", NULL, NULL); /* events without source never match */
        snprintf(f, sizeof f, "{\"%s\":[\"*\"]}", keys[k]);
        YES(f, "x", "anyone", NULL);
        NO(f, "x", NULL, NULL);
    }
}

static void from_roles_and_roles(void **state)
{
    (void)state;
    const char *f = "{\"fromRoles\":[\"worker\"]}";
    g_reg.calls = 0;
    YES(f, "message_sent", "agent-a", NULL);
    assert_true(g_reg.calls > 0);
    NO(f, "message_sent", "agent-b", NULL);
    NO(f, "message_sent", "unknown", NULL);
    NO(f, "message_sent", NULL, NULL);
    assert_int_equal(match_env(f, "message_sent", "agent-a", NULL, NULL), 0); /* no registry: no roles */
    mp_filter_env no_cb = {NULL, NULL, NULL};
    assert_int_equal(match_env(f, "message_sent", "agent-a", NULL, &no_cb), 0);
    YES("{\"fromRoles\":[\"planner\",\"worker\"]}", "x", "agent-b", NULL);
    YES("{\"fromRoles\":[\"worker*\"]}", "x", "agent-c", NULL);
    /* fromRoles looks at the source only, not data.agentId */
    NO(f, "agent_registered", "agent-b", "{\"agentId\":\"agent-a\"}");

    /* roles: the agent the event relates to (data.agentId), else the source */
    const char *r = "{\"roles\":[\"worker\"]}";
    YES(r, "agent_registered", "participant-1", "{\"agentId\":\"agent-a\"}");
    NO(r, "agent_registered", "agent-a", "{\"agentId\":\"agent-b\"}");
    YES(r, "agent_state_changed", "agent-a", "{\"newState\":\"busy\"}");
    YES(r, "agent_state_changed", "agent-a", NULL);
    NO(r, "agent_state_changed", NULL, "{}");
    assert_int_equal(match_env(r, "x", "agent-a", NULL, NULL), 0);
}

static void scopes_key(void **state)
{
    (void)state;
    const char *f = "{\"scopes\":[\"scope-team\"]}";
    YES(f, "scope_member_joined", "agent-a", "{\"scopeId\":\"scope-team\",\"agentId\":\"agent-a\"}");
    NO(f, "scope_member_joined", "agent-a", "{\"scopeId\":\"scope-other\"}");
    NO(f, "agent_registered", "agent-a", "{\"agentId\":\"agent-a\"}");
    NO(f, "agent_registered", "agent-a", NULL);
    /* message events: the scope of a scope-addressed message */
    YES(f, "message_sent", "agent-a", "{\"messageId\":\"m1\",\"to\":{\"scope\":\"scope-team\"}}");
    YES(f, "message_delivered", "agent-a",
        "{\"messageId\":\"m1\",\"message\":{\"id\":\"m1\",\"to\":{\"scope\":\"scope-team\"}}}");
    NO(f, "message_delivered", "agent-a", "{\"message\":{\"to\":{\"agent\":\"scope-team\"}}}");
    NO(f, "message_sent", "agent-a", "{\"to\":\"scope-team\"}");
    YES("{\"scopes\":[\"scope-*\"]}", "scope_created", NULL, "{\"scopeId\":\"scope-x\"}");
}

static void priorities_key(void **state)
{
    (void)state;
    const char *hi = "{\"priorities\":[\"high\",\"urgent\"]}";
    const char *normal = "{\"priorities\":[\"normal\"]}";
    YES(hi, "message_delivered", "a", "{\"message\":{\"meta\":{\"priority\":\"high\"}}}");
    YES(hi, "message.delivered", "a", "{\"message\":{\"meta\":{\"priority\":\"urgent\"}}}");
    NO(hi, "message_delivered", "a", "{\"message\":{\"meta\":{\"priority\":\"low\"}}}");
    NO(hi, "message_delivered", "a", "{\"message\":{\"meta\":{}}}");
    /* default normal */
    YES(normal, "message_sent", "a", "{\"message\":{\"meta\":{}}}");
    YES(normal, "message_sent", "a", "{\"message\":{}}");
    YES(normal, "message_failed", "a", NULL);
    NO(normal, "message_sent", "a", "{\"message\":{\"meta\":{\"priority\":\"high\"}}}");
    /* message_sent's own data.priority when data.message is absent (MAP.md 8.5) */
    YES(hi, "message_sent", "a", "{\"messageId\":\"m\",\"priority\":\"high\"}");
    /* non-message events never match a priority filter, not even "normal" */
    NO(normal, "agent_registered", "a", NULL);
    NO(normal, "mail.turn.added", "a", "{\"message\":{\"meta\":{\"priority\":\"normal\"}}}");
    NO(normal, "messages_x", "a", NULL);
}

static void correlation_ids_key(void **state)
{
    (void)state;
    const char *f = "{\"correlationIds\":[\"corr-1\"]}";
    YES(f, "message_delivered", "a", "{\"correlationId\":\"corr-1\"}");
    /* requests carry it only in the message meta (MAP.md 8.5 workaround) */
    YES(f, "message_delivered", "a", "{\"message\":{\"meta\":{\"correlationId\":\"corr-1\"}}}");
    NO(f, "message_delivered", "a", "{\"correlationId\":\"corr-2\",\"message\":{\"meta\":{\"correlationId\":\"x\"}}}");
    NO(f, "message_delivered", "a", "{\"message\":{\"id\":\"corr-1\"}}");
    NO(f, "message_delivered", "a", NULL);
    YES(f, "message_delivered", "a", "{\"correlationId\":\"other\",\"message\":{\"meta\":{\"correlationId\":\"corr-1\"}}}");
    /* the MAP.md 9.5 example event */
    YES(f, "message_delivered", "participant-1", "{\"messageId\":\"msg-1\",\"correlationId\":\"corr-1\",\"message\":{}}");
}

static void metadata_match_key(void **state)
{
    (void)state;
    const char *f = "{\"metadataMatch\":{\"team\":\"a\",\"level\":2}}";
    YES(f, "x", NULL, "{\"metadata\":{\"team\":\"a\",\"level\":2,\"other\":true}}");
    NO(f, "x", NULL, "{\"metadata\":{\"team\":\"a\"}}");
    NO(f, "x", NULL, "{\"metadata\":{\"team\":\"a\",\"level\":\"2\"}}"); /* types must agree */
    NO(f, "x", NULL, "{\"team\":\"a\",\"level\":2}");                     /* only data.metadata counts */
    NO(f, "x", NULL, NULL);
    YES("{\"metadataMatch\":{\"tags\":[\"x\",\"y\"],\"o\":{\"k\":null}}}", "x", NULL,
        "{\"metadata\":{\"tags\":[\"x\",\"y\"],\"o\":{\"k\":null}}}");
    NO("{\"metadataMatch\":{\"tags\":[\"x\",\"y\"]}}", "x", NULL, "{\"metadata\":{\"tags\":[\"y\",\"x\"]}}");
    /* a null value only matches an explicit null */
    YES("{\"metadataMatch\":{\"k\":null}}", "x", NULL, "{\"metadata\":{\"k\":null}}");
    NO("{\"metadataMatch\":{\"k\":null}}", "x", NULL, "{\"metadata\":{}}");
}

static void environment_match_key(void **state)
{
    (void)state;
    const char *f = "{\"environmentMatch\":{\"os.type\":\"linux\"}}";
    YES(f, "agent_state_changed", "agent-a", NULL);
    NO(f, "agent_state_changed", "agent-b", NULL);
    NO(f, "agent_state_changed", "unknown", NULL);
    NO(f, "agent_state_changed", NULL, NULL);
    assert_int_equal(match_env(f, "x", "agent-a", NULL, NULL), 0);
    YES("{\"environmentMatch\":{\"os.type\":\"linux\",\"region\":\"eu\",\"gpu\":true}}", "x", "agent-a", NULL);
    NO("{\"environmentMatch\":{\"os.type\":\"linux\",\"region\":\"us\"}}", "x", "agent-a", NULL);
    YES("{\"environmentMatch\":{\"os\":{\"type\":\"darwin\"}}}", "x", "agent-b", NULL);
    NO("{\"environmentMatch\":{\"os.type.name\":\"linux\"}}", "x", "agent-a", NULL);
    NO("{\"environmentMatch\":{\"os.missing\":\"linux\"}}", "x", "agent-a", NULL);
    NO("{\"environmentMatch\":{\"region.x\":\"eu\"}}", "x", "agent-a", NULL);
    /* a key longer than any dot-path segment buffer simply does not match */
    char longk[400] = "{\"environmentMatch\":{\"";
    memset(longk + strlen(longk), 'k', 200);
    strcat(longk, "\":1}}");
    NO(longk, "x", "agent-a", NULL);
}

static void mail_filter(void **state)
{
    (void)state;
    /* an empty mail object restricts to mail.* events (MAP.md 10.8) */
    const char *any = "{\"mail\":{}}";
    YES(any, "mail.created", "a", "{\"conversationId\":\"c1\"}");
    YES(any, "mail.summary.generated", NULL, NULL);
    NO(any, "agent_registered", "a", NULL);
    NO(any, "message_sent", "a", "{\"conversationId\":\"c1\"}");
    NO(any, "mailbox.x", "a", NULL);

    const char *conv = "{\"mail\":{\"conversationId\":\"c1\"}}";
    YES(conv, "mail.turn.added", "a", "{\"conversationId\":\"c1\",\"turn\":{}}");
    NO(conv, "mail.turn.added", "a", "{\"conversationId\":\"c2\"}");
    NO(conv, "mail.turn.added", "a", "{}");
    NO(conv, "message_sent", "a", "{\"conversationId\":\"c1\"}");

    const char *thr = "{\"mail\":{\"threadId\":\"t1\"}}";
    YES(thr, "mail.turn.added", "a", "{\"turn\":{\"threadId\":\"t1\"}}");
    YES(thr, "mail.thread.created", "a", "{\"thread\":{\"id\":\"t1\"}}");
    YES(thr, "mail.turn.updated", "a", "{\"threadId\":\"t1\"}");
    NO(thr, "mail.turn.added", "a", "{\"turn\":{\"threadId\":\"t2\"},\"threadId\":\"t1\"}"); /* first found wins */
    NO(thr, "mail.turn.added", "a", "{\"turn\":{}}");

    const char *who = "{\"mail\":{\"participantId\":\"p1\"}}";
    YES(who, "mail.participant.joined", "a", "{\"participant\":{\"id\":\"p1\"}}");
    YES(who, "mail.participant.left", "a", "{\"participantId\":\"p1\"}");
    YES(who, "mail.created", "a", "{\"createdBy\":\"p1\"}");
    YES(who, "mail.closed", "a", "{\"closedBy\":\"p1\"}");
    YES(who, "mail.turn.added", "a", "{\"turn\":{\"participant\":\"p1\"}}");
    NO(who, "mail.turn.added", "a", "{\"turn\":{\"participant\":\"p2\"}}");
    NO(who, "mail.created", "p1", "{}"); /* the source is not a mail participant field */

    const char *ct = "{\"mail\":{\"contentType\":\"x-diff\"}}";
    YES(ct, "mail.turn.added", "a", "{\"turn\":{\"contentType\":\"x-diff\"}}");
    NO(ct, "mail.turn.added", "a", "{\"turn\":{\"contentType\":\"text\"}}");
    NO(ct, "mail.created", "a", "{\"contentType\":\"x-diff\"}");

    /* handoffTarget (not in MAP.md 10.8; implemented as data.turn.metadata.handoff_target) */
    const char *ho = "{\"mail\":{\"handoffTarget\":\"agent-b\"}}";
    YES(ho, "mail.turn.added", "a", "{\"turn\":{\"metadata\":{\"handoff_target\":\"agent-b\"}}}");
    NO(ho, "mail.turn.added", "a", "{\"turn\":{\"metadata\":{\"handoff_target\":\"agent-c\"}}}");
    NO(ho, "mail.turn.added", "a", "{\"turn\":{}}");

    /* all present mail fields must match */
    const char *both = "{\"mail\":{\"conversationId\":\"c1\",\"contentType\":\"text\"}}";
    YES(both, "mail.turn.added", "a", "{\"conversationId\":\"c1\",\"turn\":{\"contentType\":\"text\"}}");
    NO(both, "mail.turn.added", "a", "{\"conversationId\":\"c1\",\"turn\":{\"contentType\":\"data\"}}");
    NO(both, "mail.turn.added", "a", "{\"conversationId\":\"c2\",\"turn\":{\"contentType\":\"text\"}}");
    /* null mail fields are ignored */
    YES("{\"mail\":{\"conversationId\":null}}", "mail.created", "a", "{\"conversationId\":\"zz\"}");
}

static void mail_conversation_index(void **state)
{
    (void)state;
    mp_filter *f = compile("{\"mail\":{\"conversationId\":\"conv-1\"}}");
    assert_string_equal(mp_filter_conversation(f), "conv-1");
    mp_filter_free(f);
    f = compile("{\"mail\":{}}");
    assert_null(mp_filter_conversation(f));
    mp_filter_free(f);
    f = compile("{\"eventTypes\":[\"mail.*\"]}");
    assert_null(mp_filter_conversation(f));
    mp_filter_free(f);
    /* with OR semantics the pin no longer restricts the subscription */
    f = compile("{\"match\":\"any\",\"mail\":{\"conversationId\":\"conv-1\"}}");
    assert_null(mp_filter_conversation(f));
    mp_filter_free(f);
    f = compile("{\"mail\":{\"conversationId\":\"conv-1\"},\"$or\":[{}]}");
    assert_null(mp_filter_conversation(f));
    mp_filter_free(f);
    assert_null(mp_filter_conversation(NULL));
}

static void trajectory_filter(void **state)
{
    (void)state;
    YES("{\"trajectory\":{}}", "trajectory.checkpoint", "a", NULL);
    NO("{\"trajectory\":{}}", "agent_registered", "a", NULL);
}

static void and_across_keys_or_within(void **state)
{
    (void)state;
    const char *f = "{\"eventTypes\":[\"message_delivered\",\"message_sent\"],\"fromAgents\":[\"agent-a\",\"agent-b\"]}";
    YES(f, "message_sent", "agent-b", NULL);
    YES(f, "message_delivered", "agent-a", NULL);
    NO(f, "message_sent", "agent-c", NULL);
    NO(f, "agent_registered", "agent-a", NULL);
    const char *three = "{\"eventTypes\":[\"message_delivered\"],\"fromAgents\":[\"agent-a\"],"
                        "\"correlationIds\":[\"c\"]}";
    YES(three, "message_delivered", "agent-a", "{\"correlationId\":\"c\"}");
    NO(three, "message_delivered", "agent-a", "{\"correlationId\":\"d\"}");
    /* explicit match:"all" is the default */
    NO("{\"match\":\"all\",\"eventTypes\":[\"x\"],\"fromAgents\":[\"agent-a\"]}", "x", "agent-b", NULL);
}

static void match_any(void **state)
{
    (void)state;
    const char *f = "{\"match\":\"any\",\"eventTypes\":[\"scope_created\"],\"fromAgents\":[\"agent-a\"]}";
    YES(f, "scope_created", "agent-z", NULL);
    YES(f, "agent_registered", "agent-a", NULL);
    YES(f, "scope_created", "agent-a", NULL);
    NO(f, "agent_registered", "agent-z", NULL);
    /* no criteria at all: still everything */
    YES("{\"match\":\"any\"}", "x", NULL, NULL);
    YES("{\"match\":\"any\",\"eventTypes\":[]}", "x", NULL, NULL);
    /* mail under any: a non-mail event can still match through another key */
    YES("{\"match\":\"any\",\"mail\":{},\"fromAgents\":[\"agent-a\"]}", "agent_registered", "agent-a", NULL);
    NO("{\"match\":\"any\",\"mail\":{},\"fromAgents\":[\"agent-a\"]}", "agent_registered", "agent-b", NULL);
}

static void and_or_lists(void **state)
{
    (void)state;
    const char *and_f = "{\"$and\":[{\"eventTypes\":[\"message_*\"]},{\"fromAgents\":[\"agent-a\"]}]}";
    YES(and_f, "message_sent", "agent-a", NULL);
    NO(and_f, "message_sent", "agent-b", NULL);
    NO(and_f, "scope_created", "agent-a", NULL);

    const char *or_f = "{\"$or\":[{\"eventTypes\":[\"scope_created\"]},{\"fromAgents\":[\"agent-a\"]}]}";
    YES(or_f, "scope_created", "agent-b", NULL);
    YES(or_f, "message_sent", "agent-a", NULL);
    NO(or_f, "message_sent", "agent-b", NULL);

    /* top-level keys AND the $or */
    const char *mix = "{\"eventTypes\":[\"message_sent\"],\"$or\":[{\"fromAgents\":[\"agent-a\"]},"
                      "{\"fromRoles\":[\"planner\"]}]}";
    YES(mix, "message_sent", "agent-a", NULL);
    YES(mix, "message_sent", "agent-b", NULL);
    NO(mix, "message_sent", "agent-c", NULL);
    NO(mix, "scope_created", "agent-a", NULL);

    /* nesting */
    const char *nest = "{\"$or\":[{\"$and\":[{\"eventTypes\":[\"x\"]},{\"fromAgents\":[\"agent-a\"]}]},"
                       "{\"mail\":{\"conversationId\":\"c1\"}}]}";
    YES(nest, "x", "agent-a", NULL);
    NO(nest, "x", "agent-b", NULL);
    YES(nest, "mail.created", "agent-b", "{\"conversationId\":\"c1\"}");
    NO(nest, "mail.created", "agent-b", "{\"conversationId\":\"c2\"}");

    /* empty lists and empty sub-filters constrain nothing */
    YES("{\"$or\":[]}", "x", NULL, NULL);
    YES("{\"$and\":[]}", "x", NULL, NULL);
    YES("{\"$or\":[{}]}", "x", NULL, NULL);
    YES("{\"$and\":[null]}", "x", NULL, NULL);
    /* match:any with an $and: the fields are ORed, the $and still applies */
    const char *any_and = "{\"match\":\"any\",\"eventTypes\":[\"x\"],\"fromAgents\":[\"agent-a\"],"
                          "\"$and\":[{\"scopes\":[\"s\"]}]}";
    YES(any_and, "x", "agent-z", "{\"scopeId\":\"s\"}");
    NO(any_and, "x", "agent-z", "{\"scopeId\":\"t\"}");
}

static void invalid_filters_name_the_key(void **state)
{
    (void)state;
    expect_bad("5", "filter");
    expect_bad("[]", "filter");
    expect_bad("\"all\"", "filter");
    static const char *arr_keys[] = {"eventTypes", "fromAgents",  "agents",    "fromRoles",
                                     "roles",      "scopes",      "priorities", "correlationIds"};
    for (size_t i = 0; i < sizeof arr_keys / sizeof arr_keys[0]; i++) {
        char text[128], field[64];
        snprintf(field, sizeof field, "filter.%s", arr_keys[i]);
        snprintf(text, sizeof text, "{\"%s\":\"x\"}", arr_keys[i]);
        expect_bad(text, field);
        snprintf(text, sizeof text, "{\"%s\":[\"x\",1]}", arr_keys[i]);
        expect_bad(text, field);
        snprintf(text, sizeof text, "{\"%s\":{}}", arr_keys[i]);
        expect_bad(text, field);
    }
    static const char *obj_keys[] = {"metadataMatch", "environmentMatch", "mail", "trajectory"};
    for (size_t i = 0; i < sizeof obj_keys / sizeof obj_keys[0]; i++) {
        char text[128], field[64];
        snprintf(field, sizeof field, "filter.%s", obj_keys[i]);
        snprintf(text, sizeof text, "{\"%s\":[]}", obj_keys[i]);
        expect_bad(text, field);
        snprintf(text, sizeof text, "{\"%s\":\"x\"}", obj_keys[i]);
        expect_bad(text, field);
        snprintf(text, sizeof text, "{\"%s\":true}", obj_keys[i]);
        expect_bad(text, field);
    }
    static const char *mail_keys[] = {"conversationId", "threadId", "participantId", "contentType", "handoffTarget"};
    for (size_t i = 0; i < sizeof mail_keys / sizeof mail_keys[0]; i++) {
        char text[128], field[64];
        snprintf(field, sizeof field, "filter.mail.%s", mail_keys[i]);
        snprintf(text, sizeof text, "{\"mail\":{\"%s\":5}}", mail_keys[i]);
        expect_bad(text, field);
    }
    expect_bad("{\"match\":\"some\"}", "filter.match");
    expect_bad("{\"match\":true}", "filter.match");
    expect_bad("{\"$and\":{}}", "filter.$and");
    expect_bad("{\"$or\":\"x\"}", "filter.$or");
    expect_bad("{\"$or\":[5]}", "filter.$or[0]");
    expect_bad("{\"$and\":[{},{\"eventTypes\":5}]}", "filter.$and[1].eventTypes");
    expect_bad("{\"$and\":[{\"$or\":[{\"match\":1}]}]}", "filter.$and[0].$or[0].match");
    expect_bad("{\"$or\":[{\"mail\":{\"threadId\":[]}}]}", "filter.$or[0].mail.threadId");

    char big[1024] = "{\"$or\":[";
    for (int i = 0; i < 33; i++)
        strcat(big, i ? ",{}" : "{}");
    strcat(big, "]}");
    expect_bad(big, "filter.$or");
    big[strlen(big) - 5] = '\0'; /* drop one: 32 is the limit */
    strcat(big, "]}");
    YES(big, "x", NULL, NULL);
}

static void filter_owns_its_json(void **state)
{
    (void)state;
    json_t *j = tu_json("{\"eventTypes\":[\"x\"],\"mail\":{\"conversationId\":\"c\"},\"match\":\"any\"}");
    mp_filter *f;
    mp_err e;
    assert_int_equal(mp_filter_compile(j, &f, &e), 0);
    assert_int_equal(j->refcount, 2);
    json_decref(j); /* the caller's reference goes away */
    mp_event_view ev = {"x", NULL, NULL};
    assert_int_equal(mp_filter_match(f, &ev, NULL), 1);
    ev.type = "y";
    assert_int_equal(mp_filter_match(f, &ev, NULL), 0);
    ev.type = NULL; /* defensive: a type-less event matches only type-agnostic filters */
    assert_int_equal(mp_filter_match(f, &ev, NULL), 0);
    mp_filter_free(f);
    mp_filter_free(NULL);

    f = compile("{\"fromAgents\":[\"a\"]}");
    ev.source = "a";
    assert_int_equal(mp_filter_match(f, &ev, NULL), 1);
    mp_filter_free(f);
}

int main(void)
{
    tu_init();
    const struct CMUnitTest tests[] = {
        T(empty_filters_match_everything),
        T(event_type_names),
        T(event_types_key),
        T(from_agents_and_agents),
        T(from_roles_and_roles),
        T(scopes_key),
        T(priorities_key),
        T(correlation_ids_key),
        T(metadata_match_key),
        T(environment_match_key),
        T(mail_filter),
        T(mail_conversation_index),
        T(trajectory_filter),
        T(and_across_keys_or_within),
        T(match_any),
        T(and_or_lists),
        T(invalid_filters_name_the_key),
        T(filter_owns_its_json),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
