/* test_mp_json.c - parameter getters, id charset, depth scan, compact encoder. */
#include "test_util.h"

#include <stdint.h>
#include <stdio.h>

#include "mp_err.h"
#include "mp_json.h"

static void expect_err(int rc, const mp_err *e, const char *field, const char *message)
{
    assert_int_equal(rc, MP_INVALID_PARAMS);
    assert_int_equal(e->code, MP_INVALID_PARAMS);
    assert_string_equal(e->field, field);
    if (message)
        assert_string_equal(e->message, message);
}

/* ---- strings ---------------------------------------------------------------- */

static void get_str(void **state)
{
    (void)state;
    json_t *o = tu_json("{\"s\":\"v\",\"n\":null,\"i\":1,\"e\":\"\"}");
    mp_err e;
    const char *s = (const char *)1;
    assert_int_equal(mp_get_str(o, "s", MP_REQUIRED, &s, &e), 0);
    assert_string_equal(s, "v");
    assert_int_equal(mp_get_str(o, "e", MP_REQUIRED, &s, &e), 0);
    assert_string_equal(s, "");
    /* absent and null are alike */
    assert_int_equal(mp_get_str(o, "missing", MP_OPTIONAL, &s, &e), 0);
    assert_null(s);
    assert_int_equal(mp_get_str(o, "n", MP_OPTIONAL, &s, &e), 0);
    assert_null(s);
    expect_err(mp_get_str(o, "missing", MP_REQUIRED, &s, &e), &e, "missing", "Missing required parameter: missing");
    assert_null(s);
    expect_err(mp_get_str(o, "n", MP_REQUIRED, &s, &e), &e, "n", "Missing required parameter: n");
    expect_err(mp_get_str(o, "i", MP_OPTIONAL, &s, &e), &e, "i", "Parameter i must be a string");
    assert_null(s);
    /* explicit path names nested fields */
    expect_err(mp_get_str_p(o, "i", "filter.i", MP_OPTIONAL, &s, &e), &e, "filter.i", "Parameter filter.i must be a string");
    expect_err(mp_get_str_p(o, "x", "meta.x", MP_REQUIRED, &s, &e), &e, "meta.x", "Missing required parameter: meta.x");
    /* a non-object container has no keys */
    json_t *arr = tu_json("[\"s\"]");
    assert_int_equal(mp_get_str(arr, "s", MP_OPTIONAL, &s, &e), 0);
    assert_null(s);
    assert_int_equal(mp_get_str(NULL, "s", MP_OPTIONAL, &s, &e), 0);
    expect_err(mp_get_str(NULL, "s", MP_REQUIRED, &s, &e), &e, "s", NULL);
    json_decref(arr);
    json_decref(o);
}

/* ---- ids --------------------------------------------------------------------- */

static int id_ok(const char *value_json)
{
    char text[700];
    snprintf(text, sizeof text, "{\"id\":%s}", value_json);
    json_t *o = tu_json(text);
    mp_err e;
    const char *s = (const char *)1;
    int rc = mp_get_id(o, "id", MP_REQUIRED, &s, &e);
    if (rc) {
        assert_null(s);
        assert_int_equal(rc, MP_INVALID_PARAMS);
        assert_string_equal(e.field, "id");
    } else {
        assert_non_null(s);
    }
    json_decref(o);
    return rc == 0;
}

