/* test_mp_err.c - error values and the JSON-RPC error object (MAP.md 1.3, 14). */
#include "test_util.h"

#include <stdio.h>

#include "mp_err.h"

static void categories_by_range(void **state)
{
    (void)state;
    static const struct {
        int code;
        const char *cat;
    } cases[] = {
        {MP_PARSE_ERROR, "protocol"},   {MP_INVALID_REQUEST, "protocol"}, {MP_METHOD_NOT_FOUND, "protocol"},
        {MP_INVALID_PARAMS, "protocol"}, {MP_INTERNAL, "internal"},         {-32000, "protocol"},
        {0, "protocol"},                {999, "protocol"},                {1000, "auth"},
        {1006, "auth"},                 {1999, "auth"},                   {2000, "routing"},
        {2004, "routing"},              {2999, "routing"},                {3000, "agent"},
        {3999, "agent"},                {4000, "resource"},               {4999, "resource"},
        {5000, "federation"},           {5011, "federation"},             {5999, "federation"},
        {6000, "protocol"},             {9999, "protocol"},               {10000, "mail"},
        {10010, "mail"},                {10999, "mail"},                  {11000, "protocol"},
        {13000, "trajectory"},          {13999, "trajectory"},            {14000, "protocol"},
        {90000, "protocol"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *got = mp_err_category(cases[i].code);
        if (strcmp(got, cases[i].cat) != 0)
            fail_msg("code %d: category %s, want %s", cases[i].code, got, cases[i].cat);
    }
}

static void set_fills_everything(void **state)
{
    (void)state;
    mp_err e;
    memset(&e, 0x5A, sizeof e);
    assert_int_equal(mp_err_set(&e, MP_AGENT_NOT_FOUND, "params.to.agent", "Agent not found: %s (%d)", "x", 3),
                     MP_AGENT_NOT_FOUND);
    assert_int_equal(e.code, 2001);
    assert_int_equal(e.retryable, 0);
    assert_int_equal(e.retry_after_ms, 0);
    assert_string_equal(e.message, "Agent not found: x (3)");
    assert_string_equal(e.field, "params.to.agent");

    mp_err_set(&e, MP_INVALID_PARAMS, NULL, "no field");
    assert_string_equal(e.field, "");

    mp_err_clear(&e);
    assert_int_equal(e.code, 0);
    assert_string_equal(e.message, "");
    assert_string_equal(e.field, "");
}

static int vset_wrapper(mp_err *e, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int vset_wrapper(mp_err *e, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = mp_err_vset(e, code, "f", fmt, ap);
    va_end(ap);
    return rc;
}

static void vset(void **state)
{
    (void)state;
    mp_err e;
    assert_int_equal(vset_wrapper(&e, MP_SCOPE_NOT_FOUND, "Scope not found: %s", "s-1"), 2002);
    assert_string_equal(e.message, "Scope not found: s-1");
    assert_string_equal(e.field, "f");
}

static void retryable_codes(void **state)
{
    (void)state;
    static const int yes[] = {MP_DELIVERY_FAILED, MP_EXHAUSTED,     MP_RATE_LIMITED,
                              MP_FED_UNAVAILABLE, MP_NOT_RESPONDING, MP_TOKEN_EXPIRED};
    static const int no[] = {MP_PARSE_ERROR, MP_INTERNAL,       MP_AUTH_REQUIRED,      MP_PERMISSION_DENIED,
                             MP_AGENT_NOT_FOUND, MP_QUOTA_EXCEEDED, MP_FED_SYSTEM_NOT_FOUND, MP_MAIL_CONV_CLOSED};
    mp_err e;
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
        mp_err_set(&e, yes[i], NULL, "x");
        if (e.retryable != 1)
            fail_msg("code %d should be retryable", yes[i]);
    }
    for (size_t i = 0; i < sizeof no / sizeof no[0]; i++) {
        mp_err_set(&e, no[i], NULL, "x");
        if (e.retryable != 0)
            fail_msg("code %d should not be retryable", no[i]);
    }
    /* set() resets what an earlier error left behind */
    mp_err_set(&e, MP_RATE_LIMITED, NULL, "slow down");
    e.retry_after_ms = 500;
    mp_err_set(&e, MP_AUTH_FAILED, NULL, "x");
    assert_int_equal(e.retryable, 0);
    assert_int_equal(e.retry_after_ms, 0);
}

static void json_object_shapes(void **state)
{
    (void)state;
    mp_err e;
    mp_err_set(&e, MP_INVALID_PARAMS, "params.agentId", "Missing required parameter: agentId");
    tu_assert_dump_new(mp_err_json(&e), "{\"code\":-32602,\"message\":\"Missing required parameter: agentId\","
                                        "\"data\":{\"category\":\"protocol\",\"retryable\":false,\"field\":"
                                        "\"params.agentId\"}}");

    mp_err_set(&e, MP_DELIVERY_FAILED, NULL, "Delivery failed");
    tu_assert_dump_new(mp_err_json(&e), "{\"code\":2003,\"message\":\"Delivery failed\",\"data\":{\"category\":"
                                        "\"routing\",\"retryable\":true}}");

    mp_err_set(&e, MP_RATE_LIMITED, NULL, "Rate limited");
    e.retry_after_ms = 1500;
    tu_assert_dump_new(mp_err_json(&e), "{\"code\":4001,\"message\":\"Rate limited\",\"data\":{\"category\":"
                                        "\"resource\",\"retryable\":true,\"retryAfterMs\":1500}}");

    mp_err_set(&e, MP_INTERNAL, NULL, "%s", "");
    tu_assert_dump_new(mp_err_json(&e), "{\"code\":-32603,\"message\":\"error\",\"data\":{\"category\":\"internal\","
                                        "\"retryable\":false}}");

    mp_err_set(&e, MP_MAIL_CONV_CLOSED, "params.conversationId", "Conversation closed");
    json_t *j = mp_err_json(&e);
    assert_string_equal(json_string_value(json_object_get(json_object_get(j, "data"), "category")), "mail");
    json_decref(j);

    /* long field: cut to MP_ERR_FIELD_MAX - 1 bytes */
    char longf[200];
    memset(longf, 'f', sizeof longf - 1);
    longf[sizeof longf - 1] = '\0';
    mp_err_set(&e, MP_INVALID_PARAMS, longf, "x");
    assert_int_equal(strlen(e.field), MP_ERR_FIELD_MAX - 1);
}

/* Message of `pad` ASCII bytes followed by `tail`, through the public API. */
static void set_padded(mp_err *e, size_t pad, const char *tail)
{
    char buf[600];
    memset(buf, 'a', pad);
    buf[pad] = '\0';
    mp_err_set(e, MP_AGENT_NOT_FOUND, NULL, "%s%s", buf, tail);
}

static void assert_encodable(const mp_err *e)
{
    json_t *j = mp_err_json(e);
    assert_non_null(j); /* jansson refuses invalid UTF-8: NULL here would lose the error */
    const char *m = json_string_value(json_object_get(j, "message"));
    assert_non_null(m);
    if (e->message[0])
        assert_string_equal(m, e->message);
    json_decref(j);
}

static void truncation_at_utf8_boundary(void **state)
{
    (void)state;
    mp_err e;
    /* fits exactly: 253 + 2 = 255 bytes */
    set_padded(&e, 253, "\xc3\xa9");
    assert_int_equal(strlen(e.message), 255);
    assert_encodable(&e);
    /* 254 + 2-byte char: snprintf keeps the lead byte only -> dropped */
    set_padded(&e, 254, "\xc3\xa9xyz");
    assert_int_equal(strlen(e.message), 254);
    assert_encodable(&e);
    /* 3-byte char cut after 1 and after 2 bytes */
    set_padded(&e, 254, "\xe2\x82\xac");
    assert_int_equal(strlen(e.message), 254);
    assert_encodable(&e);
    set_padded(&e, 253, "\xe2\x82\xac");
    assert_int_equal(strlen(e.message), 253);
    assert_encodable(&e);
    /* 4-byte char cut after 3 bytes */
    set_padded(&e, 252, "\xf0\x9f\x98\x80");
    assert_int_equal(strlen(e.message), 252);
    assert_encodable(&e);
    set_padded(&e, 251, "\xf0\x9f\x98\x80");
    assert_int_equal(strlen(e.message), 255);
    assert_encodable(&e);
    /* many multi-byte chars: whatever fits, always whole characters */
    char many[700] = "";
    for (int i = 0; i < 200; i++)
        strcat(many, "\xc3\xa9");
    mp_err_set(&e, MP_AGENT_NOT_FOUND, NULL, "Agent not found: %s", many);
    assert_int_equal(strlen(e.message), 17 + 2 * 119); /* 17 ASCII + 119 whole chars = 255 */
    assert_encodable(&e);
}

static void field_truncation_at_utf8_boundary(void **state)
{
    (void)state;
    mp_err e;
    char f[200];
    memset(f, 'p', 94);
    strcpy(f + 94, "\xc3\xa9");
    mp_err_set(&e, MP_INVALID_PARAMS, f, "x");
    assert_int_equal(strlen(e.field), 94);
    json_t *j = mp_err_json(&e);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(json_object_get(j, "data"), "field")), e.field);
    json_decref(j);
}

