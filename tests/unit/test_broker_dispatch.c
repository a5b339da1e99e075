/* test_broker_dispatch.c - mb_dispatch(): state gate, unknown methods,
 * notifications, id echo, parse errors, group-commit hold-back (MAP.md 1.2, 3.2, 14.1). */
#include "test_util.h"

#include <stdio.h>

#include "broker_harness.h"
#include "mp_err.h"

#include "broker_fixture.h"

/* Send raw text on s; return the single frame it produced (or NULL), checking nothing else came. */
static json_t *one_reply(mb_session *s, const char *text)
{
    bh_send_raw(H, s, text);
    json_t *f = bh_pop(H, s, NULL);
    if (f && bh_inbox_len(H, s))
        fail_msg("more than one frame in reply to %s", text);
    return f;
}

/* ---- state gate ---- */

static const char *const k_gated[] = {
    "map/agents/register", "map/agents/list",  "map/agents/get", "map/agents/spawn", "map/scopes/create",
    "map/scopes/list",     "map/send",         "map/subscribe",  "map/unsubscribe",  "map/replay",
    "mail/create",         "mail/list",        "mail/turn",      "map/structure/graph", "map/session/list",
    "map/inject",          "map/auth/refresh", NULL};

static void gate_before_connect(void **state)
{
    (void)state;
    mb_session *s = bh_raw(H);
    for (int i = 0; k_gated[i]; i++) {
        json_t *e = bh_err(H, s, MP_AUTH_REQUIRED, k_gated[i], "{}");
        if (!bh_str(e, "message") || !strstr(bh_str(e, "message"), "map/connect"))
            fail_msg("%s: message does not mention map/connect", k_gated[i]);
        assert_string_equal(bh_str(e, "data.field"), "method");
        json_decref(e);
        assert_int_equal(s->state, MB_AWAIT_CONNECT);
    }
    /* nothing was created by the refused calls */
    assert_int_equal(mb_map_size(bh_broker(H)->agents), 0);
    assert_int_equal(mb_map_size(bh_broker(H)->scopes), 0);
}

static void gate_opens_after_connect(void **state)
{
    (void)state;
    mb_session *s = bh_raw(H);
    json_decref(bh_err(H, s, MP_AUTH_REQUIRED, "map/agents/list", "{}"));
    json_t *r = bh_ok(H, s, "map/connect", "{'protocolVersion':1,'participantType':'client','participantId':'c1'}");
    assert_string_equal(bh_str(r, "participantId"), "c1");
    assert_non_null(bh_str(r, "sessionId"));
    assert_non_null(bh_str(r, "resumeToken"));
    json_decref(r);
    assert_int_equal(s->state, MB_READY);
    r = bh_ok(H, s, "map/agents/list", "{}");
    assert_int_equal(json_array_size(bh_get(r, "agents")), 0);
    json_decref(r);
}

/* map/disconnect is allowed before connect? It is MB_M_PREAUTH only: refused before map/connect. */
static void gate_disconnect_preconnect(void **state)
{
    (void)state;
    mb_session *s = bh_raw(H);
    json_decref(bh_err(H, s, MP_AUTH_REQUIRED, "map/disconnect", "{}"));
}

/* ---- unknown methods ---- */

static void unknown_method(void **state)
{
    (void)state;
    static const char *const names[] = {"map/nope", "mail/nope", "map/agents", "MAP/CONNECT", "x-foo/bar", NULL};
    mb_session *raw = bh_raw(H);
    mb_session *s = bh_connect(H, "client", "c1");
    for (int i = 0; names[i]; i++) {
        /* -32601 wins over the state gate */
        json_t *e = bh_err(H, raw, MP_METHOD_NOT_FOUND, names[i], "{}");
        char want[128];
        snprintf(want, sizeof want, "Method not found: %s", names[i]);
        assert_string_equal(bh_str(e, "message"), want);
        json_decref(e);
        json_decref(bh_err(H, s, MP_METHOD_NOT_FOUND, names[i], "{}"));
    }
}

