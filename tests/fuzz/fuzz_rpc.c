/* fuzz_rpc.c - libFuzzer harness for the protocol library.
 *
 * bytes -> mp_rpc_parse -> (requests/notifications) mp_addr_parse(params.to),
 * mp_filter_compile(params.filter) + mp_filter_match against synthetic events
 * (plus one event taken from params.event), a few getters -> a result or
 * error envelope -> mp_dump.
 *
 * Oracles beyond ASan/UBSan (each aborts on violation):
 *   - every reply envelope is encodable (an error object jansson refuses would be lost);
 *   - the encoded reply parses back as a response carrying the same id;
 *   - parse errors carry -32700/-32600/-32602, and -32700 never carries an id;
 *   - address errors name a field under "to", filter errors one under "filter";
 *   - compiling the same filter twice gives the same match results;
 *   - mp_dump writes exactly what json_dumps(JSON_COMPACT | JSON_ENCODE_ANY) does;
 *   - mp_json_parse accepts exactly what json_loadb(JSON_REJECT_DUPLICATES |
 *     JSON_DECODE_ANY) accepts, with an equal tree.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "mp_addr.h"
#include "mp_err.h"
#include "mp_filter.h"
#include "mp_json.h"
#include "mp_rpc.h"
#include "mp_ulid.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                                    \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            fprintf(stderr, "fuzz_rpc: check failed at line %d: %s\n", __LINE__, #cond);                              \
            abort();                                                                                                   \
        }                                                                                                              \
    } while (0)

static json_t *g_events[10];
static const char *g_types[10];
static const char *g_sources[10];
static json_t *g_env_json;

static const char *env_role(void *arg, const char *agent_id)
{
    (void)arg;
    if (!strncmp(agent_id, "agent-a", 7))
        return "worker";
    if (!strncmp(agent_id, "agent-b", 7))
        return "planner";
    return NULL;
}

static json_t *env_environment(void *arg, const char *agent_id)
{
    (void)arg;
    return strncmp(agent_id, "agent", 5) ? NULL : g_env_json;
}

static const mp_filter_env g_env = {env_role, env_environment, NULL};

static json_t *load(const char *text)
{
    json_t *j = json_loads(text, 0, NULL);
    CHECK(j);
    return j;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    json_object_seed(0x5eed); /* deterministic hashing: reproducible runs */
    static const struct {
        const char *type, *source, *data;
    } ev[] = {
        {"agent_registered", "agent-a", "{\"agentId\":\"agent-a\",\"role\":\"worker\",\"metadata\":{\"team\":\"x\"}}"},
        {"message_delivered", "agent-b",
         "{\"messageId\":\"m1\",\"correlationId\":\"corr-1\",\"deliveredTo\":[\"agent-a\"],"
         "\"message\":{\"id\":\"m1\",\"to\":{\"scope\":\"scope-team\"},\"meta\":{\"priority\":\"high\","
         "\"correlationId\":\"corr-1\"}}}"},
        {"message_sent", "participant-1", "{\"messageId\":\"m2\",\"to\":{\"scope\":\"s\"},\"priority\":\"low\"}"},
        {"scope_member_joined", "agent-c", "{\"scopeId\":\"scope-team\",\"agentId\":\"agent-c\"}"},
        {"mail.turn.added", "agent-a",
         "{\"conversationId\":\"conv-1\",\"turn\":{\"threadId\":\"t1\",\"participant\":\"agent-a\","
         "\"contentType\":\"text\",\"metadata\":{\"handoff_target\":\"agent-b\"}}}"},
        {"mail.participant.joined", NULL, "{\"conversationId\":\"conv-1\",\"participant\":{\"id\":\"p1\"}}"},
        {"mail.created", "agent-b", "{\"conversationId\":\"conv-2\",\"createdBy\":\"agent-b\"}"},
        {"trajectory.checkpoint", "agent-a", "{\"agentId\":\"agent-a\"}"},
        {"agent.state.changed", NULL, NULL},
    };
    for (size_t i = 0; i < sizeof ev / sizeof ev[0]; i++) {
        g_types[i] = ev[i].type;
        g_sources[i] = ev[i].source;
        g_events[i] = ev[i].data ? load(ev[i].data) : NULL;
    }
    g_env_json = load("{\"os\":{\"type\":\"linux\"},\"region\":\"eu\"}");
    return 0;
}