static void id_charset(void **state)
{
    (void)state;
    assert_true(id_ok("\"agent-7\""));
    assert_true(id_ok("\"a.b_c:d@e~f+g=h-1\""));
    assert_true(id_ok("\"01M7ZCQXJA7J291RG2K8E4WFPP\""));
    assert_true(id_ok("\"conv-01M7ZCQXJA7J291RG2K8E4WFPP\""));
    assert_true(id_ok("\"x\""));
    assert_true(id_ok("\"\xd0\xb0\xd0\xb3\xd0\xb5\xd0\xbd\xd1\x82\"")); /* UTF-8 "агент" */
    assert_true(id_ok("\"\\u00e9\""));
    assert_true(id_ok("\"\xf0\x9f\xa4\x96-bot\""));

    static const char *bad[] = {"\"a/b\"", "\"a#b\"", "\"a*\"", "\"50%\"", "\"a?b\"", "\"a b\"", "\"a\\\"b\"",
                                "\"a\\\\b\"", "\"a'b\"", "\"a\\tb\"", "\"a\\nb\"", "\"\\u0001\"", "\"\\u007f\"",
                                "\"\"", "\"a,b\"", "\"a;b\"", "\"<a>\"", "\"a|b\"", "\"{a}\"", "\"a&b\"", "\"a$\""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (id_ok(bad[i]))
            fail_msg("id %s accepted", bad[i]);

    /* not a string at all: the string getter's message */
    json_t *o = tu_json("{\"agentId\":5}");
    mp_err e;
    const char *s;
    expect_err(mp_get_id(o, "agentId", MP_OPTIONAL, &s, &e), &e, "agentId", "Parameter agentId must be a string");
    expect_err(mp_get_id(o, "other", MP_REQUIRED, &s, &e), &e, "other", "Missing required parameter: other");
    assert_int_equal(mp_get_id(o, "other", MP_OPTIONAL, &s, &e), 0);
    assert_null(s);
    json_decref(o);

    o = tu_json("{\"agentId\":\"a/b\"}");
    expect_err(mp_get_id(o, "agentId", MP_REQUIRED, &s, &e), &e, "agentId",
               "Parameter agentId is not a valid id (1-256 characters of A-Z a-z 0-9 . _ : @ ~ + = -)");
    json_decref(o);
}

static void id_length(void **state)
{
    (void)state;
    char v[300];
    v[0] = '"';
    memset(v + 1, 'a', 256);
    strcpy(v + 257, "\"");
    assert_true(id_ok(v)); /* 256 bytes: the maximum */
    memset(v + 1, 'a', 257);
    strcpy(v + 258, "\"");
    assert_false(id_ok(v)); /* 257 */
    /* the limit is in bytes: 128 two-byte characters fit, 129 do not */
    char u[600] = "\"";
    for (int i = 0; i < 128; i++)
        strcat(u, "\xc3\xa9");
    strcat(u, "\"");
    assert_true(id_ok(u));
    u[strlen(u) - 1] = '\0';
    strcat(u, "\xc3\xa9\"");
    assert_false(id_ok(u));

    assert_int_equal(mp_id_valid(NULL), 0);
    assert_int_equal(mp_id_valid(""), 0);
    assert_int_equal(mp_id_valid("ok"), 1);
    assert_int_equal(mp_id_valid("bad\x1f"), 0);
}

/* ---- integers ---------------------------------------------------------------- */

static void get_int(void **state)
{
    (void)state;
    json_t *o = tu_json("{\"i\":42,\"neg\":-7,\"big\":9223372036854775807,\"r\":5.0,\"half\":5.5,\"huge\":1e300,"
                        "\"nhuge\":-1e300,\"s\":\"5\",\"b\":true,\"n\":null,\"ts\":1795276113889}");
    mp_err e;
    long long v = 99;
    assert_int_equal(mp_get_int(o, "i", MP_REQUIRED, &v, &e), 0);
    assert_int_equal(v, 42);
    assert_int_equal(mp_get_int(o, "neg", MP_REQUIRED, &v, &e), 0);
    assert_int_equal(v, -7);
    assert_int_equal(mp_get_int(o, "big", MP_REQUIRED, &v, &e), 0);
    assert_true(v == 9223372036854775807LL);
    assert_int_equal(mp_get_int(o, "ts", MP_REQUIRED, &v, &e), 0);
    assert_true(v == 1795276113889LL);
    assert_int_equal(mp_get_int(o, "r", MP_REQUIRED, &v, &e), 0); /* integral real */
    assert_int_equal(v, 5);
    v = 99;
    assert_int_equal(mp_get_int(o, "missing", MP_OPTIONAL, &v, &e), 0);
    assert_int_equal(v, 99); /* untouched when absent */
    assert_int_equal(mp_get_int(o, "n", MP_OPTIONAL, &v, &e), 0);
    assert_int_equal(v, 99);
    expect_err(mp_get_int(o, "missing", MP_REQUIRED, &v, &e), &e, "missing", "Missing required parameter: missing");
    expect_err(mp_get_int(o, "half", MP_REQUIRED, &v, &e), &e, "half", "Parameter half must be an integer");
    expect_err(mp_get_int(o, "huge", MP_REQUIRED, &v, &e), &e, "huge", NULL); /* no UB cast */
    expect_err(mp_get_int(o, "nhuge", MP_REQUIRED, &v, &e), &e, "nhuge", NULL);
    expect_err(mp_get_int(o, "s", MP_REQUIRED, &v, &e), &e, "s", NULL);
    expect_err(mp_get_int(o, "b", MP_REQUIRED, &v, &e), &e, "b", NULL);
    assert_int_equal(v, 99);
    json_decref(o);
}

static void get_int_range(void **state)
{
    (void)state;
    json_t *o = tu_json("{\"limit\":50,\"lo\":1,\"hi\":1000,\"zero\":0,\"over\":1001,\"s\":\"x\",\"n\":null}");
    mp_err e;
    long long v = 100;
    assert_int_equal(mp_get_int_range(o, "limit", 1, 1000, &v, &e), 0);
    assert_int_equal(v, 50);
    assert_int_equal(mp_get_int_range(o, "lo", 1, 1000, &v, &e), 0);
    assert_int_equal(v, 1);
    assert_int_equal(mp_get_int_range(o, "hi", 1, 1000, &v, &e), 0);
    assert_int_equal(v, 1000);
    v = 100;
    expect_err(mp_get_int_range(o, "zero", 1, 1000, &v, &e), &e, "zero", "Parameter zero must be between 1 and 1000");
    assert_int_equal(v, 100);
    expect_err(mp_get_int_range(o, "over", 1, 1000, &v, &e), &e, "over", "Parameter over must be between 1 and 1000");
    assert_int_equal(v, 100);
    expect_err(mp_get_int_range(o, "s", 1, 1000, &v, &e), &e, "s", "Parameter s must be an integer");
    /* absent / null keep the caller's default, even a sentinel outside the range */
    v = 100;
    assert_int_equal(mp_get_int_range(o, "missing", 1, 1000, &v, &e), 0);
    assert_int_equal(v, 100);
    v = -1;
    assert_int_equal(mp_get_int_range(o, "missing", 1, 1000, &v, &e), 0);
    assert_int_equal(v, -1);
    assert_int_equal(mp_get_int_range(o, "n", 1, 1000, &v, &e), 0);
    assert_int_equal(v, -1);
    json_decref(o);
}

/* ---- bool / obj / arr --------------------------------------------------------- */

static void get_bool(void **state)
{
    (void)state;
    json_t *o = tu_json("{\"t\":true,\"f\":false,\"n\":null,\"s\":\"true\",\"i\":1}");
    mp_err e;
    int b = 7;
    assert_int_equal(mp_get_bool(o, "t", &b, &e), 0);
    assert_int_equal(b, 1);
    assert_int_equal(mp_get_bool(o, "f", &b, &e), 0);
    assert_int_equal(b, 0);
    b = 7;
    assert_int_equal(mp_get_bool(o, "missing", &b, &e), 0);
    assert_int_equal(b, 7);
    assert_int_equal(mp_get_bool(o, "n", &b, &e), 0);
    assert_int_equal(b, 7);
    expect_err(mp_get_bool(o, "s", &b, &e), &e, "s", "Parameter s must be a boolean");
    expect_err(mp_get_bool(o, "i", &b, &e), &e, "i", "Parameter i must be a boolean");
    assert_int_equal(b, 7);
    json_decref(o);
}

static void get_obj_arr(void **state)
{
    (void)state;
    json_t *o = tu_json("{\"o\":{\"k\":1},\"a\":[1,\"x\"],\"n\":null,\"s\":\"x\"}");
    mp_err e;
    json_t *v = (json_t *)1;
    assert_int_equal(mp_get_obj(o, "o", MP_REQUIRED, &v, &e), 0);
    assert_ptr_equal(v, json_object_get(o, "o"));
    assert_int_equal(mp_get_obj(o, "n", MP_OPTIONAL, &v, &e), 0);
    assert_null(v);
    expect_err(mp_get_obj(o, "n", MP_REQUIRED, &v, &e), &e, "n", "Missing required parameter: n");
    expect_err(mp_get_obj(o, "a", MP_OPTIONAL, &v, &e), &e, "a", "Parameter a must be an object");
    assert_null(v);
    expect_err(mp_get_obj(o, "s", MP_OPTIONAL, &v, &e), &e, "s", "Parameter s must be an object");

    assert_int_equal(mp_get_arr(o, "a", MP_REQUIRED, &v, &e), 0);
    assert_ptr_equal(v, json_object_get(o, "a"));
    assert_int_equal(mp_get_arr(o, "missing", MP_OPTIONAL, &v, &e), 0);
    assert_null(v);
    expect_err(mp_get_arr(o, "missing", MP_REQUIRED, &v, &e), &e, "missing", "Missing required parameter: missing");
    expect_err(mp_get_arr(o, "o", MP_OPTIONAL, &v, &e), &e, "o", "Parameter o must be an array");
    json_decref(o);
}

static void get_str_arr(void **state)
{
    (void)state;
    json_t *o = tu_json("{\"ok\":[\"a\",\"b\"],\"empty\":[],\"mixed\":[\"a\",1],\"nul\":[null],\"s\":\"a\",\"n\":null}");
    mp_err e;
    json_t *v = (json_t *)1;
    assert_int_equal(mp_get_str_arr(o, "ok", MP_REQUIRED, &v, &e), 0);
    assert_int_equal(json_array_size(v), 2);
    assert_int_equal(mp_get_str_arr(o, "empty", MP_REQUIRED, &v, &e), 0);
    assert_non_null(v);
    assert_int_equal(json_array_size(v), 0);
    assert_int_equal(mp_get_str_arr(o, "missing", MP_OPTIONAL, &v, &e), 0);
    assert_null(v);
    assert_int_equal(mp_get_str_arr(o, "n", MP_OPTIONAL, &v, &e), 0);
    assert_null(v);
    expect_err(mp_get_str_arr(o, "missing", MP_REQUIRED, &v, &e), &e, "missing", "Missing required parameter: missing");
    expect_err(mp_get_str_arr(o, "mixed", MP_OPTIONAL, &v, &e), &e, "mixed", "Parameter mixed must be an array of strings");
    assert_null(v);
    expect_err(mp_get_str_arr(o, "nul", MP_OPTIONAL, &v, &e), &e, "nul", NULL);
    expect_err(mp_get_str_arr(o, "s", MP_OPTIONAL, &v, &e), &e, "s", "Parameter s must be an array of strings");
    expect_err(mp_get_str_arr_p(o, "mixed", "filter.scopes", &v, &e), &e, "filter.scopes",
               "Parameter filter.scopes must be an array of strings");
    assert_int_equal(mp_get_str_arr_p(o, "ok", "filter.ok", &v, &e), 0);
    assert_int_equal(json_array_size(v), 2);
    json_decref(o);
}

/* ---- depth scanner ------------------------------------------------------------ */

static int depth(const char *s, int max)
{
    return mp_json_depth(s, strlen(s), max);
}

static void depth_scan(void **state)
{
    (void)state;
    assert_int_equal(depth("", 10), 0);
    assert_int_equal(depth("1", 10), 0);
    assert_int_equal(depth("\"[[[\"", 10), 0);
    assert_int_equal(depth("{}", 10), 1);
    assert_int_equal(depth("[[]]", 10), 2);
    assert_int_equal(depth("[[],[[]],[]]", 10), 3);
    assert_int_equal(depth("{\"a\":[{\"b\":[1]}],\"c\":{}}", 10), 4);
    /* brackets inside strings do not count */
    assert_int_equal(depth("{\"a\":\"[[[{{{\"}", 10), 1);
    assert_int_equal(depth("{\"[{\":\"}]\"}", 10), 1);
    /* escaped quotes do not end the string */
    assert_int_equal(depth("{\"a\":\"x\\\"[[[[\"}", 10), 1);
    assert_int_equal(depth("{\"a\":\"\\\\\\\"[[\"}", 10), 1);
    /* an escaped backslash does: the bracket after it is real */
    assert_int_equal(depth("[\"\\\\\",[[1]]]", 10), 3);
    /* early stop at max + 1 */
    assert_int_equal(depth("[[[[[[[[[[", 3), 4);
    assert_int_equal(depth("[[[", 3), 3);
    /* stray closers never go negative */
    assert_int_equal(depth("]]]}}}[", 10), 1);
    /* only len bytes are scanned */
    assert_int_equal(mp_json_depth("[[[[", 2, 10), 2);
    /* an unterminated string swallows the rest */
    assert_int_equal(depth("[\"[[[[", 10), 1);
    /* trailing backslash at the end of the buffer */
    assert_int_equal(mp_json_depth("[\"\\", 3, 10), 1);
}

/* ---- encoder ------------------------------------------------------------------ */

static void dump_headroom_and_nul(void **state)
{
    (void)state;
    json_t *j = tu_json("{\"ts\":1795276113889,\"r\":1.5,\"s\":\"\xc3\xa9\",\"a\":[true,null]}");
    const char *want = "{\"ts\":1795276113889,\"r\":1.5,\"s\":\"\xc3\xa9\",\"a\":[true,null]}";
    size_t len = 12345;
    char *p = mp_dump(j, 16, &len);
    assert_non_null(p);
    assert_int_equal(len, strlen(want));
    assert_memory_equal(p + 16, want, len);
    assert_int_equal(p[16 + len], '\0');
    memset(p, 0xAB, 16); /* the headroom is ours to write (ASan checks the bounds) */
    free(p);

    p = mp_dump(j, 0, &len);
    assert_non_null(p);
    assert_string_equal(p, want);
    free(p);
    json_decref(j);

    /* scalars encode too (JSON_ENCODE_ANY) */
    j = json_string("x");
    p = mp_dump(j, 4, &len);
    assert_int_equal(len, 3);
    assert_string_equal(p + 4, "\"x\"");
    free(p);
    json_decref(j);

    /* bigger than the first block: the buffer grows and stays exact */
    j = json_array();
    for (int i = 0; i < 3000; i++)
        json_array_append_new(j, json_integer(i));
    char *ref = json_dumps(j, JSON_COMPACT);
    p = mp_dump(j, 10, &len);
    assert_non_null(p);
    assert_int_equal(len, strlen(ref));
    assert_string_equal(p + 10, ref);
    free(p);
    tu_free(ref); /* json_dumps allocates through the jansson allocator */
    json_decref(j);
}

static void dump_one_huge_chunk(void **state)
{
    (void)state;
    /* one string far larger than twice the first block: the growth loop doubles repeatedly */
    char *big = malloc(5001);
    assert_non_null(big);
    memset(big, 'z', 5000);
    big[5000] = '\0';
    json_t *j = json_string(big);
    size_t len = 0;
    char *p = mp_dump(j, 32, &len);
    assert_non_null(p);
    assert_int_equal(len, 5002);
    assert_int_equal(p[32], '"');
    assert_memory_equal(p + 33, big, 5000);
    assert_int_equal(p[32 + 5001], '"');
    assert_int_equal(p[32 + 5002], '\0');
    free(p);
    free(big);
    json_decref(j);
}

/* mp_dump is our own serializer; it must produce exactly what jansson's
 * json_dumps(JSON_COMPACT | JSON_ENCODE_ANY) produces, and fail where it fails. */
static void dump_same_as_jansson_one(json_t *j)
{
    size_t len = 0;
    char *mine = mp_dump(j, 3, &len);
    char *ref = json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!ref) {
        assert_null(mine);
        return;
    }
    assert_non_null(mine);
    if (len != strlen(ref) || memcmp(mine + 3, ref, len)) /* strlen: refs here never contain a NUL */
        fail_msg("mp_dump: %s\njansson: %s", mine + 3, ref);
    free(mine);
    tu_free(ref);
}