static void method_find_table(void **state)
{
    (void)state;
    static const char *const known[] = {
        "map/connect", "map/disconnect", "map/authenticate", "map/auth/refresh", "map/agents/register",
        "map/agents/unregister", "map/agents/list", "map/agents/get", "map/agents/update", "map/agents/spawn",
        "map/agents/stop", "map/agents/suspend", "map/agents/resume", "map/structure/graph", "map/scopes/create",
        "map/scopes/get", "map/scopes/list", "map/scopes/delete", "map/scopes/join", "map/scopes/leave",
        "map/scopes/members", "map/send", "map/inject", "map/subscribe", "map/unsubscribe", "map/subscribe.ack",
        "map/replay", "mail/create", "mail/get", "mail/list", "mail/close", "mail/join", "mail/leave", "mail/invite",
        "mail/turn", "mail/turns/list", "mail/thread/create", "mail/thread/list", "mail/summary", "mail/replay", NULL};
    for (int i = 0; known[i]; i++) {
        const mb_method *m = mb_method_find(known[i]);
        if (!m)
            fail_msg("method %s not in the table", known[i]);
        assert_string_equal(m->name, known[i]);
        assert_non_null(m->fn);
    }
    assert_null(mb_method_find("map/message")); /* broker -> participant only (MAP.md 8) */
    assert_null(mb_method_find("map/event"));
    assert_null(mb_method_find("nope"));
    assert_true(mb_method_find("map/connect")->flags & MB_M_PRECONNECT);
    assert_false(mb_method_find("map/send")->flags & MB_M_PRECONNECT);
    assert_true(mb_method_find("map/inject")->flags & MB_M_OPERATOR);
}

/* inbound map/message is not a method the broker accepts */
static void inbound_map_message_refused(void **state)
{
    (void)state;
    mb_session *s = bh_connect(H, "agent", "a1");
    json_decref(bh_err(H, s, MP_METHOD_NOT_FOUND, "map/message", "{'message':{}}"));
}

/* ---- notifications are never answered ---- */

static void notifications_silent(void **state)
{
    (void)state;
    static const char *const texts[] = {
        "{\"jsonrpc\":\"2.0\",\"method\":\"map/nope\",\"params\":{}}",
        "{\"jsonrpc\":\"2.0\",\"method\":\"map/agents/get\",\"params\":{\"agentId\":\"ghost\"}}",
        "{\"jsonrpc\":\"2.0\",\"method\":\"map/agents/list\",\"params\":{}}",
        "{\"jsonrpc\":\"2.0\",\"method\":\"map/agents/list\"}",
        "{\"jsonrpc\":\"2.0\",\"method\":\"map/agents/get\",\"params\":{\"agentId\":7}}",
        "{\"jsonrpc\":\"2.0\",\"method\":\"map/agents/list\",\"params\":[1,2]}",
        "{\"jsonrpc\":\"2.0\",\"method\":\"map/subscribe.ack\",\"params\":{\"subscriptionId\":\"x\",\"upToSequence\":1}}",
        "{\"jsonrpc\":\"2.0\",\"method\":\"map/scopes/create\",\"params\":{\"scopeId\":\"s-note\"}}",
        "{\"jsonrpc\":\"2.0\",\"id\":5,\"result\":{}}", /* stray response */
        "{\"jsonrpc\":\"2.0\",\"id\":5,\"error\":{\"code\":1,\"message\":\"x\"}}",
        NULL};
    mb_session *raw = bh_raw(H);
    mb_session *s = bh_connect(H, "client", "c1");
    for (int i = 0; texts[i]; i++) {
        bh_send_raw(H, s, texts[i]);
        if (bh_inbox_len(H, s))
            fail_msg("connected: notification answered: %s", texts[i]);
        bh_send_raw(H, raw, texts[i]);
        if (bh_inbox_len(H, raw))
            fail_msg("pre-connect: notification answered: %s", texts[i]);
    }
    /* but a notification still acts: the scope exists */
    assert_non_null(mb_scope_get(bh_broker(H), "s-note"));
}

/* ---- id echo ---- */