/* Exercise the getters on whatever params carry; results go into `result`. */
static void getters(json_t *params, json_t *result)
{
    mp_err e;
    const char *s;
    long long n = 100;
    int b = 0;
    json_t *v;
    int rc = mp_get_id(params, "agentId", MP_OPTIONAL, &s, &e);
    if (rc)
        CHECK(rc == MP_INVALID_PARAMS && e.code == rc && !strcmp(e.field, "agentId") && !s);
    else if (s)
        CHECK(mp_id_valid(s));
    if (!mp_get_int_range(params, "limit", 1, 1000, &n, &e))
        CHECK(n >= 1 && n <= 1000);
    (void)mp_get_bool(params, "excludeOwnEvents", &b, &e);
    (void)mp_get_str_arr(params, "eventTypes", MP_OPTIONAL, &v, &e);
    (void)mp_get_obj(params, "meta", MP_OPTIONAL, &v, &e);
    if (!mp_get_str(params, "afterEventId", MP_OPTIONAL, &s, &e) && s) {
        int64_t t = mp_ulid_time(s);
        CHECK(t >= -1 && t < (1LL << 48));
    }
    json_object_set_new(result, "limit", json_integer(n));
}

static int match_all(const mp_filter *f, json_t *own_event, int *bits)
{
    int count = 0;
    for (size_t i = 0; i < sizeof g_events / sizeof g_events[0] && g_types[i]; i++) {
        mp_event_view ev = {g_types[i], g_sources[i], g_events[i]};
        int m = mp_filter_match(f, &ev, &g_env);
        CHECK(m == 0 || m == 1);
        bits[i] = m;
        count += m;
    }
    if (own_event) {
        mp_event_view ev = {json_string_value(json_object_get(own_event, "type")),
                            json_string_value(json_object_get(own_event, "source")),
                            json_object_get(own_event, "data")};
        mp_event_view none = {NULL, NULL, NULL};
        bits[9] = mp_filter_match(f, ev.type ? &ev : &none, &g_env);
        count += bits[9];
        (void)mp_filter_match(f, &ev, NULL);
    }
    return count;
}

static json_t *handle(const mp_msg *m, mp_err *err)
{
    json_t *result = json_object();
    json_t *p = m->params;

    /* address */
    json_t *to = json_object_get(p, "to");
    if (to) {
        mp_addr a;
        mp_err ae;
        if (mp_addr_parse(to, &a, &ae) == 0) {
            json_object_set_new(result, "kind", json_string(mp_addr_kind_name(a.kind)));
            CHECK(strcmp(mp_addr_kind_name(a.kind), "?") != 0);
            if (a.id)
                json_object_set_new(result, "id", json_string(a.id));
            if (a.kind == MP_ADDR_AGENTS)
                CHECK(json_array_size(a.list) > 0);
            CHECK(a.depth >= 0 && a.depth <= 1000);
        } else {
            CHECK(ae.code == MP_INVALID_PARAMS);
            CHECK(!strncmp(ae.field, "to", 2));
            *err = ae;
        }
    }

    /* filter */
    json_t *filter = json_object_get(p, "filter");
    mp_filter *f = NULL, *g = NULL;
    mp_err fe;
    if (mp_filter_compile(filter, &f, &fe) == 0) {
        CHECK(f);
        CHECK(mp_filter_compile(filter, &g, &fe) == 0);
        int b1[10] = {0}, b2[10] = {0};
        json_t *own = json_object_get(p, "event");
        if (!json_is_object(own))
            own = NULL;
        int n1 = match_all(f, own, b1), n2 = match_all(g, own, b2);
        CHECK(n1 == n2 && !memcmp(b1, b2, sizeof b1));
        json_object_set_new(result, "matched", json_integer(n1));
        const char *conv = mp_filter_conversation(f);
        if (conv)
            json_object_set_new(result, "conversationId", json_string(conv));
        mp_filter_free(f);
        mp_filter_free(g);
    } else {
        CHECK(!f);
        CHECK(fe.code == MP_INVALID_PARAMS);
        CHECK(!strncmp(fe.field, "filter", 6));
        if (!err->code)
            *err = fe;
    }

    getters(p, result);

    /* name checks on the method */
    (void)mp_id_valid(m->method);
    json_t *ty = json_object_get(p, "type");
    if (json_is_string(ty))
        (void)mp_event_type_match(json_string_value(ty), m->method);
    return result;
}