static uint32_t rnd_state = 12345;
static uint32_t rnd(void)
{
    rnd_state = rnd_state * 1103515245u + 12345u;
    return rnd_state >> 8;
}

static json_t *rnd_string(void)
{
    static const char *const pieces[] = {"a", "Z", "/", "\"", "\\", "\b", "\f", "\n", "\r", "\t", "\x01", "\x1f",
                                         "\x7f", " ", "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80", "<tag>",
                                         "\xed\x9f\xbf", "\xef\xbf\xbf", "\xf4\x8f\xbf\xbf"};
    char buf[128];
    size_t n = 0, k = rnd() % 8;
    for (size_t i = 0; i < k; i++) {
        const char *pc = pieces[rnd() % (sizeof pieces / sizeof *pieces)];
        size_t m = strlen(pc);
        memcpy(buf + n, pc, m);
        n += m;
    }
    return json_stringn(buf, n);
}

static json_t *rnd_value(int depth)
{
    switch (rnd() % (depth > 5 ? 6 : 8)) {
    case 0: return json_null();
    case 1: return rnd() & 1 ? json_true() : json_false();
    case 2: {
        static const json_int_t ints[] = {0, 1, -1, 9, 10, -10, 1795276113889, INT64_MAX, INT64_MIN};
        return json_integer(rnd() % 2 ? ints[rnd() % 9] : (json_int_t)rnd() - (1 << 23));
    }
    case 3: {
        static const double reals[] = {0.0, -0.0, 0.1, 1.5, -2.25, 1e300, 1e-300, 123456789.0, 1e22, 5e-324};
        return json_real(reals[rnd() % 10]);
    }
    case 4:
    case 5: return rnd_string();
    case 6: {
        json_t *a = json_array();
        for (int i = (int)(rnd() % 5); i > 0; i--)
            json_array_append_new(a, rnd_value(depth + 1));
        return a;
    }
    default: {
        json_t *o = json_object();
        for (int i = (int)(rnd() % 5); i > 0; i--) {
            json_t *k = rnd_string();
            json_object_set_new(o, json_string_value(k), rnd_value(depth + 1));
            json_decref(k);
        }
        return o;
    }
    }
}

