/* test_mp_rpc.c - JSON-RPC framing (MAP.md 1.2, 1.3, 16.1). */
#include "test_util.h"

#include <stdio.h>

#include "mp_err.h"
#include "mp_rpc.h"

typedef struct {
    mp_msg m;
    json_t *id; /* id_out */
    mp_err e;
    int rc;
} parsed;

static parsed parse_lim(const char *text, size_t len, mp_limits lim)
{
    parsed p;
    memset(&p, 0, sizeof p);
    p.id = (json_t *)0x1; /* must be overwritten */
    p.rc = mp_rpc_parse(text, len, &lim, &p.m, &p.id, &p.e);
    if (p.rc)
        assert_null(p.m.root);
    return p;
}

static parsed parse(const char *text)
{
    return parse_lim(text, strlen(text), MP_LIMITS_DEFAULT);
}

static void done(parsed *p)
{
    if (!p->rc)
        mp_msg_free(&p->m);
    json_decref(p->id);
}

/* Expect an error code, field and (when id_expect != NULL) an echoed id serializing to id_expect. */
static void expect_err(const char *text, int code, const char *field, const char *id_expect)
{
    parsed p = parse(text);
    assert_int_equal(p.rc, code);
    assert_int_equal(p.e.code, code);
    assert_string_equal(p.e.field, field);
    if (id_expect)
        tu_assert_dump(p.id, id_expect);
    else
        assert_null(p.id);
    done(&p);
}

/* ---- classification ---------------------------------------------------- */

static void request_basic(void **state)
{
    (void)state;
    parsed p = parse("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"map/connect\",\"params\":{\"a\":1}}");
    assert_int_equal(p.rc, 0);
    assert_null(p.id);
    assert_int_equal(p.m.kind, MP_KIND_REQUEST);
    assert_true(json_is_integer(p.m.id));
    assert_int_equal(json_integer_value(p.m.id), 1);
    assert_string_equal(p.m.method, "map/connect");
    tu_assert_dump(p.m.params, "{\"a\":1}");
    done(&p);
}

static void notification_has_no_id(void **state)
{
    (void)state;
    parsed p = parse("{\"jsonrpc\":\"2.0\",\"method\":\"map/subscribe.ack\",\"params\":{\"upToSequence\":3}}");
    assert_int_equal(p.rc, 0);
    assert_int_equal(p.m.kind, MP_KIND_NOTIFICATION);
    assert_null(p.m.id);
    assert_string_equal(p.m.method, "map/subscribe.ack");
    tu_assert_dump(p.m.params, "{\"upToSequence\":3}");
    done(&p);
}

static void null_id_is_a_request(void **state)
{
    (void)state;
    /* MAP.md 1.2: a notification has no id key at all; "id":null is a request. */
    parsed p = parse("{\"jsonrpc\":\"2.0\",\"id\":null,\"method\":\"map/agents/list\"}");
    assert_int_equal(p.rc, 0);
    assert_int_equal(p.m.kind, MP_KIND_REQUEST);
    assert_non_null(p.m.id);
    assert_true(json_is_null(p.m.id));
    tu_assert_dump_new(mp_rpc_result(p.m.id, NULL), "{\"jsonrpc\":\"2.0\",\"id\":null,\"result\":{}}");
    done(&p);
}

static void response_result_and_error(void **state)
{
    (void)state;
    parsed p = parse("{\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{\"ok\":true}}");
    assert_int_equal(p.rc, 0);
    assert_null(p.id);
    assert_int_equal(p.m.kind, MP_KIND_RESPONSE);
    assert_null(p.m.method);
    assert_int_equal(json_integer_value(p.m.id), 7);
    done(&p);

    p = parse("{\"jsonrpc\":\"2.0\",\"id\":\"r-1\",\"error\":{\"code\":-32601,\"message\":\"nope\"}}");
    assert_int_equal(p.rc, 0);
    assert_int_equal(p.m.kind, MP_KIND_RESPONSE);
    assert_string_equal(json_string_value(p.m.id), "r-1");
    done(&p);

    p = parse("{\"jsonrpc\":\"2.0\",\"id\":null,\"result\":null}");
    assert_int_equal(p.rc, 0);
    assert_int_equal(p.m.kind, MP_KIND_RESPONSE);
    done(&p);
}

