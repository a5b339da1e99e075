/* test_mp_addr.c - address forms and their errors (MAP.md 8.3). */
#include "test_util.h"

#include <stdio.h>

#include "mp_addr.h"
#include "mp_err.h"

/* Parse `text` and check kind / id; returns nothing, frees everything. */
static void expect_addr(const char *text, enum mp_addr_kind kind, const char *id)
{
    json_t *to = tu_json(text);
    mp_addr a;
    mp_err e;
    mp_err_clear(&e);
    int rc = mp_addr_parse(to, &a, &e);
    if (rc)
        fail_msg("%s: unexpected error %d field=%s: %s", text, rc, e.field, e.message);
    if (a.kind != kind)
        fail_msg("%s: kind %s, want %s", text, mp_addr_kind_name(a.kind), mp_addr_kind_name(kind));
    if (id)
        assert_string_equal(a.id, id);
    else
        assert_null(a.id);
    json_decref(to);
}

static void expect_bad(const char *text, const char *field, const char *message)
{
    json_t *to = tu_json(text);
    mp_addr a;
    mp_err e;
    int rc = mp_addr_parse(to, &a, &e);
    if (rc != MP_INVALID_PARAMS)
        fail_msg("%s: rc %d, want -32602", text, rc);
    assert_int_equal(e.code, MP_INVALID_PARAMS);
    if (strcmp(e.field, field) != 0)
        fail_msg("%s: field '%s', want '%s'", text, e.field, field);
    if (message)
        assert_string_equal(e.message, message);
    json_decref(to);
}

static void bare_string(void **state)
{
    (void)state;
    json_t *to = json_string("agent-7");
    mp_addr a;
    mp_err e;
    memset(&a, 0x5A, sizeof a);
    assert_int_equal(mp_addr_parse(to, &a, &e), 0);
    assert_int_equal(a.kind, MP_ADDR_BARE);
    assert_ptr_equal(a.id, json_string_value(to)); /* borrowed */
    assert_null(a.list);
    assert_null(a.within);
    assert_null(a.system);
    assert_null(a.which);
    assert_int_equal(a.depth, 0);
    json_decref(to);
    /* router-level prefixes are kept verbatim here */
    expect_addr("\"scope:team\"", MP_ADDR_BARE, "scope:team");
    expect_bad("\"\"", "to", "Address must not be an empty string");
}

static void missing_or_wrong_type(void **state)
{
    (void)state;
    mp_addr a;
    mp_err e;
    assert_int_equal(mp_addr_parse(NULL, &a, &e), MP_INVALID_PARAMS);
    assert_string_equal(e.field, "to");
    assert_string_equal(e.message, "Missing required parameter: to");
    expect_bad("null", "to", "Missing required parameter: to");
    expect_bad("5", "to", "Address must be a string or an object");
    expect_bad("[\"a\"]", "to", "Address must be a string or an object");
    expect_bad("true", "to", "Address must be a string or an object");
    expect_bad("{}", "to", NULL);
    expect_bad("{\"foo\":\"bar\"}", "to", NULL);
    expect_bad("{\"within\":\"s\"}", "to", NULL);
    expect_bad("{\"depth\":2}", "to", NULL);
}

static void agent_forms(void **state)
{
    (void)state;
    expect_addr("{\"agent\":\"agent-7\"}", MP_ADDR_AGENT, "agent-7");
    expect_bad("{\"agent\":\"\"}", "to.agent", "Address field to.agent must be a non-empty string");
    expect_bad("{\"agent\":5}", "to.agent", NULL);
    expect_bad("{\"agent\":{\"id\":\"x\"}}", "to.agent", NULL);

    json_t *to = tu_json("{\"agents\":[\"a\",\"b\",\"a\"]}");
    mp_addr a;
    mp_err e;
    assert_int_equal(mp_addr_parse(to, &a, &e), 0);
    assert_int_equal(a.kind, MP_ADDR_AGENTS);
    assert_ptr_equal(a.list, json_object_get(to, "agents"));
    assert_int_equal(json_array_size(a.list), 3); /* dedup is the router's job */
    json_decref(to);
    expect_bad("{\"agents\":[]}", "to.agents", "Address field to.agents must be a non-empty array of strings");
    expect_bad("{\"agents\":\"a\"}", "to.agents", NULL);
    expect_bad("{\"agents\":[\"a\",1]}", "to.agents", NULL);
    expect_bad("{\"agents\":[null]}", "to.agents", NULL);
}