static void id_echo(void **state)
{
    (void)state;
    static const char *const ids[] = {"1", "0", "-7", "9007199254740991", "\"abc\"", "\"\"", "\"01J\\u00e9\"", NULL};
    mb_session *raw = bh_raw(H);
    mb_session *s = bh_connect(H, "client", "c1");
    for (int i = 0; ids[i]; i++) {
        json_t *want = bh_json("%s", ids[i]);
        char text[256];
        /* success, method error, unknown method, state gate */
        const char *const forms[][2] = {{"map/agents/list", "{}"},
                                        {"map/agents/get", "{\"agentId\":\"ghost\"}"},
                                        {"map/zzz", "{}"},
                                        {"map/agents/list", "{}"}};
        for (int k = 0; k < 4; k++) {
            snprintf(text, sizeof text, "{\"jsonrpc\":\"2.0\",\"id\":%s,\"method\":\"%s\",\"params\":%s}", ids[i],
                     forms[k][0], forms[k][1]);
            json_t *f = one_reply(k == 3 ? raw : s, text);
            if (!f)
                fail_msg("no reply to %s", text);
            if (!json_equal(json_object_get(f, "id"), want))
                fail_msg("id not echoed for %s", text);
            assert_string_equal(bh_str(f, "jsonrpc"), "2.0");
            assert_true((json_object_get(f, "result") != NULL) != (json_object_get(f, "error") != NULL));
            assert_int_equal(json_object_get(f, "result") != NULL, k == 0);
            json_decref(f);
        }
        json_decref(want);
    }
}

/* ---- parse errors ---- */

static void parse_errors(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        int code;
        int id_null;
    } cases[] = {
        {"{", MP_PARSE_ERROR, 1},
        {"not json", MP_PARSE_ERROR, 1},
        {"[]", MP_INVALID_REQUEST, 1},
        {"{\"jsonrpc\":\"1.0\",\"id\":3,\"method\":\"map/agents/list\"}", MP_INVALID_REQUEST, 0},
        {"{\"jsonrpc\":\"2.0\",\"id\":3}", MP_INVALID_REQUEST, 0},
        {"{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":7}", MP_INVALID_REQUEST, 0},
        {"{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"map/agents/list\",\"params\":[1]}", MP_INVALID_PARAMS, 0},
    };
    mb_session *s = bh_connect(H, "client", "c1");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json_t *f = one_reply(s, cases[i].text);
        if (!f)
            fail_msg("no reply to %s", cases[i].text);
        if (bh_int(f, "error.code") != cases[i].code)
            fail_msg("%s: code %lld, want %d", cases[i].text, bh_int(f, "error.code"), cases[i].code);
        if (cases[i].id_null)
            assert_true(json_is_null(json_object_get(f, "id")));
        else
            assert_int_equal(bh_int(f, "id"), 3);
        json_decref(f);
    }
    assert_int_equal(s->state, MB_READY); /* a bad frame does not end the session */
}

/* ---- group commit: a write's reply is held until its transaction committed ---- */

static void reply_held_until_commit(void **state)
{
    (void)state;
    mb_session *s = bh_connect(H, "agent", "a1");
    mb_broker *b = bh_broker(H);
    static const char reg[] = "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"map/agents/register\",\"params\":{\"agentId\":\"a1\"}}";
    mb_session_on_message(s, reg, sizeof reg - 1);
    assert_non_null(s->q_head);
    assert_true(b->txn_open);
    assert_true(s->q_head->gen > b->committed_gen); /* not releasable yet */
    assert_true(s->in_wake_list);
    /* a pure read in the same pass is queued behind it, in order */
    static const char lst[] = "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"map/agents/list\",\"params\":{}}";
    mb_session_on_message(s, lst, sizeof lst - 1);
    assert_int_equal(s->q_count, 2);
    bh_send_raw(H, s, "{\"jsonrpc\":\"2.0\",\"method\":\"map/nope\"}"); /* commits + collects */
    assert_false(b->txn_open);
    json_t *f1 = bh_pop(H, s, NULL), *f2 = bh_pop(H, s, NULL);
    assert_int_equal(bh_int(f1, "id"), 1);
    assert_int_equal(bh_int(f2, "id"), 2);
    assert_string_equal(bh_str(f2, "result.agents.0.id"), "a1");
    json_decref(f1);
    json_decref(f2);
}