static void response_needs_exactly_one_of_result_error(void **state)
{
    (void)state;
    expect_err("{\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{},\"error\":{\"code\":1,\"message\":\"x\"}}",
               MP_INVALID_REQUEST, "method", "7");
    expect_err("{\"jsonrpc\":\"2.0\",\"id\":7}", MP_INVALID_REQUEST, "method", "7");
    /* no id: neither a response nor a request */
    expect_err("{\"jsonrpc\":\"2.0\",\"result\":{}}", MP_INVALID_REQUEST, "method", NULL);
}

/* ---- id kept with its exact JSON type (16.1) ---------------------------- */

static void id_round_trip(const char *id_text)
{
    char req[256], want[256];
    snprintf(req, sizeof req, "{\"jsonrpc\":\"2.0\",\"id\":%s,\"method\":\"m\"}", id_text);
    snprintf(want, sizeof want, "{\"jsonrpc\":\"2.0\",\"id\":%s,\"result\":{}}", id_text);
    parsed p = parse(req);
    assert_int_equal(p.rc, 0);
    json_t *resp = mp_rpc_result(p.m.id, NULL);
    done(&p); /* the response holds its own reference to the id */
    tu_assert_dump_new(resp, want);
}

static void id_exact_types(void **state)
{
    (void)state;
    id_round_trip("1");
    id_round_trip("0");
    id_round_trip("-5");
    id_round_trip("\"1\"");
    id_round_trip("\"abc\"");
    id_round_trip("\"\"");
    id_round_trip("\"\xc3\xa9t\xc3\xa9\""); /* UTF-8 kept raw */
    id_round_trip("9007199254740993");    /* 2^53 + 1: not representable as a double */
    id_round_trip("9223372036854775807"); /* INT64_MAX */
    id_round_trip("-9223372036854775808");
    id_round_trip("1.5");
    id_round_trip("null");

    parsed p = parse("{\"jsonrpc\":\"2.0\",\"id\":\"1\",\"method\":\"m\"}");
    assert_int_equal(p.rc, 0);
    assert_true(json_is_string(p.m.id));
    done(&p);
    p = parse("{\"jsonrpc\":\"2.0\",\"id\":9007199254740993,\"method\":\"m\"}");
    assert_int_equal(p.rc, 0);
    assert_true(json_is_integer(p.m.id));
    assert_true(json_integer_value(p.m.id) == 9007199254740993LL);
    done(&p);
}

static void id_wrong_type(void **state)
{
    (void)state;
    expect_err("{\"jsonrpc\":\"2.0\",\"id\":{},\"method\":\"m\"}", MP_INVALID_REQUEST, "id", NULL);
    expect_err("{\"jsonrpc\":\"2.0\",\"id\":[1],\"method\":\"m\"}", MP_INVALID_REQUEST, "id", NULL);
    expect_err("{\"jsonrpc\":\"2.0\",\"id\":true,\"method\":\"m\"}", MP_INVALID_REQUEST, "id", NULL);
}

/* ---- params -------------------------------------------------------------- */

static void absent_params_become_empty_object(void **state)
{
    (void)state;
    const char *texts[] = {"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"map/disconnect\"}",
                           "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"map/disconnect\",\"params\":null}",
                           "{\"jsonrpc\":\"2.0\",\"method\":\"x-note\"}"};
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        parsed p = parse(texts[i]);
        assert_int_equal(p.rc, 0);
        assert_non_null(p.m.params);
        assert_true(json_is_object(p.m.params));
        assert_int_equal(json_object_size(p.m.params), 0);
        assert_ptr_equal(json_object_get(p.m.root, "params"), p.m.params);
        done(&p);
    }
}

static void non_object_params_invalid_params(void **state)
{
    (void)state;
    expect_err("{\"jsonrpc\":\"2.0\",\"id\":4,\"method\":\"m\",\"params\":[1,2]}", MP_INVALID_PARAMS, "params", "4");
    expect_err("{\"jsonrpc\":\"2.0\",\"id\":\"s\",\"method\":\"m\",\"params\":\"x\"}", MP_INVALID_PARAMS, "params",
               "\"s\"");
    expect_err("{\"jsonrpc\":\"2.0\",\"id\":4,\"method\":\"m\",\"params\":3}", MP_INVALID_PARAMS, "params", "4");
    expect_err("{\"jsonrpc\":\"2.0\",\"id\":4,\"method\":\"m\",\"params\":false}", MP_INVALID_PARAMS, "params", "4");
    /* a notification: still an error, but no id to answer */
    expect_err("{\"jsonrpc\":\"2.0\",\"method\":\"m\",\"params\":[]}", MP_INVALID_PARAMS, "params", NULL);
}

/* ---- not a request ------------------------------------------------------ */