static void dump_same_as_jansson(void **state)
{
    (void)state;
    static const char *const texts[] = {
        "{}", "[]", "{\"a\":{}}", "[[],[{}]]", "\"\"", "0", "-0", "1.0", "1e5", "-1.5e-7", "true", "null",
        "{\"key\":\"v\\u0000al\"}", "\"\\u0001\\u001f\\u007f\\/\"", "\"\\ud83d\\ude00\"",
        "{\"b\":1,\"a\":2,\"c\":[1,2,{\"z\":null}]}", "9223372036854775807", "-9223372036854775808",
        "[1.7976931348623157e308,2.2250738585072014e-308,100000000000000000000.0]",
    };
    for (size_t i = 0; i < sizeof texts / sizeof *texts; i++) {
        json_t *j = json_loads(texts[i], JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
        assert_non_null(j);
        if (strstr(texts[i], "\\u0000")) { /* NUL inside: compare lengths and bytes */
            size_t len, rl = json_dumpb(j, NULL, 0, JSON_COMPACT | JSON_ENCODE_ANY);
            char *mine = mp_dump(j, 0, &len), ref[128];
            assert_int_equal(json_dumpb(j, ref, sizeof ref, JSON_COMPACT | JSON_ENCODE_ANY), rl);
            assert_int_equal(len, rl);
            assert_memory_equal(mine, ref, rl);
            free(mine);
        } else {
            dump_same_as_jansson_one(j);
        }
        json_decref(j);
    }
    for (int i = 0; i < 3000; i++) {
        json_t *j = rnd_value(0);
        dump_same_as_jansson_one(j);
        json_decref(j);
    }
    /* invalid UTF-8 (only constructible unchecked): both refuse */
    static const char *const bad[] = {"\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xe2\x82", "\x80", "\xff"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        json_t *j = json_stringn_nocheck(bad[i], strlen(bad[i]));
        dump_same_as_jansson_one(j);
        json_decref(j);
    }
    /* a cycle: jansson's loop check and our depth limit both refuse */
    json_t *a = json_array(), *b = json_array();
    json_array_append(a, b);
    json_array_append(b, a);
    size_t len;
    assert_null(mp_dump(a, 0, &len));
    json_array_clear(b);
    json_decref(a);
    json_decref(b);
}

/* mp_json_parse against json_loadb(JSON_REJECT_DUPLICATES | JSON_DECODE_ANY):
 * the same verdict, and on acceptance the same tree (compared through mp_dump,
 * which shows types, values and key order). */
static void parse_same_one(const char *t, size_t n)
{
    json_t *mine = mp_json_parse(t, n, 100);
    json_t *ref = json_loadb(t, n, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, NULL);
    if (!mine != !ref)
        fail_msg("verdicts differ (mine %s, jansson %s) on [%.*s]", mine ? "accepts" : "refuses",
                 ref ? "accepts" : "refuses", (int)n, t);
    if (mine) {
        size_t a, b;
        char *da = mp_dump(mine, 0, &a), *db = mp_dump(ref, 0, &b);
        assert_non_null(da);
        assert_non_null(db);
        if (a != b || memcmp(da, db, a))
            fail_msg("trees differ on [%.*s]: %s vs %s", (int)n, t, da, db);
        free(da);
        free(db);
    }
    json_decref(mine);
    json_decref(ref);
}

static void parse_same_as_jansson(void **state)
{
    (void)state;
    static const char *const texts[] = {
        /* accepted */
        "{}", "[]", " {\"a\" : [ 1 , 2 ] } \n", "\"\"", "0", "-0", "-0.0", "1.0", "1e5", "1E+5", "-1.5e-7", "2e-400",
        "true", "false", "null", "9223372036854775807", "-9223372036854775808", "[1.7976931348623157e308]",
        "\"\\u00e9\\u20AC\\ud83d\\ude00\\/\\b\\f\\n\\r\\t\\\"\\\\\"", "{\"k\\u0041\":1,\"kA\\u0042\":2}",
        "\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\xf4\x8f\xbf\xbf\"", "{\"a\":{\"b\":{\"c\":[[[]]]}}}",
        "[\"x\\\"y\",\"\\\\\",\"a\\nb\"]", "\t\r\n 42 \t\r\n",
        /* refused */
        "", " ", "{", "}", "[", "[1,]", "[,1]", "{\"a\":1,}", "{\"a\" 1}", "{a:1}", "{\"a\":1,\"a\":2}",
        "{\"\\u0061\":1,\"a\":2}", "01", "-", "-a", "1.", ".5", "1e", "1e+", "+1", "0x10", "NaN", "Infinity",
        "1e400", "-1e400", "9223372036854775808", "-9223372036854775809", "18446744073709551616", "tru", "truex",
        "nul", "True", "[true1]", "1 2", "{} {}", "\"abc", "\"a\x01\"", "\"\\x\"", "\"\\u12\"", "\"\\u12g4\"",
        "\"\\ud800\"", "\"\\udc00\"", "\"\\ud800\\u0041\"", "\"\\ud800x\"", "\"\\u0000\"", "{\"\\u0000\":1}",
        "\"\xc0\xaf\"", "\"\xed\xa0\x80\"", "\"\xf4\x90\x80\x80\"", "\"\xe2\x82\"", "\"\x80\"", "\"\xff\"",
        "\"\xe0\x9f\xbf\"", "\"\xf0\x8f\xbf\xbf\"", "\xef\xbb\xbf{}", "[1]x", "{\"a\":}", "[\"a\":1]", "{1:2}",
    };
    for (size_t i = 0; i < sizeof texts / sizeof *texts; i++)
        parse_same_one(texts[i], strlen(texts[i]));
    parse_same_one("[1,\0]", 5);
    parse_same_one("\"a\0b\"", 5);
    parse_same_one("{} \0", 4);
    /* random trees in three spellings (compact, indented, \u-escaped), then mutated */
    for (int i = 0; i < 3000; i++) {
        json_t *j = rnd_value(0);
        static const size_t flags[] = {JSON_COMPACT, JSON_INDENT(2), JSON_ENSURE_ASCII | JSON_ESCAPE_SLASH};
        char *t = json_dumps(j, flags[i % 3] | JSON_ENCODE_ANY);
        json_decref(j);
        if (!t)
            continue; /* rnd_string can make unencodable strings */
        size_t n = strlen(t);
        parse_same_one(t, n);
        for (int m = 0; m < 4 && n; m++) {
            char *u = malloc(n + 1);
            memcpy(u, t, n + 1);
            size_t at = rnd() % n, len = n;
            switch (rnd() % 4) {
            case 0: u[at] = (char)(rnd() & 0xff); break;
            case 1: len = at; break; /* truncate */
            case 2: u[at] = "\"\\{}[],:0-eu"[rnd() % 12]; break;
            default: memmove(u + at, u + at + 1, n - at); len = n - 1; break; /* delete a byte */
            }
            parse_same_one(u, len);
            free(u);
        }
        tu_free(t);
    }
    /* depth: max_depth refuses, json_loadb's own limit is never exceeded */
    char deep[300];
    memset(deep, '[', 150);
    memset(deep + 150, ']', 150);
    json_t *d = mp_json_parse(deep, 300, 150);
    assert_non_null(d);
    json_decref(d);
    assert_null(mp_json_parse(deep, 300, 149));
}

static void set_opt_copy_key(void **state)
{
    (void)state;
    json_t *o = json_object();
    mp_set_opt(o, "a", NULL);
    assert_int_equal(json_object_size(o), 0);
    mp_set_opt(o, "a", json_integer(1));
    tu_assert_dump(o, "{\"a\":1}");

    json_t *src = tu_json("{\"x\":{\"k\":1},\"n\":null}");
    mp_copy_key(o, src, "x");
    mp_copy_key(o, src, "n");
    mp_copy_key(o, src, "missing");
    tu_assert_dump(o, "{\"a\":1,\"x\":{\"k\":1}}");
    assert_ptr_equal(json_object_get(o, "x"), json_object_get(src, "x")); /* shared, not copied */
    json_decref(src);
    tu_assert_dump_new(o, "{\"a\":1,\"x\":{\"k\":1}}");
}

int main(void)
{
    tu_init();
    const struct CMUnitTest tests[] = {
        T(get_str),          T(id_charset), T(id_length),  T(get_int),
        T(get_int_range),    T(get_bool),   T(get_obj_arr), T(get_str_arr),
        T(depth_scan),       T(dump_headroom_and_nul),     T(dump_one_huge_chunk), T(dump_same_as_jansson),
        T(parse_same_as_jansson), T(set_opt_copy_key),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