/* (its own broker, no fixture) commit-window-us 0 (auto with memory:): no group commit, a write's reply
 * and its events are releasable as soon as the request is handled */
static void window_zero_releases_at_once(void **state)
{
    (void)state;
    static const char *const ex[] = {"--commit-window-us", "-1", NULL};
    bh *h = bh_new(ex);
    mb_broker *b = bh_broker(h);
    assert_int_equal(b->cfg->commit_window_us, 0); /* auto: memory: has nothing to gather for */
    mb_session *s = bh_connect(h, "agent", "a1");
    static const char reg[] = "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"map/agents/register\",\"params\":{\"agentId\":\"a1\"}}";
    mb_session_on_message(s, reg, sizeof reg - 1);
    assert_false(b->txn_open);
    assert_non_null(s->q_head);
    assert_true(s->q_head->gen <= b->committed_gen); /* releasable now */
    assert_false(s->in_wake_list);
    bh_free(h);
}

static void read_not_held(void **state)
{
    (void)state;
    mb_session *s = bh_connect(H, "client", "c1");
    mb_broker *b = bh_broker(H);
    static const char lst[] = "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"map/agents/list\",\"params\":{}}";
    mb_session_on_message(s, lst, sizeof lst - 1);
    assert_false(b->txn_open);
    assert_non_null(s->q_head);
    assert_true(s->q_head->gen <= b->committed_gen);
    bh_clear(H, s);
    bh_send_raw(H, s, "{\"jsonrpc\":\"2.0\",\"method\":\"map/nope\"}");
    bh_clear(H, s);
}

/* ---- stats counted by dispatch ---- */

static void stats_counted(void **state)
{
    (void)state;
    mb_broker *b = bh_broker(H);
    mb_session *s = bh_connect(H, "client", "c1");
    uint64_t req = b->stats.requests, err = b->stats.errors;
    json_decref(bh_err(H, s, MP_METHOD_NOT_FOUND, "map/zzz", "{}"));
    json_decref(bh_ok(H, s, "map/agents/list", "{}"));
    assert_int_equal(b->stats.requests, req + 2);
    assert_int_equal(b->stats.errors, err + 1);
}

/* ---- the connect result ---- */

static void connect_result_shape(void **state)
{
    (void)state;
    mb_session *s = bh_raw(H);
    json_t *r = bh_ok(H, s, "map/connect", "{'protocolVersion':1,'participantType':'agent','participantId':'p-1','name':'n'}");
    assert_int_equal(bh_int(r, "protocolVersion"), 1);
    assert_string_equal(bh_str(r, "participantId"), "p-1");
    assert_true(json_is_object(bh_get(r, "capabilities")));
    assert_true(json_is_true(bh_get(r, "capabilities.mail.enabled")));
    assert_true(json_is_array(bh_get(r, "ownedAgents")));
    json_decref(r);
    assert_int_equal(s->ptype, MB_PT_AGENT);
    /* bad participant type */
    mb_session *s2 = bh_raw(H);
    bh_err_field(H, s2, MP_INVALID_PARAMS, "participantType", "map/connect", "{'participantType':'robot'}");
    bh_err_field(H, s2, MP_INVALID_PARAMS, "participantType", "map/connect", "{}");
    assert_int_equal(s2->state, MB_AWAIT_CONNECT);
}

int main(void)
{
    tu_init();
    const struct CMUnitTest tests[] = {
        TB(gate_before_connect),   TB(gate_opens_after_connect), TB(gate_disconnect_preconnect),
        TB(unknown_method),        TB(method_find_table),        TB(inbound_map_message_refused),
        TB(notifications_silent),  TB(id_echo),                  TB(parse_errors),
        TB(reply_held_until_commit), TB(read_not_held),          cmocka_unit_test(window_zero_releases_at_once),          TB(stats_counted),
        TB(connect_result_shape),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