static void arrays_and_scalars_invalid_request(void **state)
{
    (void)state;
    expect_err("[]", MP_INVALID_REQUEST, "", NULL);
    expect_err("[{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"m\"}]", MP_INVALID_REQUEST, "", NULL);
    /* valid JSON that is not an object: -32600, not -32700 (MAP.md 1.2 rule 7) */
    expect_err("42", MP_INVALID_REQUEST, "", NULL);
    expect_err("\"map/connect\"", MP_INVALID_REQUEST, "", NULL);
    expect_err("null", MP_INVALID_REQUEST, "", NULL);
    expect_err("true", MP_INVALID_REQUEST, "", NULL);
}

static void jsonrpc_version(void **state)
{
    (void)state;
    expect_err("{\"id\":3,\"method\":\"m\"}", MP_INVALID_REQUEST, "jsonrpc", "3");
    expect_err("{\"jsonrpc\":\"1.0\",\"id\":3,\"method\":\"m\"}", MP_INVALID_REQUEST, "jsonrpc", "3");
    expect_err("{\"jsonrpc\":2.0,\"id\":\"abc\",\"method\":\"m\"}", MP_INVALID_REQUEST, "jsonrpc", "\"abc\"");
    expect_err("{\"jsonrpc\":\"2.0 \",\"method\":\"m\"}", MP_INVALID_REQUEST, "jsonrpc", NULL);
    expect_err("{\"jsonrpc\":null,\"id\":null,\"method\":\"m\"}", MP_INVALID_REQUEST, "jsonrpc", "null");
    expect_err("{}", MP_INVALID_REQUEST, "jsonrpc", NULL);
}

static void method_checks(void **state)
{
    (void)state;
    expect_err("{\"jsonrpc\":\"2.0\",\"id\":1}", MP_INVALID_REQUEST, "method", "1");
    expect_err("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"\"}", MP_INVALID_REQUEST, "method", "1");
    expect_err("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":5}", MP_INVALID_REQUEST, "method", "1");
    expect_err("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":null}", MP_INVALID_REQUEST, "method", "1");
    expect_err("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":[\"m\"]}", MP_INVALID_REQUEST, "method", "1");
    expect_err("{\"jsonrpc\":\"2.0\",\"method\":\"\"}", MP_INVALID_REQUEST, "method", NULL);

    /* length limit: exactly max_method bytes is fine, one more is not */
    char name[200], text[300];
    memset(name, 'm', 128);
    name[128] = '\0';
    snprintf(text, sizeof text, "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"%s\"}", name);
    parsed p = parse(text);
    assert_int_equal(p.rc, 0);
    assert_int_equal(strlen(p.m.method), 128);
    done(&p);
    name[128] = 'm';
    name[129] = '\0';
    snprintf(text, sizeof text, "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"%s\"}", name);
    p = parse(text);
    assert_int_equal(p.rc, MP_INVALID_REQUEST);
    assert_string_equal(p.e.field, "method");
    assert_non_null(strstr(p.e.message, "128"));
    done(&p);

    mp_limits lim = MP_LIMITS_DEFAULT;
    lim.max_method = 5;
    const char *ok = "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"abcde\"}";
    p = parse_lim(ok, strlen(ok), lim);
    assert_int_equal(p.rc, 0);
    done(&p);
    const char *bad = "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"abcdef\"}";
    p = parse_lim(bad, strlen(bad), lim);
    assert_int_equal(p.rc, MP_INVALID_REQUEST);
    assert_int_equal(json_integer_value(p.id), 1);
    done(&p);
}

/* ---- not JSON ----------------------------------------------------------- */

static void invalid_json_parse_error_without_id(void **state)
{
    (void)state;
    const char *texts[] = {
        "{\"jsonrpc\":",
        "{\"jsonrpc\":\"2.0\",\"id\":5,\"method\":\"m\",}", /* id readable by eye, but not JSON */
        "{\"jsonrpc\":\"2.0\",\"id\":5,\"method\":\"m\"} x",   /* trailing garbage */
        "{\"a\":1,\"a\":2}",                                /* duplicate keys */
        "{\"a\":\"\\u0000\"}",                              /* NUL inside a string */
        "{\"a\":\"\xff\"}",                                 /* invalid UTF-8 */
        "{'a':1}",
        "   ",
        "99999999999999999999999", /* integer overflow */
    };
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        parsed p = parse(texts[i]);
        assert_int_equal(p.rc, MP_PARSE_ERROR);
        assert_null(p.id);
        assert_string_equal(p.e.field, "");
        assert_memory_equal(p.e.message, "Parse error", 11);
        /* the error object must always be encodable */
        json_t *r = mp_rpc_error(p.id, &p.e);
        json_t *code = json_object_get(json_object_get(r, "error"), "code");
        assert_int_equal(json_integer_value(code), MP_PARSE_ERROR);
        assert_true(json_is_null(json_object_get(r, "id")));
        json_decref(r);
        done(&p);
    }
}