/* mp_dump (our serializer) == json_dumps(JSON_COMPACT | JSON_ENCODE_ANY) for any
 * value jansson can decode, or both refuse. */
static void check_dump_matches_jansson(const uint8_t *data, size_t size)
{
    json_t *j = json_loadb((const char *)data, size, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
    if (!j)
        return;
    size_t len = 0, rl = json_dumpb(j, NULL, 0, JSON_COMPACT | JSON_ENCODE_ANY);
    char *mine = mp_dump(j, 0, &len);
    if (rl == 0) {
        CHECK(mine == NULL);
    } else {
        char *ref = malloc(rl);
        CHECK(ref && json_dumpb(j, ref, rl, JSON_COMPACT | JSON_ENCODE_ANY) == rl);
        CHECK(mine && len == rl && !memcmp(mine, ref, rl));
        free(ref);
    }
    free(mine);
    json_decref(j);
}

/* mp_json_parse (our parser) accepts what json_loadb(JSON_REJECT_DUPLICATES |
 * JSON_DECODE_ANY) accepts, with an equal tree (same dump); jansson may accept
 * more only past our depth limit or around a NUL byte. */
static void check_parse_matches_jansson(const uint8_t *data, size_t size)
{
    json_t *mine = mp_json_parse((const char *)data, size, 4096);
    json_t *ref = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, NULL);
    if (mine) {
        CHECK(ref);
        size_t a = 0, b = 0;
        char *da = mp_dump(mine, 0, &a), *db = mp_dump(ref, 0, &b);
        CHECK(da && db && a == b && !memcmp(da, db, a));
        free(da);
        free(db);
    } else if (ref) { /* only past our depth limit, or jansson's lost-NUL quirk (mp_json.h) */
        CHECK(mp_json_depth((const char *)data, size, 4096) >= 2047 || memchr(data, 0, size));
    }
    json_decref(mine);
    json_decref(ref);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    mp_limits lim = MP_LIMITS_DEFAULT;
    mp_msg m;
    json_t *id = NULL;
    mp_err e;
    mp_err_clear(&e);
    json_t *reply = NULL, *want_id = NULL;

    (void)mp_json_depth((const char *)data, size, lim.max_depth);
    check_dump_matches_jansson(data, size);
    check_parse_matches_jansson(data, size);
    int rc = mp_rpc_parse((const char *)data, size, &lim, &m, &id, &e);
    if (rc) {
        CHECK(rc == e.code);
        CHECK(rc == MP_PARSE_ERROR || rc == MP_INVALID_REQUEST || rc == MP_INVALID_PARAMS);
        if (rc == MP_PARSE_ERROR)
            CHECK(id == NULL);
        CHECK(m.root == NULL);
        reply = mp_rpc_error(id, &e);
        want_id = id; /* owned */
    } else if (m.kind == MP_KIND_RESPONSE) {
        CHECK(m.id && !m.method);
        mp_msg_free(&m);
        return 0;
    } else {
        CHECK(m.method && *m.method && json_is_object(m.params));
        CHECK((m.kind == MP_KIND_REQUEST) == (m.id != NULL));
        mp_err herr;
        mp_err_clear(&herr);
        json_t *result = handle(&m, &herr);
        if (herr.code) {
            json_decref(result);
            reply = mp_rpc_error(m.id, &herr);
        } else {
            reply = mp_rpc_result(m.id, result);
        }
        want_id = json_incref(m.id);
        mp_msg_free(&m); /* the reply must hold its own references */
    }

    CHECK(reply);
    size_t len = 0;
    char *out = mp_dump(reply, 16, &len);
    CHECK(out);                         /* every envelope is encodable */
    CHECK(out[16 + len] == '\0');
    CHECK(strlen(out + 16) == len);

    /* the reply parses back as a response with the same id */
    mp_msg back;
    json_t *bid = NULL;
    mp_err be;
    int brc = mp_rpc_parse(out + 16, len, &lim, &back, &bid, &be);
    CHECK(brc == 0);
    CHECK(back.kind == MP_KIND_RESPONSE);
    if (want_id)
        CHECK(json_equal(back.id, want_id));
    else
        CHECK(json_is_null(back.id));
    mp_msg_free(&back);

    free(out);
    json_decref(reply);
    json_decref(want_id);
    return 0;
}