static void federated(void **state)
{
    (void)state;
    json_t *to = tu_json("{\"system\":\"beta\",\"agent\":\"agent-x\"}");
    mp_addr a;
    mp_err e;
    assert_int_equal(mp_addr_parse(to, &a, &e), 0);
    assert_int_equal(a.kind, MP_ADDR_FEDERATED);
    assert_string_equal(a.system, "beta");
    assert_string_equal(a.id, "agent-x");
    json_decref(to);
    expect_bad("{\"system\":\"\",\"agent\":\"x\"}", "to.system", "Address field to.system must be a non-empty string");
    expect_bad("{\"system\":\"beta\",\"agent\":\"\"}", "to.agent", NULL);
    expect_bad("{\"system\":\"beta\",\"agent\":7}", "to.agent", NULL);
    /* boolean system + agent: the agent form (federation needs a system id string) */
    expect_addr("{\"system\":true,\"agent\":\"x\"}", MP_ADDR_AGENT, "x");
    /* a system id without an agent is neither form */
    expect_bad("{\"system\":\"beta\"}", "to.system", "Address field to.system must be true");
}

static void scope_and_role(void **state)
{
    (void)state;
    expect_addr("{\"scope\":\"scope-team\"}", MP_ADDR_SCOPE, "scope-team");
    expect_bad("{\"scope\":\"\"}", "to.scope", "Address field to.scope must be a non-empty string");
    expect_bad("{\"scope\":[\"a\"]}", "to.scope", NULL);

    json_t *to = tu_json("{\"role\":\"worker\",\"within\":\"scope-team\"}");
    mp_addr a;
    mp_err e;
    assert_int_equal(mp_addr_parse(to, &a, &e), 0);
    assert_int_equal(a.kind, MP_ADDR_ROLE);
    assert_string_equal(a.id, "worker");
    assert_string_equal(a.within, "scope-team");
    json_decref(to);
    to = tu_json("{\"role\":\"worker\",\"within\":null}");
    assert_int_equal(mp_addr_parse(to, &a, &e), 0);
    assert_null(a.within);
    json_decref(to);
    expect_addr("{\"role\":\"worker\"}", MP_ADDR_ROLE, "worker");
    expect_bad("{\"role\":\"\"}", "to.role", "Address field to.role must be a non-empty string");
    expect_bad("{\"role\":\"w\",\"within\":5}", "to.within", "Address field to.within must be a non-empty string");
    expect_bad("{\"role\":\"w\",\"within\":\"\"}", "to.within", NULL);
}

static void flags(void **state)
{
    (void)state;
    expect_addr("{\"broadcast\":true}", MP_ADDR_BROADCAST, NULL);
    expect_bad("{\"broadcast\":false}", "to.broadcast", "Address field to.broadcast must be true");
    expect_bad("{\"broadcast\":\"yes\"}", "to.broadcast", NULL);
    expect_bad("{\"broadcast\":1}", "to.broadcast", NULL);
    expect_addr("{\"system\":true}", MP_ADDR_SYSTEM, NULL);
    expect_bad("{\"system\":false}", "to.system", "Address field to.system must be true");
    expect_bad("{\"system\":1}", "to.system", NULL);
}

static void participants(void **state)
{
    (void)state;
    expect_addr("{\"participant\":\"participant-3\"}", MP_ADDR_PARTICIPANT, "participant-3");
    expect_bad("{\"participant\":\"\"}", "to.participant", "Address field to.participant must be a non-empty string");
    expect_bad("{\"participant\":3}", "to.participant", NULL);
    const char *which[] = {"all", "agents", "clients"};
    for (size_t i = 0; i < 3; i++) {
        char text[64];
        snprintf(text, sizeof text, "{\"participants\":\"%s\"}", which[i]);
        json_t *to = tu_json(text);
        mp_addr a;
        mp_err e;
        assert_int_equal(mp_addr_parse(to, &a, &e), 0);
        assert_int_equal(a.kind, MP_ADDR_PARTICIPANTS);
        assert_string_equal(a.which, which[i]);
        json_decref(to);
    }
    expect_bad("{\"participants\":\"some\"}", "to.participants",
               "Address field to.participants must be \"all\", \"agents\" or \"clients\"");
    expect_bad("{\"participants\":\"\"}", "to.participants", NULL);
    expect_bad("{\"participants\":true}", "to.participants", NULL);
    expect_bad("{\"participants\":[\"all\"]}", "to.participants", NULL);
}