static void invalid_utf8_is_cut(void **state)
{
    (void)state;
    mp_err e;
    /* a caller's precision can split a character in the middle of the text */
    mp_err_set(&e, MP_AGENT_NOT_FOUND, NULL, "ab%.1s|rest", "\xc3\xa9");
    assert_string_equal(e.message, "ab");
    assert_encodable(&e);
    static const char *bad[] = {
        "\xc0\xaf",         /* overlong '/' */
        "\xe0\x80\xaf",     /* overlong 3-byte */
        "\xed\xa0\x80",     /* UTF-16 surrogate */
        "\xf4\x90\x80\x80", /* above U+10FFFF */
        "\xf5\x80\x80\x80", /* invalid lead */
        "\x80",             /* stray continuation */
        "\xff",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        mp_err_set(&e, MP_AGENT_NOT_FOUND, NULL, "ok %s tail", bad[i]);
        assert_string_equal(e.message, "ok ");
        assert_encodable(&e);
    }
    static const char *good[] = {"\x7f", "\xc2\x80", "\xdf\xbf", "\xe0\xa0\x80", "\xef\xbf\xbf", "\xf0\x90\x80\x80",
                                 "\xf4\x8f\xbf\xbf"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        char want[32];
        snprintf(want, sizeof want, "ok %s tail", good[i]);
        mp_err_set(&e, MP_AGENT_NOT_FOUND, NULL, "ok %s tail", good[i]);
        assert_string_equal(e.message, want);
        assert_encodable(&e);
    }
}

int main(void)
{
    tu_init();
    const struct CMUnitTest tests[] = {
        T(categories_by_range),
        T(set_fills_everything),
        T(vset),
        T(retryable_codes),
        T(json_object_shapes),
        T(truncation_at_utf8_boundary),
        T(field_truncation_at_utf8_boundary),
        T(invalid_utf8_is_cut),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