static void empty_message(void **state)
{
    (void)state;
    parsed p = parse_lim("", 0, MP_LIMITS_DEFAULT);
    assert_int_equal(p.rc, MP_PARSE_ERROR);
    assert_null(p.id);
    assert_string_equal(p.e.message, "Parse error: empty message");
    done(&p);
    /* len wins over the NUL terminator: zero bytes of a non-empty buffer are still empty */
    p = parse_lim("{}", 0, MP_LIMITS_DEFAULT);
    assert_int_equal(p.rc, MP_PARSE_ERROR);
    done(&p);
}

static void parses_only_len_bytes(void **state)
{
    (void)state;
    const char *text = "{\"jsonrpc\":\"2.0\",\"method\":\"m\"}GARBAGE";
    parsed p = parse_lim(text, strlen(text) - 7, MP_LIMITS_DEFAULT);
    assert_int_equal(p.rc, 0);
    assert_int_equal(p.m.kind, MP_KIND_NOTIFICATION);
    done(&p);
}

static char *nested(int depth, const char *open, const char *inner, const char *close)
{
    size_t n = strlen(open) * (size_t)depth + strlen(inner) + strlen(close) * (size_t)depth + 64;
    char *s = malloc(n);
    assert_non_null(s);
    strcpy(s, "{\"jsonrpc\":\"2.0\",\"method\":\"m\",\"params\":");
    /* params itself is depth 2 (root object is 1) */
    for (int i = 0; i < depth; i++)
        strcat(s, open);
    strcat(s, inner);
    for (int i = 0; i < depth; i++)
        strcat(s, close);
    strcat(s, "}");
    return s;
}

static void depth_cap(void **state)
{
    (void)state;
    /* root + params + 62 arrays = 64 levels: allowed; 65: rejected */
    char buf[1024];
    strcpy(buf, "{\"jsonrpc\":\"2.0\",\"method\":\"m\",\"params\":{\"a\":");
    for (int i = 0; i < 62; i++)
        strcat(buf, "[");
    for (int i = 0; i < 62; i++)
        strcat(buf, "]");
    strcat(buf, "}}");
    parsed p = parse(buf);
    assert_int_equal(p.rc, 0);
    done(&p);

    strcpy(buf, "{\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"m\",\"params\":{\"a\":");
    for (int i = 0; i < 63; i++)
        strcat(buf, "[");
    for (int i = 0; i < 63; i++)
        strcat(buf, "]");
    strcat(buf, "}}");
    p = parse(buf);
    assert_int_equal(p.rc, MP_PARSE_ERROR);
    assert_null(p.id); /* the id is not read from rejected text */
    assert_string_equal(p.e.message, "Parse error: JSON nested deeper than 64 levels");
    done(&p);

    /* brackets inside strings do not count */
    mp_limits lim = MP_LIMITS_DEFAULT;
    lim.max_depth = 2;
    const char *t = "{\"jsonrpc\":\"2.0\",\"method\":\"m\",\"params\":{\"a\":\"[[[{{{\\\"[[\"}}";
    p = parse_lim(t, strlen(t), lim);
    assert_int_equal(p.rc, 0);
    assert_string_equal(json_string_value(json_object_get(p.m.params, "a")), "[[[{{{\"[[");
    done(&p);
    t = "{\"jsonrpc\":\"2.0\",\"method\":\"m\",\"params\":{\"a\":[]}}";
    p = parse_lim(t, strlen(t), lim);
    assert_int_equal(p.rc, MP_PARSE_ERROR);
    assert_string_equal(p.e.message, "Parse error: JSON nested deeper than 2 levels");
    done(&p);

    /* a deep text far past jansson's own limit stops at the pre-scan */
    char *deep = nested(5000, "[", "", "]");
    p = parse(deep);
    assert_int_equal(p.rc, MP_PARSE_ERROR);
    done(&p);
    free(deep);
}

/* ---- builders ----------------------------------------------------------- */