static void hierarchical(void **state)
{
    (void)state;
    static const struct {
        const char *key;
        enum mp_addr_kind kind;
    } h[] = {{"parent", MP_ADDR_PARENT},
             {"children", MP_ADDR_CHILDREN},
             {"siblings", MP_ADDR_SIBLINGS},
             {"ancestors", MP_ADDR_ANCESTORS},
             {"descendants", MP_ADDR_DESCENDANTS}};
    for (size_t i = 0; i < sizeof h / sizeof h[0]; i++) {
        char text[128], field[64], msg[96];
        snprintf(text, sizeof text, "{\"%s\":true}", h[i].key);
        expect_addr(text, h[i].kind, NULL);
        snprintf(text, sizeof text, "{\"%s\":false}", h[i].key);
        snprintf(field, sizeof field, "to.%s", h[i].key);
        snprintf(msg, sizeof msg, "Address field to.%s must be true", h[i].key);
        expect_bad(text, field, msg);
        snprintf(text, sizeof text, "{\"%s\":\"true\"}", h[i].key);
        expect_bad(text, field, msg);

        /* depth: absent/null = 0 (unlimited), 1..1000 ok, anything else names to.depth */
        const char *depths[] = {"1", "2", "1000", "null"};
        const int want[] = {1, 2, 1000, 0};
        for (size_t d = 0; d < 4; d++) {
            snprintf(text, sizeof text, "{\"%s\":true,\"depth\":%s}", h[i].key, depths[d]);
            json_t *to = tu_json(text);
            mp_addr a;
            mp_err e;
            assert_int_equal(mp_addr_parse(to, &a, &e), 0);
            assert_int_equal(a.kind, h[i].kind);
            assert_int_equal(a.depth, want[d]);
            json_decref(to);
        }
        const char *bad[] = {"0", "-1", "1001", "\"2\"", "1.5", "true", "9223372036854775807"};
        for (size_t d = 0; d < sizeof bad / sizeof bad[0]; d++) {
            snprintf(text, sizeof text, "{\"%s\":true,\"depth\":%s}", h[i].key, bad[d]);
            expect_bad(text, "to.depth", "Address field to.depth must be an integer from 1 to 1000");
        }
    }
}

static void discrimination_order(void **state)
{
    (void)state;
    /* MAP.md 8.3: system+agent -> agent -> agents -> scope -> role -> broadcast -> system:true
     * -> participant/participants -> hierarchical */
    expect_addr("{\"agent\":\"a\",\"agents\":[\"b\"],\"scope\":\"s\"}", MP_ADDR_AGENT, "a");
    expect_addr("{\"scope\":\"s\",\"agents\":[\"b\"]}", MP_ADDR_AGENTS, NULL);
    expect_addr("{\"role\":\"r\",\"scope\":\"s\"}", MP_ADDR_SCOPE, "s");
    expect_addr("{\"broadcast\":true,\"role\":\"r\"}", MP_ADDR_ROLE, "r");
    expect_addr("{\"system\":true,\"broadcast\":true}", MP_ADDR_BROADCAST, NULL);
    expect_addr("{\"participant\":\"p\",\"system\":true}", MP_ADDR_SYSTEM, NULL);
    expect_addr("{\"parent\":true,\"participant\":\"p\"}", MP_ADDR_PARTICIPANT, "p");
    expect_addr("{\"parent\":true,\"participants\":\"all\"}", MP_ADDR_PARTICIPANTS, NULL);
    expect_addr("{\"children\":true,\"parent\":true}", MP_ADDR_PARENT, NULL);
    /* an earlier key that is invalid is an error, not a fall-through */
    expect_bad("{\"agent\":5,\"scope\":\"s\"}", "to.agent", NULL);
    /* null-valued keys count as absent (MAP.md 1.1) */
    expect_addr("{\"agent\":null,\"scope\":\"s\"}", MP_ADDR_SCOPE, "s");
    expect_addr("{\"system\":null,\"agent\":\"a\"}", MP_ADDR_AGENT, "a");
    expect_addr("{\"system\":\"beta\",\"agent\":null,\"broadcast\":true}", MP_ADDR_BROADCAST, NULL);
    expect_addr("{\"parent\":null,\"children\":true}", MP_ADDR_CHILDREN, NULL);
    expect_bad("{\"agent\":null}", "to", NULL);
}

static void kind_names(void **state)
{
    (void)state;
    static const char *names[] = {NULL,          "bare",      "agent",   "agents",    "scope",
                                  "role",        "parent",    "children", "siblings", "ancestors",
                                  "descendants", "broadcast", "system",  "participant", "participants",
                                  "federated"};
    for (int k = MP_ADDR_BARE; k <= MP_ADDR_FEDERATED; k++)
        assert_string_equal(mp_addr_kind_name((enum mp_addr_kind)k), names[k]);
    assert_string_equal(mp_addr_kind_name((enum mp_addr_kind)0), "?");
}

int main(void)
{
    tu_init();
    const struct CMUnitTest tests[] = {
        T(bare_string), T(missing_or_wrong_type), T(agent_forms),        T(federated),  T(scope_and_role),
        T(flags),       T(participants),          T(hierarchical),       T(discrimination_order),
        T(kind_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