static void builders_exact_json(void **state)
{
    (void)state;
    json_t *id = json_integer(1);
    tu_assert_dump_new(mp_rpc_result(id, json_pack("{s:i}", "x", 1)),
                       "{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"x\":1}}");
    tu_assert_dump_new(mp_rpc_result(id, NULL), "{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}");
    tu_assert_dump_new(mp_rpc_result(NULL, json_array()), "{\"jsonrpc\":\"2.0\",\"id\":null,\"result\":[]}");
    assert_int_equal(id->refcount, 1); /* builders take their own reference */
    json_decref(id);

    mp_err e;
    mp_err_set(&e, MP_PARSE_ERROR, NULL, "Parse error: x");
    tu_assert_dump_new(mp_rpc_error(NULL, &e), "{\"jsonrpc\":\"2.0\",\"id\":null,\"error\":{\"code\":-32700,\"message\":"
                                               "\"Parse error: x\",\"data\":{\"category\":\"protocol\",\"retryable\":"
                                               "false}}}");
    id = json_string("req-9");
    mp_err_set(&e, MP_AGENT_NOT_FOUND, "params.to.agent", "Agent not found: %s", "nope");
    tu_assert_dump_new(mp_rpc_error(id, &e),
                       "{\"jsonrpc\":\"2.0\",\"id\":\"req-9\",\"error\":{\"code\":2001,\"message\":\"Agent not found: "
                       "nope\",\"data\":{\"category\":\"routing\",\"retryable\":false,\"field\":\"params.to.agent\"}}}");
    json_decref(id);

    tu_assert_dump_new(mp_rpc_notification("map/event", json_pack("{s:s,s:i}", "subscriptionId", "sub-1",
                                                                  "sequenceNumber", 1)),
                       "{\"jsonrpc\":\"2.0\",\"method\":\"map/event\",\"params\":{\"subscriptionId\":\"sub-1\","
                       "\"sequenceNumber\":1}}");
    tu_assert_dump_new(mp_rpc_notification("map/message", NULL),
                       "{\"jsonrpc\":\"2.0\",\"method\":\"map/message\",\"params\":{}}");
}

static void error_reply_from_failed_parse(void **state)
{
    (void)state;
    parsed p = parse("{\"jsonrpc\":\"1.0\",\"id\":\"x-1\",\"method\":\"m\"}");
    assert_int_equal(p.rc, MP_INVALID_REQUEST);
    json_t *r = mp_rpc_error(p.id, &p.e);
    done(&p);
    tu_assert_dump_new(r, "{\"jsonrpc\":\"2.0\",\"id\":\"x-1\",\"error\":{\"code\":-32600,\"message\":\"Invalid "
                          "request: \\\"jsonrpc\\\" must be \\\"2.0\\\"\",\"data\":{\"category\":\"protocol\","
                          "\"retryable\":false,\"field\":\"jsonrpc\"}}}");
}

static void capture_frames_parse(void **state)
{
    (void)state;
    /* Verbatim frames from shared/protocol/captures (SDK client traffic). */
    const char *frames[] = {
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"map/connect\",\"params\":{\"protocolVersion\":1,"
        "\"participantType\":\"client\",\"name\":\"dashboard\",\"capabilities\":{\"observation\":{\"canObserve\":true,"
        "\"canQuery\":true},\"messaging\":{\"canSend\":true}},\"auth\":{\"method\":\"bearer\",\"credential\":\"tok-"
        "123\"}}}",
        "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"map/subscribe\",\"params\":{\"filter\":{\"eventTypes\":[\"agent_"
        "registered\",\"message_delivered\",\"message_sent\",\"scope_member_joined\"]}}}",
    };
    for (size_t i = 0; i < sizeof frames / sizeof frames[0]; i++) {
        parsed p = parse(frames[i]);
        assert_int_equal(p.rc, 0);
        assert_int_equal(p.m.kind, MP_KIND_REQUEST);
        assert_int_equal(json_integer_value(p.m.id), (json_int_t)i + 1);
        done(&p);
    }
}

int main(void)
{
    tu_init();
    const struct CMUnitTest tests[] = {
        T(request_basic),
        T(notification_has_no_id),
        T(null_id_is_a_request),
        T(response_result_and_error),
        T(response_needs_exactly_one_of_result_error),
        T(id_exact_types),
        T(id_wrong_type),
        T(absent_params_become_empty_object),
        T(non_object_params_invalid_params),
        T(arrays_and_scalars_invalid_request),
        T(jsonrpc_version),
        T(method_checks),
        T(invalid_json_parse_error_without_id),
        T(empty_message),
        T(parses_only_len_bytes),
        T(depth_cap),
        T(builders_exact_json),
        T(error_reply_from_failed_parse),
        T(capture_frames_parse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
