/* test_store_contract.c - the store.h contract, run against one backend.
 *
 * Usage: test_store_contract memory|sqlite
 *
 * The same tests run for every backend (CTest registers one test per backend),
 * so a behaviour that differs between memory and sqlite is a failure here, not a
 * surprise in the broker. Tests that only make sense for a durable backend
 * (reopen, locking, file modes, schema versions) run only for sqlite; the one
 * documented difference (memory's rollback does not undo) is asserted as such.
 *
 * Every test gets a fresh store in a fresh temporary directory (the store is
 * opened under a not-yet-existing sub-directory to exercise mkdir -p).
 */
/* nftw() is an XSI interface */
#define _XOPEN_SOURCE 700

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <ftw.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mp_ulid.h"
#include "store.h"

static const char *g_backend; /* "memory" or "sqlite" */

static int is_sqlite(void) { return strcmp(g_backend, "sqlite") == 0; }

struct fx {
    struct mst_store *st;
    char dir[128];  /* temp dir, removed at teardown */
    char path[256]; /* dir/sub/store.db */
    char uri[300];
};

static int rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(p);
}

static int fx_reopen(struct fx *f, enum mst_durability dur)
{
    char err[512] = "";
    int rc = mst_open_uri(f->uri, dur, &f->st, err, sizeof err);
    if (rc)
        fprintf(stderr, "open %s: %s (%s)\n", f->uri, mst_strerror(rc), err);
    return rc;
}

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof *f);
    if (!f)
        return -1;
    snprintf(f->dir, sizeof f->dir, "/tmp/mst-contract-XXXXXX");
    if (!mkdtemp(f->dir)) {
        free(f);
        return -1;
    }
    snprintf(f->path, sizeof f->path, "%s/sub/store.db", f->dir);
    if (is_sqlite())
        snprintf(f->uri, sizeof f->uri, "sqlite:%s", f->path);
    else
        snprintf(f->uri, sizeof f->uri, "memory:");
    if (fx_reopen(f, MST_DUR_FULL) != MST_OK) {
        nftw(f->dir, rm_cb, 8, FTW_DEPTH | FTW_PHYS);
        free(f);
        return -1;
    }
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    mst_close(f->st);
    nftw(f->dir, rm_cb, 8, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

#define ST(state) (((struct fx *)*(state))->st)

/* ------------------------------------------------------------- collectors */

#define CMAX 64

struct coll {
    int n;          /* rows seen */
    int stop_after; /* return non-zero after this many rows (0 = never) */
    uint64_t seq[CMAX];
    int64_t ts[CMAX];
    char id[CMAX][64];
    char owner[CMAX][64]; /* records: owner ("<null>" for NULL); turns: conv; events: conv */
    char key[CMAX][64];   /* records: key; turns: thread ("<null>"); events: type; audit: target */
    char json[CMAX][160];
    size_t len[CMAX];
    enum mst_kind kind[CMAX];
};

static void cp(char *dst, size_t n, const char *s) { snprintf(dst, n, "%s", s ? s : "<null>"); }

static int coll_next(struct coll *c) { return c->stop_after && c->n >= c->stop_after; }

static int rec_cb(void *arg, const struct mst_record *r)
{
    struct coll *c = arg;
    if (c->n < CMAX) {
        cp(c->owner[c->n], 64, r->owner);
        cp(c->key[c->n], 64, r->key);
        snprintf(c->json[c->n], 160, "%.*s", (int)r->len, r->json);
        c->len[c->n] = r->len;
        c->kind[c->n] = r->kind;
    }
    c->n++;
    return coll_next(c);
}

static int turn_cb(void *arg, const struct mst_turn *t)
{
    struct coll *c = arg;
    if (c->n < CMAX) {
        c->seq[c->n] = t->seq;
        c->ts[c->n] = t->ts;
        cp(c->id[c->n], 64, t->id);
        cp(c->owner[c->n], 64, t->conv_id);
        cp(c->key[c->n], 64, t->thread_id);
        snprintf(c->json[c->n], 160, "%.*s", (int)t->len, t->json);
        c->len[c->n] = t->len;
    }
    c->n++;
    return coll_next(c);
}

static int event_cb(void *arg, const struct mst_event *e)
{
    struct coll *c = arg;
    if (c->n < CMAX) {
        c->seq[c->n] = e->seq;
        c->ts[c->n] = e->ts;
        cp(c->id[c->n], 64, e->id);
        cp(c->owner[c->n], 64, e->conv_id);
        cp(c->key[c->n], 64, e->type);
        snprintf(c->json[c->n], 160, "%.*s", (int)e->len, e->json);
        c->len[c->n] = e->len;
    }
    c->n++;
    return coll_next(c);
}

static int audit_cb(void *arg, const struct mst_audit *a)
{
    struct coll *c = arg;
    if (c->n < CMAX) {
        c->ts[c->n] = a->ts;
        cp(c->id[c->n], 64, a->id);
        cp(c->owner[c->n], 64, a->principal);
        cp(c->key[c->n], 64, a->target);
        snprintf(c->json[c->n], 160, "%.*s", (int)a->len, a->json);
        c->len[c->n] = a->len;
    }
    c->n++;
    return coll_next(c);
}

/* ---------------------------------------------------------------- helpers */

static int put(struct mst_store *st, enum mst_kind k, const char *owner, const char *key, const char *json)
{
    struct mst_record r = {.kind = k, .owner = owner, .key = key, .json = json, .len = strlen(json)};
    return mst_put(st, &r);
}

static int add_turn(struct mst_store *st, const char *conv, uint64_t seq, const char *thread)
{
    char id[64], json[128];
    snprintf(id, sizeof id, "turn-%s-%llu", conv, (unsigned long long)seq);
    snprintf(json, sizeof json, "{\"id\":\"%s\",\"seq\":%llu}", id, (unsigned long long)seq);
    struct mst_turn t = {.id = id,
                         .conv_id = conv,
                         .seq = seq,
                         .thread_id = thread,
                         .participant = "agent-a",
                         .content_type = "text",
                         .ts = 1700000000000 + (int64_t)seq,
                         .json = json,
                         .len = strlen(json)};
    return mst_turn_append(st, &t);
}

/* event ids: "E" + zero-padded seq sorts like seq, as ULIDs do */
static int add_event(struct mst_store *st, uint64_t seq, const char *conv)
{
    char id[32], json[96];
    snprintf(id, sizeof id, "E%08llu", (unsigned long long)seq);
    snprintf(json, sizeof json, "{\"id\":\"%s\",\"n\":%llu}", id, (unsigned long long)seq);
    struct mst_event e = {.seq = seq,
                          .id = id,
                          .type = conv ? "mail.turn.added" : "agent_registered",
                          .conv_id = conv,
                          .ts = 1700000000000 + (int64_t)seq,
                          .json = json,
                          .len = strlen(json)};
    return mst_event_append(st, &e);
}

static struct coll scan_turns(struct mst_store *st, const char *conv, uint64_t after, uint64_t before, int desc,
                              const char *thread, size_t limit)
{
    struct coll c = {0};
    struct mst_turn_query q = {.conv_id = conv, .after_seq = after, .before_seq = before, .desc = desc,
                               .thread_id = thread, .limit = limit};
    assert_int_equal(mst_turn_scan(st, &q, turn_cb, &c), MST_OK);
    return c;
}

static struct coll scan_events(struct mst_store *st, uint64_t after, const char *conv, size_t limit)
{
    struct coll c = {0};
    struct mst_event_query q = {.after_seq = after, .conv_id = conv, .limit = limit};
    assert_int_equal(mst_event_scan(st, &q, event_cb, &c), MST_OK);
    return c;
}

static void assert_seqs(const struct coll *c, const uint64_t *want, int n)
{
    assert_int_equal(c->n, n);
    for (int i = 0; i < n; i++)
        assert_int_equal(c->seq[i], want[i]);
}

/* ------------------------------------------------------------------ tests */

static void test_epoch(void **state)
{
    struct mst_store *st = ST(state);
    const char *e = mst_epoch(st);
    assert_non_null(e);
    assert_int_equal(strlen(e), MP_ULID_LEN);
    assert_true(mp_ulid_time(e) > 1600000000000);
    assert_string_equal(mst_epoch(st), e); /* stable within a session */
    assert_string_equal(mst_name(st), g_backend);
    if (!is_sqlite()) /* the memory store's commits need no sync */
        assert_int_equal(mst_sync_deferred(st), 0);
    assert_int_equal(mst_sync(st), MST_OK);
}

static void test_records_put_get_upsert(void **state)
{
    struct mst_store *st = ST(state);
    struct coll c = {0};

    assert_int_equal(mst_get(st, MST_CONV, NULL, "c1", rec_cb, &c), MST_ENOTFOUND);
    assert_int_equal(c.n, 0);
    assert_int_equal(put(st, MST_CONV, NULL, "c1", "{\"v\":1}"), MST_OK);
    assert_int_equal(mst_get(st, MST_CONV, NULL, "c1", rec_cb, &c), MST_OK);
    assert_int_equal(c.n, 1);
    assert_string_equal(c.key[0], "c1");
    assert_string_equal(c.owner[0], "<null>");
    assert_string_equal(c.json[0], "{\"v\":1}");
    assert_int_equal(c.len[0], 7);
    assert_int_equal(c.kind[0], MST_CONV);

    /* upsert replaces, does not duplicate */
    assert_int_equal(put(st, MST_CONV, NULL, "c1", "{\"v\":2,\"x\":true}"), MST_OK);
    memset(&c, 0, sizeof c);
    assert_int_equal(mst_get(st, MST_CONV, NULL, "c1", rec_cb, &c), MST_OK);
    assert_string_equal(c.json[0], "{\"v\":2,\"x\":true}");
    memset(&c, 0, sizeof c);
    assert_int_equal(mst_scan(st, MST_CONV, NULL, rec_cb, &c), MST_OK);
    assert_int_equal(c.n, 1);

    /* len 0 means NUL-terminated; len < strlen stores only len bytes */
    struct mst_record r = {.kind = MST_AGENT, .key = "a1", .json = "{\"s\":\"up\"}", .len = 0};
    assert_int_equal(mst_put(st, &r), MST_OK);
    r = (struct mst_record){.kind = MST_SCOPE, .key = "s1", .json = "{\"k\":1}GARBAGE", .len = 7};
    assert_int_equal(mst_put(st, &r), MST_OK);
    memset(&c, 0, sizeof c);
    assert_int_equal(mst_get(st, MST_AGENT, NULL, "a1", rec_cb, &c), MST_OK);
    assert_string_equal(c.json[0], "{\"s\":\"up\"}");
    memset(&c, 0, sizeof c);
    assert_int_equal(mst_get(st, MST_SCOPE, NULL, "s1", rec_cb, &c), MST_OK);
    assert_string_equal(c.json[0], "{\"k\":1}");
    assert_int_equal(c.len[0], 7);

    /* kinds are separate namespaces */
    memset(&c, 0, sizeof c);
    assert_int_equal(mst_get(st, MST_AGENT, NULL, "c1", rec_cb, &c), MST_ENOTFOUND);
    assert_int_equal(mst_scan(st, MST_THREAD, NULL, rec_cb, &c), MST_OK);
    assert_int_equal(c.n, 0);
    /* get with a NULL callback is an existence check */
    assert_int_equal(mst_get(st, MST_AGENT, NULL, "a1", NULL, NULL), MST_OK);
}

static void test_records_owner_filter(void **state)
{
    struct mst_store *st = ST(state);
    struct coll c = {0};
    /* inserted out of order: scans return (owner, key) order in every backend */
    assert_int_equal(put(st, MST_PARTICIPANT, "c2", "p1", "{\"c\":2,\"p\":1}"), MST_OK);
    assert_int_equal(put(st, MST_PARTICIPANT, "c1", "p2", "{\"c\":1,\"p\":2}"), MST_OK);
    assert_int_equal(put(st, MST_PARTICIPANT, "c1", "p1", "{\"c\":1,\"p\":1}"), MST_OK);
    assert_int_equal(put(st, MST_THREAD, "c1", "t1", "{\"t\":1}"), MST_OK);

    assert_int_equal(mst_scan(st, MST_PARTICIPANT, "c1", rec_cb, &c), MST_OK);
    assert_int_equal(c.n, 2);
    assert_string_equal(c.owner[0], "c1");
    assert_string_equal(c.key[0], "p1");
    assert_string_equal(c.json[0], "{\"c\":1,\"p\":1}");
    assert_string_equal(c.key[1], "p2");
    assert_int_equal(c.kind[1], MST_PARTICIPANT);

    memset(&c, 0, sizeof c);
    assert_int_equal(mst_scan(st, MST_PARTICIPANT, NULL, rec_cb, &c), MST_OK);
    assert_int_equal(c.n, 3);
    assert_string_equal(c.owner[2], "c2");
    assert_string_equal(c.key[2], "p1");

    memset(&c, 0, sizeof c);
    assert_int_equal(mst_scan(st, MST_PARTICIPANT, "c3", rec_cb, &c), MST_OK);
    assert_int_equal(c.n, 0);

    /* same key under two owners: two records; get needs the owner */
    memset(&c, 0, sizeof c);
    assert_int_equal(mst_get(st, MST_PARTICIPANT, "c2", "p1", rec_cb, &c), MST_OK);
    assert_string_equal(c.json[0], "{\"c\":2,\"p\":1}");
    assert_int_equal(mst_get(st, MST_PARTICIPANT, "c2", "p2", rec_cb, &c), MST_ENOTFOUND);
    assert_int_equal(mst_get(st, MST_PARTICIPANT, NULL, "p1", rec_cb, &c), MST_ENOTFOUND);

    memset(&c, 0, sizeof c);
    assert_int_equal(mst_scan(st, MST_THREAD, "c1", rec_cb, &c), MST_OK);
    assert_int_equal(c.n, 1);
    assert_string_equal(c.key[0], "t1");
}

static void test_records_del(void **state)
{
    struct mst_store *st = ST(state);
    struct coll c = {0};
    assert_int_equal(put(st, MST_PARTICIPANT, "c1", "p1", "{}"), MST_OK);
    assert_int_equal(put(st, MST_PARTICIPANT, "c1", "p2", "{}"), MST_OK);
    assert_int_equal(mst_del(st, MST_PARTICIPANT, "c2", "p1"), MST_ENOTFOUND); /* wrong owner */
    assert_int_equal(mst_del(st, MST_THREAD, "c1", "p1"), MST_ENOTFOUND);      /* wrong kind */
    assert_int_equal(mst_del(st, MST_PARTICIPANT, "c1", "p1"), MST_OK);
    assert_int_equal(mst_del(st, MST_PARTICIPANT, "c1", "p1"), MST_ENOTFOUND);
    assert_int_equal(mst_get(st, MST_PARTICIPANT, "c1", "p1", rec_cb, &c), MST_ENOTFOUND);
    assert_int_equal(mst_scan(st, MST_PARTICIPANT, NULL, rec_cb, &c), MST_OK);
    assert_int_equal(c.n, 1);
    assert_string_equal(c.key[0], "p2");
    /* re-put after delete works */
    assert_int_equal(put(st, MST_PARTICIPANT, "c1", "p1", "{\"again\":1}"), MST_OK);
    memset(&c, 0, sizeof c);
    assert_int_equal(mst_get(st, MST_PARTICIPANT, "c1", "p1", rec_cb, &c), MST_OK);
    assert_string_equal(c.json[0], "{\"again\":1}");
}

static void test_records_many(void **state)
{
    /* enough keys to make the memory map grow and rehash over tombstones */
    struct mst_store *st = ST(state);
    char key[32];
    assert_int_equal(mst_begin(st), MST_OK);
    for (int i = 0; i < 2000; i++) {
        snprintf(key, sizeof key, "a%05d", i);
        assert_int_equal(put(st, MST_AGENT, NULL, key, "{}"), MST_OK);
    }
    for (int i = 0; i < 2000; i += 2) {
        snprintf(key, sizeof key, "a%05d", i);
        assert_int_equal(mst_del(st, MST_AGENT, NULL, key), MST_OK);
    }
    assert_int_equal(mst_commit(st), MST_OK);
    struct coll c = {0};
    assert_int_equal(mst_scan(st, MST_AGENT, NULL, rec_cb, &c), MST_OK);
    assert_int_equal(c.n, 1000);
    assert_string_equal(c.key[0], "a00001");
    assert_string_equal(c.key[1], "a00003");
    assert_int_equal(mst_get(st, MST_AGENT, NULL, "a01999", NULL, NULL), MST_OK);
    assert_int_equal(mst_get(st, MST_AGENT, NULL, "a01998", NULL, NULL), MST_ENOTFOUND);
}

static void test_invalid_args(void **state)
{
    struct mst_store *st = ST(state);
    struct coll c = {0};
    assert_int_equal(put(st, (enum mst_kind)0, NULL, "k", "{}"), MST_EINVAL);
    assert_int_equal(put(st, (enum mst_kind)(MST_KIND_MAX + 1), NULL, "k", "{}"), MST_EINVAL);
    struct mst_record r = {.kind = MST_CONV, .key = NULL, .json = "{}"};
    assert_int_equal(mst_put(st, &r), MST_EINVAL);
    assert_int_equal(mst_scan(st, (enum mst_kind)0, NULL, rec_cb, &c), MST_EINVAL);
    struct mst_turn t = {.id = "turn-x", .conv_id = "c", .seq = 0, .json = "{}"};
    assert_int_equal(mst_turn_append(st, &t), MST_EINVAL); /* seq is 1-based */
    t.seq = (uint64_t)INT64_MAX + 1;
    assert_int_equal(mst_turn_append(st, &t), MST_EINVAL);
    struct mst_event e = {.seq = 1, .id = "0123456789012345678901234567890123", .type = "x", .json = "{}"};
    assert_int_equal(mst_event_append(st, &e), MST_EINVAL); /* id would not fit event_last's char[32] */
    struct mst_turn_query q = {.conv_id = NULL};
    assert_int_equal(mst_turn_scan(st, &q, turn_cb, &c), MST_EINVAL);
    assert_int_equal(c.n, 0);
}

static void test_turns_scan_asc(void **state)
{
    struct mst_store *st = ST(state);
    for (uint64_t s = 1; s <= 10; s++)
        assert_int_equal(add_turn(st, "A", s, NULL), MST_OK);
    for (uint64_t s = 1; s <= 3; s++)
        assert_int_equal(add_turn(st, "B", s, NULL), MST_OK);

    struct coll c = scan_turns(st, "A", 0, 0, 0, NULL, 0);
    assert_int_equal(c.n, 10);
    for (int i = 0; i < 10; i++)
        assert_int_equal(c.seq[i], (uint64_t)i + 1);
    assert_string_equal(c.id[0], "turn-A-1");
    assert_string_equal(c.owner[9], "A");
    assert_string_equal(c.json[4], "{\"id\":\"turn-A-5\",\"seq\":5}");
    assert_int_equal(c.len[4], strlen("{\"id\":\"turn-A-5\",\"seq\":5}"));

    c = scan_turns(st, "A", 3, 8, 0, NULL, 0);
    assert_seqs(&c, (const uint64_t[]){4, 5, 6, 7}, 4);
    c = scan_turns(st, "A", 3, 8, 0, NULL, 2);
    assert_seqs(&c, (const uint64_t[]){4, 5}, 2);
    c = scan_turns(st, "A", 8, 0, 0, NULL, 0);
    assert_seqs(&c, (const uint64_t[]){9, 10}, 2);
    c = scan_turns(st, "A", 10, 0, 0, NULL, 0);
    assert_int_equal(c.n, 0);
    c = scan_turns(st, "A", 0, 1, 0, NULL, 0);
    assert_int_equal(c.n, 0);
    c = scan_turns(st, "A", 5, 6, 0, NULL, 0);
    assert_int_equal(c.n, 0);
    c = scan_turns(st, "B", 0, 0, 0, NULL, 0);
    assert_seqs(&c, (const uint64_t[]){1, 2, 3}, 3);
    c = scan_turns(st, "nope", 0, 0, 0, NULL, 0);
    assert_int_equal(c.n, 0);
    c = scan_turns(st, "A", UINT64_MAX, 0, 0, NULL, 0);
    assert_int_equal(c.n, 0);
}

static void test_turns_scan_desc(void **state)
{
    struct mst_store *st = ST(state);
    for (uint64_t s = 1; s <= 10; s++)
        assert_int_equal(add_turn(st, "A", s, NULL), MST_OK);
    struct coll c = scan_turns(st, "A", 0, 0, 1, NULL, 0);
    assert_int_equal(c.n, 10);
    for (int i = 0; i < 10; i++)
        assert_int_equal(c.seq[i], (uint64_t)(10 - i));
    c = scan_turns(st, "A", 0, 0, 1, NULL, 3); /* the newest 3 */
    assert_seqs(&c, (const uint64_t[]){10, 9, 8}, 3);
    c = scan_turns(st, "A", 0, 5, 1, NULL, 2); /* page back from 5 */
    assert_seqs(&c, (const uint64_t[]){4, 3}, 2);
    c = scan_turns(st, "A", 2, 6, 1, NULL, 0);
    assert_seqs(&c, (const uint64_t[]){5, 4, 3}, 3);
    c = scan_turns(st, "A", 0, 1, 1, NULL, 0);
    assert_int_equal(c.n, 0);
    c = scan_turns(st, "A", 0, 1000, 1, NULL, 1);
    assert_seqs(&c, (const uint64_t[]){10}, 1);
}

static void test_turns_thread_filter(void **state)
{
    struct mst_store *st = ST(state);
    for (uint64_t s = 1; s <= 12; s++)
        assert_int_equal(add_turn(st, "A", s, s % 3 == 0 ? "th-1" : (s % 4 == 0 ? "th-2" : NULL)), MST_OK);
    /* th-1: 3 6 9 12 ; th-2: 4 8 */
    struct coll c = scan_turns(st, "A", 0, 0, 0, "th-1", 0);
    assert_seqs(&c, (const uint64_t[]){3, 6, 9, 12}, 4);
    assert_string_equal(c.key[0], "th-1");
    c = scan_turns(st, "A", 3, 0, 0, "th-1", 2); /* limit counts matching rows only */
    assert_seqs(&c, (const uint64_t[]){6, 9}, 2);
    c = scan_turns(st, "A", 0, 12, 1, "th-1", 0);
    assert_seqs(&c, (const uint64_t[]){9, 6, 3}, 3);
    c = scan_turns(st, "A", 0, 0, 1, "th-2", 1);
    assert_seqs(&c, (const uint64_t[]){8}, 1);
    c = scan_turns(st, "A", 0, 0, 0, "th-none", 0);
    assert_int_equal(c.n, 0);
    c = scan_turns(st, "A", 0, 3, 0, NULL, 0); /* NULL thread = all, NULL thread_id reported as NULL */
    assert_seqs(&c, (const uint64_t[]){1, 2}, 2);
    assert_string_equal(c.key[0], "<null>");
}

static void test_turn_get(void **state)
{
    struct mst_store *st = ST(state);
    assert_int_equal(add_turn(st, "A", 1, NULL), MST_OK);
    assert_int_equal(add_turn(st, "A", 2, "th"), MST_OK);
    struct coll c = {0};
    assert_int_equal(mst_turn_get(st, "turn-A-2", turn_cb, &c), MST_OK);
    assert_int_equal(c.n, 1);
    assert_int_equal(c.seq[0], 2);
    assert_string_equal(c.id[0], "turn-A-2");
    assert_string_equal(c.owner[0], "A");
    assert_string_equal(c.key[0], "th");
    assert_int_equal(c.ts[0], 1700000000002);
    assert_string_equal(c.json[0], "{\"id\":\"turn-A-2\",\"seq\":2}");

    /* every field round-trips, NULLs stay NULL */
    struct mst_turn t = {.id = "turn-Z", .conv_id = "Z", .seq = 7, .thread_id = NULL, .participant = NULL,
                         .content_type = NULL, .ts = -5, .json = "{\"z\":1}", .len = 7};
    assert_int_equal(mst_turn_append(st, &t), MST_OK);
    memset(&c, 0, sizeof c);
    assert_int_equal(mst_turn_get(st, "turn-Z", turn_cb, &c), MST_OK);
    assert_int_equal(c.seq[0], 7);
    assert_int_equal(c.ts[0], -5);
    assert_string_equal(c.key[0], "<null>");

    memset(&c, 0, sizeof c);
    assert_int_equal(mst_turn_get(st, "turn-nope", turn_cb, &c), MST_ENOTFOUND);
    assert_int_equal(c.n, 0);
}

struct turn_fields {
    char participant[32], content_type[32];
};
static int fields_cb(void *arg, const struct mst_turn *t)
{
    struct turn_fields *f = arg;
    cp(f->participant, sizeof f->participant, t->participant);
    cp(f->content_type, sizeof f->content_type, t->content_type);
    return 0;
}

static void test_turn_fields(void **state)
{
    struct mst_store *st = ST(state);
    assert_int_equal(add_turn(st, "A", 1, NULL), MST_OK);
    struct turn_fields f;
    assert_int_equal(mst_turn_get(st, "turn-A-1", fields_cb, &f), MST_OK);
    assert_string_equal(f.participant, "agent-a");
    assert_string_equal(f.content_type, "text");
}

static void test_turn_last_seq_count(void **state)
{
    struct mst_store *st = ST(state);
    uint64_t v = 99;
    assert_int_equal(mst_turn_last_seq(st, "A", &v), MST_OK);
    assert_int_equal(v, 0);
    v = 99;
    assert_int_equal(mst_turn_count(st, "A", &v), MST_OK);
    assert_int_equal(v, 0);
    for (uint64_t s = 1; s <= 5; s++)
        assert_int_equal(add_turn(st, "A", s, NULL), MST_OK);
    assert_int_equal(add_turn(st, "A", 9, NULL), MST_OK); /* a gap is allowed: the broker picks seq */
    assert_int_equal(add_turn(st, "B", 1, NULL), MST_OK);
    assert_int_equal(mst_turn_last_seq(st, "A", &v), MST_OK);
    assert_int_equal(v, 9);
    assert_int_equal(mst_turn_count(st, "A", &v), MST_OK);
    assert_int_equal(v, 6);
    assert_int_equal(mst_turn_last_seq(st, "B", &v), MST_OK);
    assert_int_equal(v, 1);
    assert_int_equal(mst_turn_count(st, "B", &v), MST_OK);
    assert_int_equal(v, 1);
    /* an out-of-order insert still lands in seq order */
    assert_int_equal(add_turn(st, "A", 7, NULL), MST_OK);
    struct coll c = scan_turns(st, "A", 5, 0, 0, NULL, 0);
    assert_seqs(&c, (const uint64_t[]){7, 9}, 2);
}

static void test_turn_eexist(void **state)
{
    struct mst_store *st = ST(state);
    assert_int_equal(add_turn(st, "A", 1, NULL), MST_OK);
    assert_int_equal(add_turn(st, "A", 2, NULL), MST_OK);
    /* duplicate (conv, seq) with a fresh id */
    struct mst_turn t = {.id = "turn-fresh", .conv_id = "A", .seq = 2, .json = "{}", .len = 2};
    assert_int_equal(mst_turn_append(st, &t), MST_EEXIST);
    /* duplicate id with a fresh (conv, seq) */
    t = (struct mst_turn){.id = "turn-A-1", .conv_id = "B", .seq = 1, .json = "{}", .len = 2};
    assert_int_equal(mst_turn_append(st, &t), MST_EEXIST);
    /* nothing was written by the failures */
    uint64_t n;
    assert_int_equal(mst_turn_count(st, "A", &n), MST_OK);
    assert_int_equal(n, 2);
    assert_int_equal(mst_turn_count(st, "B", &n), MST_OK);
    assert_int_equal(n, 0);
    assert_int_equal(mst_turn_get(st, "turn-fresh", NULL, NULL), MST_ENOTFOUND);
    /* and the store still works, inside a transaction too */
    assert_int_equal(mst_begin(st), MST_OK);
    assert_int_equal(add_turn(st, "A", 3, NULL), MST_OK);
    assert_int_equal(add_turn(st, "A", 3, NULL), MST_EEXIST);
    assert_int_equal(add_turn(st, "A", 4, NULL), MST_OK);
    assert_int_equal(mst_commit(st), MST_OK);
    assert_int_equal(mst_turn_count(st, "A", &n), MST_OK);
    assert_int_equal(n, 4);
}

static int page_cb(void *arg, const struct mst_turn *t)
{
    uint64_t *last = arg;
    if (t->seq != *last + 1)
        return -1; /* fail loudly via the count check below */
    *last = t->seq;
    return 0;
}

static void test_turns_pagination(void **state)
{
    struct mst_store *st = ST(state);
    assert_int_equal(mst_begin(st), MST_OK);
    for (uint64_t s = 1; s <= 1000; s++)
        assert_int_equal(add_turn(st, "P", s, NULL), MST_OK);
    assert_int_equal(mst_commit(st), MST_OK);
    uint64_t last = 0;
    for (int page = 0; page < 20; page++) {
        uint64_t before = last;
        struct mst_turn_query q = {.conv_id = "P", .after_seq = last, .limit = 100};
        assert_int_equal(mst_turn_scan(st, &q, page_cb, &last), MST_OK);
        if (page < 10)
            assert_int_equal(last, before + 100);
        else
            assert_int_equal(last, 1000);
    }
}

static int add_event_json(struct mst_store *st, uint64_t seq, const char *conv, const char *json)
{
    char id[32];
    snprintf(id, sizeof id, "E%08llu", (unsigned long long)seq);
    struct mst_event e = {.seq = seq, .id = id, .type = "mail.turn.added", .conv_id = conv,
                          .ts = 1700000000000 + (int64_t)seq, .json = json, .len = strlen(json)};
    return mst_event_append(st, &e);
}

/* Events that embed the turn appended just before them (mail.turn.added does)
 * read back byte for byte, whether the backend stores them whole or not
 * (sqlite v2 cuts the turn out and joins it back). */
static void test_events_embed_turn(void **state)
{
    struct mst_store *st = ST(state);
    const char *t1 = "{\"id\":\"turn-A-1\",\"seq\":1}", *t2 = "{\"id\":\"turn-A-2\",\"seq\":2}";
    char e1[160], e2[160], e3[160], e4[160];
    snprintf(e1, sizeof e1, "{\"id\":\"E00000001\",\"data\":{\"conversationId\":\"A\",\"turn\":%s,\"seq\":1}}", t1);
    snprintf(e2, sizeof e2, "{\"id\":\"E00000002\",\"data\":{\"turn\":%s}}", t1); /* the same turn again */
    snprintf(e3, sizeof e3, "%s", t2);                                          /* nothing but the turn */
    snprintf(e4, sizeof e4, "{\"id\":\"E00000004\",\"data\":{\"turn\":%s,\"x\":1}}", t1); /* a later transaction */
    assert_int_equal(mst_begin(st), MST_OK);
    assert_int_equal(add_turn(st, "A", 1, NULL), MST_OK);
    assert_int_equal(add_event_json(st, 1, "A", e1), MST_OK);
    assert_int_equal(add_event_json(st, 2, "A", e2), MST_OK);
    assert_int_equal(add_turn(st, "A", 2, NULL), MST_OK);
    assert_int_equal(add_event_json(st, 3, "B", e2), MST_OK); /* another conversation: stored whole */
    assert_int_equal(mst_commit(st), MST_OK);
    assert_int_equal(mst_begin(st), MST_OK);
    assert_int_equal(add_event_json(st, 4, "A", e4), MST_OK);
    assert_int_equal(add_turn(st, "A", 3, NULL), MST_OK);
    assert_int_equal(add_event_json(st, 5, "A", e3), MST_OK); /* not turn 3: stored whole */
    assert_int_equal(mst_commit(st), MST_OK);
    struct coll c = scan_events(st, 0, NULL, 0);
    assert_int_equal(c.n, 5);
    const char *want[5] = {e1, e2, e2, e4, e3};
    for (int i = 0; i < 5; i++) {
        assert_string_equal(c.json[i], want[i]);
        assert_int_equal(c.len[i], strlen(want[i]));
    }
    c = scan_events(st, 1, "A", 2);
    assert_int_equal(c.n, 2);
    assert_string_equal(c.json[0], e2);
    assert_string_equal(c.json[1], e4);
}

/* A turn whose text is empty, first on a fresh store, then an event of its
 * conversation: both are stored as given (fuzz_store found the sqlite store
 * copying the empty text into a buffer it had not allocated yet). */
static void test_empty_turn_text(void **state)
{
    struct mst_store *st = ST(state);
    struct mst_turn t = {.id = "turn-E-1", .conv_id = "E", .seq = 1, .participant = "agent-a",
                         .content_type = "text", .ts = 1700000000001, .json = "", .len = 0};
    assert_int_equal(mst_begin(st), MST_OK);
    assert_int_equal(mst_turn_append(st, &t), MST_OK);
    assert_int_equal(add_event_json(st, 1, "E", "{\"id\":\"E00000001\"}"), MST_OK);
    assert_int_equal(mst_commit(st), MST_OK);
    struct coll c = scan_events(st, 0, NULL, 0);
    assert_int_equal(c.n, 1);
    assert_string_equal(c.json[0], "{\"id\":\"E00000001\"}");
    uint64_t n = 0;
    assert_int_equal(mst_turn_count(st, "E", &n), MST_OK);
    assert_int_equal(n, 1);
}

static void test_events(void **state)
{
    struct mst_store *st = ST(state);
    uint64_t v = 7;
    char id[32] = "junk";
    assert_int_equal(mst_event_last(st, &v, id), MST_OK);
    assert_int_equal(v, 0);
    assert_string_equal(id, "");
    v = 7;
    assert_int_equal(mst_event_first_seq(st, &v), MST_OK);
    assert_int_equal(v, 0);

    for (uint64_t s = 1; s <= 10; s++)
        assert_int_equal(add_event(st, s, s % 2 ? "conv-odd" : NULL), MST_OK);

    struct coll c = scan_events(st, 0, NULL, 0);
    assert_int_equal(c.n, 10);
    for (int i = 0; i < 10; i++)
        assert_int_equal(c.seq[i], (uint64_t)i + 1);
    assert_string_equal(c.id[2], "E00000003");
    assert_string_equal(c.owner[2], "conv-odd");
    assert_string_equal(c.owner[3], "<null>");
    assert_string_equal(c.key[2], "mail.turn.added");
    assert_string_equal(c.key[3], "agent_registered");
    assert_int_equal(c.ts[3], 1700000000004);
    assert_string_equal(c.json[3], "{\"id\":\"E00000004\",\"n\":4}");

    c = scan_events(st, 7, NULL, 0);
    assert_seqs(&c, (const uint64_t[]){8, 9, 10}, 3);
    c = scan_events(st, 2, NULL, 3);
    assert_seqs(&c, (const uint64_t[]){3, 4, 5}, 3);
    c = scan_events(st, 0, "conv-odd", 0);
    assert_seqs(&c, (const uint64_t[]){1, 3, 5, 7, 9}, 5);
    c = scan_events(st, 3, "conv-odd", 2);
    assert_seqs(&c, (const uint64_t[]){5, 7}, 2);
    c = scan_events(st, 0, "conv-none", 0);
    assert_int_equal(c.n, 0);
    c = scan_events(st, 10, NULL, 0);
    assert_int_equal(c.n, 0);

    assert_int_equal(mst_event_last(st, &v, id), MST_OK);
    assert_int_equal(v, 10);
    assert_string_equal(id, "E00000010");
    assert_int_equal(mst_event_seq_of(st, "E00000006", &v), MST_OK);
    assert_int_equal(v, 6);
    assert_int_equal(mst_event_seq_of(st, "E99", &v), MST_ENOTFOUND);
    assert_int_equal(mst_event_first_seq(st, &v), MST_OK);
    assert_int_equal(v, 1);
    /* resume after an id that was never stored: by id order */
    assert_int_equal(mst_event_seq_after_id(st, "E00000006", &v), MST_OK);
    assert_int_equal(v, 6);
    assert_int_equal(mst_event_seq_after_id(st, "E000000065", &v), MST_OK); /* between 6 and 7 */
    assert_int_equal(v, 6);
    assert_int_equal(mst_event_seq_after_id(st, "A", &v), MST_OK); /* before everything */
    assert_int_equal(v, 0);
    assert_int_equal(mst_event_seq_after_id(st, "E00000010", &v), MST_ENOTFOUND);

    /* duplicate seq, duplicate id */
    assert_int_equal(add_event(st, 5, NULL), MST_EEXIST);
    struct mst_event e = {.seq = 11, .id = "E00000010", .type = "x", .json = "{}", .len = 2};
    assert_int_equal(mst_event_append(st, &e), MST_EEXIST);
    assert_int_equal(mst_event_last(st, &v, id), MST_OK);
    assert_int_equal(v, 10);
}

static void test_events_trim(void **state)
{
    struct mst_store *st = ST(state);
    assert_int_equal(mst_begin(st), MST_OK);
    for (uint64_t s = 1; s <= 200; s++)
        assert_int_equal(add_event(st, s, s % 2 ? "c" : NULL), MST_OK);
    assert_int_equal(mst_commit(st), MST_OK);

    uint64_t v;
    char id[32];
    assert_int_equal(mst_event_trim(st, 0), MST_OK); /* nothing */
    assert_int_equal(mst_event_first_seq(st, &v), MST_OK);
    assert_int_equal(v, 1);
    assert_int_equal(mst_event_trim(st, 150), MST_OK);
    assert_int_equal(mst_event_first_seq(st, &v), MST_OK);
    assert_int_equal(v, 151);
    assert_int_equal(mst_event_seq_of(st, "E00000150", &v), MST_ENOTFOUND);
    assert_int_equal(mst_event_seq_of(st, "E00000151", &v), MST_OK);
    assert_int_equal(v, 151);
    struct coll c = scan_events(st, 0, NULL, 0);
    assert_int_equal(c.n, 50);
    assert_int_equal(c.seq[0], 151);
    c = scan_events(st, 0, "c", 2);
    assert_seqs(&c, (const uint64_t[]){151, 153}, 2);
    assert_int_equal(mst_event_last(st, &v, id), MST_OK);
    assert_int_equal(v, 200);

    /* appending continues after a trim */
    assert_int_equal(add_event(st, 201, NULL), MST_OK);
    assert_int_equal(mst_event_trim(st, 100), MST_OK); /* already gone: no-op */
    c = scan_events(st, 199, NULL, 0);
    assert_seqs(&c, (const uint64_t[]){200, 201}, 2);

    assert_int_equal(mst_event_trim(st, 1000), MST_OK); /* everything */
    assert_int_equal(mst_event_first_seq(st, &v), MST_OK);
    assert_int_equal(v, 0);
    assert_int_equal(mst_event_last(st, &v, id), MST_OK);
    assert_int_equal(v, 0);
    assert_string_equal(id, "");
    c = scan_events(st, 0, NULL, 0);
    assert_int_equal(c.n, 0);
}

static void test_audit(void **state)
{
    struct mst_store *st = ST(state);
    mp_ulid_gen g;
    mp_ulid_init(&g, 42);
    char ids[5][MP_ULID_LEN + 1];
    struct coll c = {0};

    assert_int_equal(mst_audit_scan(st, NULL, 0, audit_cb, &c), MST_OK);
    assert_int_equal(c.n, 0);
    for (int i = 0; i < 5; i++) {
        char json[64];
        mp_ulid_next(&g, 1700000000000 + i, ids[i]);
        snprintf(json, sizeof json, "{\"i\":%d}", i);
        struct mst_audit a = {.id = ids[i], .ts = 1700000000000 + i, .principal = "admin", .action = "map/inject",
                              .target = i == 2 ? NULL : "agent-1", .json = json, .len = strlen(json)};
        assert_int_equal(mst_audit_append(st, &a), MST_OK);
    }
    /* newest first */
    assert_int_equal(mst_audit_scan(st, NULL, 2, audit_cb, &c), MST_OK);
    assert_int_equal(c.n, 2);
    assert_string_equal(c.id[0], ids[4]);
    assert_string_equal(c.id[1], ids[3]);
    assert_string_equal(c.json[0], "{\"i\":4}");
    assert_string_equal(c.owner[0], "admin");
    assert_int_equal(c.ts[1], 1700000000003);
    /* continue from the cursor (exclusive) */
    memset(&c, 0, sizeof c);
    assert_int_equal(mst_audit_scan(st, ids[3], 0, audit_cb, &c), MST_OK);
    assert_int_equal(c.n, 3);
    assert_string_equal(c.id[0], ids[2]);
    assert_string_equal(c.key[0], "<null>");
    assert_string_equal(c.id[2], ids[0]);
    memset(&c, 0, sizeof c);
    assert_int_equal(mst_audit_scan(st, ids[0], 0, audit_cb, &c), MST_OK);
    assert_int_equal(c.n, 0);
    /* duplicate id */
    struct mst_audit a = {.id = ids[1], .ts = 1, .json = "{}", .len = 2};
    assert_int_equal(mst_audit_append(st, &a), MST_EEXIST);
}

static void test_callbacks_stop(void **state)
{
    struct mst_store *st = ST(state);
    for (uint64_t s = 1; s <= 5; s++) {
        char key[8];
        snprintf(key, sizeof key, "k%llu", (unsigned long long)s);
        assert_int_equal(put(st, MST_SCOPE, NULL, key, "{}"), MST_OK);
        assert_int_equal(add_turn(st, "A", s, NULL), MST_OK);
        assert_int_equal(add_event(st, s, NULL), MST_OK);
        char aid[16];
        snprintf(aid, sizeof aid, "A%llu", (unsigned long long)s);
        struct mst_audit a = {.id = aid, .ts = 1, .json = "{}", .len = 2};
        assert_int_equal(mst_audit_append(st, &a), MST_OK);
    }
    struct coll c = {.stop_after = 2};
    assert_int_equal(mst_scan(st, MST_SCOPE, NULL, rec_cb, &c), MST_OK);
    assert_int_equal(c.n, 2);
    c = (struct coll){.stop_after = 1};
    struct mst_turn_query tq = {.conv_id = "A"};
    assert_int_equal(mst_turn_scan(st, &tq, turn_cb, &c), MST_OK);
    assert_int_equal(c.n, 1);
    c = (struct coll){.stop_after = 3};
    tq.desc = 1;
    assert_int_equal(mst_turn_scan(st, &tq, turn_cb, &c), MST_OK);
    assert_seqs(&c, (const uint64_t[]){5, 4, 3}, 3);
    c = (struct coll){.stop_after = 2};
    struct mst_event_query eq = {0};
    assert_int_equal(mst_event_scan(st, &eq, event_cb, &c), MST_OK);
    assert_int_equal(c.n, 2);
    c = (struct coll){.stop_after = 1};
    assert_int_equal(mst_audit_scan(st, NULL, 0, audit_cb, &c), MST_OK);
    assert_int_equal(c.n, 1);
    assert_string_equal(c.id[0], "A5");
    /* after an early stop the same scan runs again from the start */
    c = (struct coll){0};
    assert_int_equal(mst_scan(st, MST_SCOPE, NULL, rec_cb, &c), MST_OK);
    assert_int_equal(c.n, 5);
}

struct wbox {
    int rc_write, rc_read;
    struct mst_store *st;
};

static int writer_cb(void *arg, const struct mst_turn *t)
{
    struct wbox *b = arg;
    b->rc_write = add_turn(b->st, "A", t->seq + 100, NULL);
    b->rc_read = mst_get(b->st, MST_CONV, NULL, "c1", NULL, NULL); /* reads are fine */
    return 1;
}

static void test_write_in_callback_refused(void **state)
{
    struct mst_store *st = ST(state);
    assert_int_equal(add_turn(st, "A", 1, NULL), MST_OK);
    assert_int_equal(put(st, MST_CONV, NULL, "c1", "{}"), MST_OK);
    struct wbox box = {-1, -1, st};
    struct mst_turn_query q = {.conv_id = "A"};
    assert_int_equal(mst_turn_scan(st, &q, writer_cb, &box), MST_OK);
    assert_int_equal(box.rc_write, MST_EINVAL);
    assert_int_equal(box.rc_read, MST_OK);
    assert_true(strlen(mst_last_error(st)) > 0);
    /* re-entering the running scan is refused too (sqlite: one statement) or harmless (memory) */
    uint64_t n;
    assert_int_equal(mst_turn_count(st, "A", &n), MST_OK);
    assert_int_equal(n, 1);
    assert_int_equal(add_turn(st, "A", 2, NULL), MST_OK); /* fine again outside the callback */
}

static void test_tx_commit(void **state)
{
    struct mst_store *st = ST(state);
    assert_int_equal(mst_begin(st), MST_OK);
    assert_int_equal(put(st, MST_CONV, NULL, "c1", "{}"), MST_OK);
    for (uint64_t s = 1; s <= 50; s++)
        assert_int_equal(add_turn(st, "A", s, NULL), MST_OK);
    assert_int_equal(add_event(st, 1, "A"), MST_OK);
    /* the writer sees its own uncommitted writes */
    uint64_t n;
    assert_int_equal(mst_turn_count(st, "A", &n), MST_OK);
    assert_int_equal(n, 50);
    assert_int_equal(mst_commit(st), MST_OK);
    assert_int_equal(mst_turn_count(st, "A", &n), MST_OK);
    assert_int_equal(n, 50);
    assert_int_equal(mst_get(st, MST_CONV, NULL, "c1", NULL, NULL), MST_OK);
    assert_int_equal(mst_event_seq_of(st, "E00000001", &n), MST_OK);
    /* a second group works */
    assert_int_equal(mst_begin(st), MST_OK);
    assert_int_equal(add_turn(st, "A", 51, NULL), MST_OK);
    assert_int_equal(mst_commit(st), MST_OK);
    assert_int_equal(mst_turn_last_seq(st, "A", &n), MST_OK);
    assert_int_equal(n, 51);
}

static void test_tx_rollback(void **state)
{
    struct mst_store *st = ST(state);
    assert_int_equal(add_turn(st, "A", 1, NULL), MST_OK); /* autocommitted */
    assert_int_equal(mst_begin(st), MST_OK);
    assert_int_equal(add_turn(st, "A", 2, NULL), MST_OK);
    assert_int_equal(put(st, MST_CONV, NULL, "c1", "{}"), MST_OK);
    assert_int_equal(add_event(st, 1, NULL), MST_OK);
    assert_int_equal(mst_rollback(st), MST_OK);

    uint64_t n;
    assert_int_equal(mst_turn_count(st, "A", &n), MST_OK);
    if (is_sqlite()) {
        assert_int_equal(n, 1);
        assert_int_equal(mst_get(st, MST_CONV, NULL, "c1", NULL, NULL), MST_ENOTFOUND);
        assert_int_equal(mst_event_first_seq(st, &n), MST_OK);
        assert_int_equal(n, 0);
    } else {
        /* memory: documented no-op rollback; state must stay consistent */
        assert_int_equal(n, 2);
        struct coll c = scan_turns(st, "A", 0, 0, 0, NULL, 0);
        assert_seqs(&c, (const uint64_t[]){1, 2}, 2);
    }
    /* the store is usable afterwards, and the rolled-back seq can be reused
     * on sqlite (and is a duplicate on memory) */
    int rc = add_turn(st, "A", 2, NULL);
    assert_int_equal(rc, is_sqlite() ? MST_OK : MST_EEXIST);
    assert_int_equal(add_turn(st, "A", 3, NULL), MST_OK);
    assert_int_equal(mst_turn_count(st, "A", &n), MST_OK);
    assert_int_equal(n, 3);
}

static void test_tx_misuse(void **state)
{
    struct mst_store *st = ST(state);
    assert_int_equal(mst_commit(st), MST_EINVAL);
    assert_int_equal(mst_rollback(st), MST_EINVAL);
    assert_int_equal(mst_begin(st), MST_OK);
    assert_int_equal(mst_begin(st), MST_EINVAL);
    assert_true(strlen(mst_last_error(st)) > 0);
    assert_int_equal(add_turn(st, "A", 1, NULL), MST_OK);
    assert_int_equal(mst_commit(st), MST_OK); /* the failed begin did not end the open one */
    assert_int_equal(mst_commit(st), MST_EINVAL);
    uint64_t n;
    assert_int_equal(mst_turn_count(st, "A", &n), MST_OK);
    assert_int_equal(n, 1);
}

static void test_open_uri(void **state)
{
    struct fx *f = *state;
    struct mst_store *st = NULL;
    char err[512], p[300];

    assert_int_equal(mst_open_uri("memory:", MST_DUR_FULL, &st, err, sizeof err), MST_OK);
    assert_string_equal(mst_name(st), "memory");
    mst_close(st);
    st = NULL;
    assert_int_equal(mst_open_uri("memory", MST_DUR_NORMAL, &st, err, sizeof err), MST_OK);
    assert_string_equal(mst_name(st), "memory");
    mst_close(st);

    snprintf(p, sizeof p, "sqlite:%s/u1.db", f->dir);
    st = NULL;
    assert_int_equal(mst_open_uri(p, MST_DUR_NORMAL, &st, err, sizeof err), MST_OK);
    assert_string_equal(mst_name(st), "sqlite");
    mst_close(st);
    snprintf(p, sizeof p, "%s/u1.db", f->dir);
    assert_int_equal(access(p, F_OK), 0);

    snprintf(p, sizeof p, "%s/deeper/u2.db", f->dir); /* bare path = sqlite */
    st = NULL;
    assert_int_equal(mst_open_uri(p, MST_DUR_FULL, &st, err, sizeof err), MST_OK);
    assert_string_equal(mst_name(st), "sqlite");
    mst_close(st);
    assert_int_equal(access(p, F_OK), 0);

    st = (struct mst_store *)&st; /* must be reset to NULL on failure */
    err[0] = '\0';
    assert_int_equal(mst_open_uri("bogus:/x", MST_DUR_FULL, &st, err, sizeof err), MST_ENOBACKEND);
    assert_null(st);
    assert_non_null(strstr(err, "bogus"));
    assert_non_null(strstr(err, "memory"));
    assert_non_null(strstr(err, "sqlite"));

    assert_int_equal(mst_open_uri("", MST_DUR_FULL, &st, err, sizeof err), MST_EINVAL);
    assert_int_equal(mst_open_uri(NULL, MST_DUR_FULL, &st, err, sizeof err), MST_EINVAL);
    assert_int_equal(mst_open_uri("sqlite:", MST_DUR_FULL, &st, err, sizeof err), MST_EINVAL);
    assert_null(st);
    assert_true(strlen(err) > 0);
    /* a tiny / absent error buffer is tolerated */
    assert_int_equal(mst_open_uri("bogus:", MST_DUR_FULL, &st, NULL, 0), MST_ENOBACKEND);
    assert_int_equal(mst_open_uri("bogus:", MST_DUR_FULL, &st, err, 4), MST_ENOBACKEND);
    assert_int_equal(strlen(err), 3);
}

static struct mst_ops g_copy;

static void test_registry(void **state)
{
    (void)state;
    assert_ptr_equal(mst_find("memory"), &mst_memory_ops);
    assert_ptr_equal(mst_find("sqlite"), &mst_sqlite_ops);
    assert_null(mst_find("nope"));
    assert_null(mst_find(NULL));
    assert_int_equal(mst_register(&mst_memory_ops), MST_OK); /* idempotent */
    assert_int_equal(mst_register(NULL), MST_EINVAL);
    g_copy = mst_memory_ops;
    assert_int_equal(mst_register(&g_copy), MST_EEXIST); /* another table under a taken name */
    g_copy.name = "mem2";
    assert_int_equal(mst_register(&g_copy), MST_OK);
    assert_ptr_equal(mst_find("mem2"), &g_copy);
    struct mst_store *st = NULL;
    char err[256];
    assert_int_equal(mst_open_uri("mem2:", MST_DUR_FULL, &st, err, sizeof err), MST_OK);
    assert_non_null(st);
    mst_close(st);
    mst_close(NULL); /* NULL-safe */
}

static void test_strerror(void **state)
{
    (void)state;
    for (int rc = MST_OK; rc <= MST_ENOBACKEND; rc++)
        assert_true(strlen(mst_strerror(rc)) > 0);
    assert_string_equal(mst_strerror(MST_OK), "success");
    assert_string_not_equal(mst_strerror(MST_EBUSY), mst_strerror(MST_EIO));
    assert_string_equal(mst_strerror(12345), "unknown store error");
}

/* ---------------------------------------------------------- sqlite only */

static void test_sqlite_reopen(void **state)
{
    struct fx *f = *state;
    struct mst_store *st = f->st;
    char epoch[64];
    snprintf(epoch, sizeof epoch, "%s", mst_epoch(st));

    assert_int_equal(mst_begin(st), MST_OK);
    assert_int_equal(put(st, MST_PARTICIPANT, "c1", "p1", "{\"p\":1}"), MST_OK);
    for (uint64_t s = 1; s <= 20; s++)
        assert_int_equal(add_turn(st, "A", s, s == 7 ? "th" : NULL), MST_OK);
    for (uint64_t s = 1; s <= 5; s++)
        assert_int_equal(add_event(st, s, "A"), MST_OK);
    struct mst_audit a = {.id = "AUD1", .ts = 3, .principal = "root", .action = "mail/close", .json = "{}"};
    assert_int_equal(mst_audit_append(st, &a), MST_OK);
    assert_int_equal(mst_commit(st), MST_OK);
    assert_int_equal(mst_event_trim(st, 2), MST_OK);
    /* uncommitted work at close is discarded, never half-applied */
    assert_int_equal(mst_begin(st), MST_OK);
    assert_int_equal(add_turn(st, "A", 21, NULL), MST_OK);
    mst_close(st);
    f->st = NULL;

    assert_int_equal(fx_reopen(f, MST_DUR_NORMAL), MST_OK);
    st = f->st;
    assert_string_equal(mst_epoch(st), epoch);
    struct coll c = {0};
    assert_int_equal(mst_get(st, MST_PARTICIPANT, "c1", "p1", rec_cb, &c), MST_OK);
    assert_string_equal(c.json[0], "{\"p\":1}");
    uint64_t v;
    assert_int_equal(mst_turn_last_seq(st, "A", &v), MST_OK);
    assert_int_equal(v, 20);
    c = scan_turns(st, "A", 0, 0, 0, "th", 0);
    assert_seqs(&c, (const uint64_t[]){7}, 1);
    assert_int_equal(mst_event_first_seq(st, &v), MST_OK);
    assert_int_equal(v, 3);
    char id[32];
    assert_int_equal(mst_event_last(st, &v, id), MST_OK);
    assert_int_equal(v, 5);
    assert_string_equal(id, "E00000005");
    memset(&c, 0, sizeof c);
    assert_int_equal(mst_audit_scan(st, NULL, 0, audit_cb, &c), MST_OK);
    assert_int_equal(c.n, 1);
    assert_string_equal(c.owner[0], "root");
    /* WAL was checkpointed and truncated at close */
    char p[300];
    snprintf(p, sizeof p, "%s-wal", f->path);
    struct stat sb;
    assert_true(stat(p, &sb) != 0 || sb.st_size < 64 * 1024);
}

/* Checkpoints run in a thread (store_sqlite.c). Under writes that never pause,
 * the WAL must still restart from the top: ~120 MB written in 3000 commits
 * leave a WAL of at most twice the 32 MiB checkpoint threshold (where the
 * writer waits for the thread), not one holding it all. Before that cap, a
 * loaded machine (four of these in parallel) left 116 and 176 MB. */
static void test_sqlite_wal_bounded(void **state)
{
    struct fx *f = *state;
    mst_close(f->st);
    f->st = NULL;
    assert_int_equal(fx_reopen(f, MST_DUR_NORMAL), MST_OK); /* no fsync per commit: fast */
    struct mst_store *st = f->st;
    static char json[4096];
    memset(json, 'x', sizeof json - 1);
    uint64_t seq = 0;
    for (int c = 0; c < 3000; c++) {
        assert_int_equal(mst_begin(st), MST_OK);
        for (int i = 0; i < 10; i++) {
            char id[64];
            seq++;
            snprintf(id, sizeof id, "turn-W-%llu", (unsigned long long)seq);
            struct mst_turn t = {.id = id, .conv_id = "W", .seq = seq, .participant = "agent-a",
                                 .content_type = "text", .ts = (int64_t)seq, .json = json, .len = sizeof json - 1};
            assert_int_equal(mst_turn_append(st, &t), MST_OK);
        }
        assert_int_equal(mst_commit(st), MST_OK);
    }
    char p[300];
    snprintf(p, sizeof p, "%s-wal", f->path);
    struct stat sb;
    assert_int_equal(stat(p, &sb), 0);
    assert_true(sb.st_size <= 2 * 32 * 1024 * 1024 + 1024 * 1024);
    uint64_t n = 0;
    assert_int_equal(mst_turn_count(st, "W", &n), MST_OK);
    assert_int_equal(n, 30000);
}

/* durability full: commits are durable only after mst_sync (the broker's sync
 * thread), which flushes what earlier commits wrote; normal needs none */
static void test_sqlite_deferred_sync(void **state)
{
    struct fx *f = *state;
    assert_int_equal(mst_sync_deferred(f->st), 1);
    assert_int_equal(mst_begin(f->st), MST_OK);
    assert_int_equal(add_turn(f->st, "S", 1, NULL), MST_OK);
    assert_int_equal(mst_commit(f->st), MST_OK);
    assert_int_equal(mst_sync(f->st), MST_OK);
    mst_close(f->st);
    f->st = NULL;
    assert_int_equal(fx_reopen(f, MST_DUR_NORMAL), MST_OK);
    assert_int_equal(mst_sync_deferred(f->st), 0);
    uint64_t n = 0;
    assert_int_equal(mst_turn_count(f->st, "S", &n), MST_OK);
    assert_int_equal(n, 1);
}

static void test_sqlite_epoch_distinct(void **state)
{
    struct fx *f = *state;
    char p[300], err[512];
    struct mst_store *other = NULL;
    snprintf(p, sizeof p, "sqlite:%s/other.db", f->dir);
    assert_int_equal(mst_open_uri(p, MST_DUR_FULL, &other, err, sizeof err), MST_OK);
    assert_string_not_equal(mst_epoch(other), mst_epoch(f->st));
    mst_close(other);
}

static void test_sqlite_ebusy(void **state)
{
    struct fx *f = *state;
    struct mst_store *st2 = (struct mst_store *)f;
    char err[512] = "", want[64];
    assert_int_equal(mst_open_uri(f->uri, MST_DUR_FULL, &st2, err, sizeof err), MST_EBUSY);
    assert_null(st2);
    assert_non_null(strstr(err, "in use by another mapbroker"));
    assert_non_null(strstr(err, f->path));
    snprintf(want, sizeof want, "(pid %ld)", (long)getpid());
    assert_non_null(strstr(err, want));
    /* the first handle is unaffected */
    assert_int_equal(add_turn(f->st, "A", 1, NULL), MST_OK);
    /* released at close */
    mst_close(f->st);
    f->st = NULL;
    assert_int_equal(fx_reopen(f, MST_DUR_FULL), MST_OK);
    uint64_t n;
    assert_int_equal(mst_turn_count(f->st, "A", &n), MST_OK);
    assert_int_equal(n, 1);
}

static void assert_mode(const char *path, mode_t want)
{
    struct stat sb;
    if (stat(path, &sb) != 0)
        fail_msg("%s does not exist", path);
    if ((sb.st_mode & 0777) != want)
        fail_msg("%s has mode %o, want %o", path, (unsigned)(sb.st_mode & 0777), (unsigned)want);
}

static void test_sqlite_file_modes(void **state)
{
    struct fx *f = *state;
    char sub[200], p[240], uri[260], err[512];
    /* a permissive umask must not leak into the files */
    mode_t old = umask(0);
    snprintf(sub, sizeof sub, "%s/m1/m2", f->dir);
    snprintf(p, sizeof p, "%s/modes.db", sub);
    snprintf(uri, sizeof uri, "sqlite:%s", p);
    struct mst_store *st = NULL;
    int rc = mst_open_uri(uri, MST_DUR_FULL, &st, err, sizeof err);
    umask(old);
    assert_int_equal(rc, MST_OK);
    assert_int_equal(add_turn(st, "A", 1, NULL), MST_OK);
    assert_mode(sub, 0700);
    assert_mode(p, 0600);
    char q[260];
    snprintf(q, sizeof q, "%s-wal", p);
    assert_mode(q, 0600);
    snprintf(q, sizeof q, "%s-shm", p);
    assert_mode(q, 0600);
    snprintf(q, sizeof q, "%s.lock", p);
    assert_mode(q, 0600);
    mst_close(st);
    assert_mode(p, 0600);
}

static void test_sqlite_schema_newer(void **state)
{
    struct fx *f = *state;
    mst_close(f->st);
    f->st = NULL;
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "UPDATE meta SET v = '999' WHERE k = 'schema_version'", NULL, NULL, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_changes(db), 1);
    sqlite3_close(db);

    char err[512] = "";
    struct mst_store *st = NULL;
    assert_int_equal(mst_open_uri(f->uri, MST_DUR_FULL, &st, err, sizeof err), MST_ESCHEMA);
    assert_null(st);
    assert_non_null(strstr(err, "999"));
    assert_non_null(strstr(err, "newer"));
    /* the failed open released its lock: fixing the version makes it open again */
    assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "UPDATE meta SET v = '2' WHERE k = 'schema_version'", NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(db);
    assert_int_equal(fx_reopen(f, MST_DUR_FULL), MST_OK);
}

/* A version-1 file (as mapbroker wrote them before the v2 schema) opens,
 * climbs to v2, keeps its events, and takes new ones. */
static void test_sqlite_migrate_v1(void **state)
{
    struct fx *f = *state;
    char p[300], uri[320], err[512] = "";
    snprintf(p, sizeof p, "%s/v1.db", f->dir);
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(p, &db), SQLITE_OK);
    static const char v1[] =
        "PRAGMA journal_mode=WAL;"
        "CREATE TABLE meta(k TEXT PRIMARY KEY NOT NULL, v TEXT NOT NULL) WITHOUT ROWID;"
        "CREATE TABLE records(kind INTEGER NOT NULL, owner TEXT NOT NULL, key TEXT NOT NULL,"
        " json TEXT NOT NULL, PRIMARY KEY(kind, owner, key));"
        "CREATE TABLE turns(conv_id TEXT NOT NULL, seq INTEGER NOT NULL, id TEXT NOT NULL,"
        " thread_id TEXT, participant TEXT, content_type TEXT, ts INTEGER NOT NULL, json TEXT NOT NULL);"
        "CREATE UNIQUE INDEX turns_conv_seq ON turns(conv_id, seq);"
        "CREATE UNIQUE INDEX turns_id ON turns(id);"
        "CREATE TABLE events(seq INTEGER PRIMARY KEY, id TEXT NOT NULL, type TEXT NOT NULL, conv_id TEXT,"
        " ts INTEGER NOT NULL, json TEXT NOT NULL);"
        "CREATE UNIQUE INDEX events_id ON events(id);"
        "CREATE INDEX events_conv ON events(conv_id, seq) WHERE conv_id IS NOT NULL;"
        "CREATE TABLE audit(id TEXT NOT NULL, ts INTEGER NOT NULL, principal TEXT, action TEXT, target TEXT,"
        " json TEXT NOT NULL);"
        "CREATE UNIQUE INDEX audit_id ON audit(id);"
        "INSERT INTO meta(k, v) VALUES('schema_version', '1'), ('epoch', '01J00000000000000000000000'),"
        " ('created_ms', '1700000000000');"
        "INSERT INTO turns VALUES('A', 1, 'turn-A-1', NULL, 'agent-a', 'text', 1, '{\"id\":\"turn-A-1\",\"seq\":1}');"
        "INSERT INTO events VALUES(1, 'E00000001', 'mail.turn.added', 'A', 1,"
        " '{\"id\":\"E00000001\",\"turn\":{\"id\":\"turn-A-1\",\"seq\":1}}');";
    assert_int_equal(sqlite3_exec(db, v1, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    snprintf(uri, sizeof uri, "sqlite:%s", p);
    struct mst_store *st = NULL;
    assert_int_equal(mst_open_uri(uri, MST_DUR_FULL, &st, err, sizeof err), MST_OK);
    assert_string_equal(mst_epoch(st), "01J00000000000000000000000");
    assert_int_equal(mst_begin(st), MST_OK);
    assert_int_equal(add_turn(st, "A", 2, NULL), MST_OK);
    assert_int_equal(add_event_json(st, 2, "A", "{\"id\":\"E00000002\",\"turn\":{\"id\":\"turn-A-2\",\"seq\":2}}"),
                     MST_OK);
    assert_int_equal(mst_commit(st), MST_OK);
    struct coll c = scan_events(st, 0, "A", 0);
    assert_int_equal(c.n, 2);
    assert_string_equal(c.json[0], "{\"id\":\"E00000001\",\"turn\":{\"id\":\"turn-A-1\",\"seq\":1}}");
    assert_string_equal(c.json[1], "{\"id\":\"E00000002\",\"turn\":{\"id\":\"turn-A-2\",\"seq\":2}}");
    mst_close(st);
    assert_int_equal(sqlite3_open(p, &db), SQLITE_OK);
    sqlite3_stmt *q = NULL;
    assert_int_equal(sqlite3_prepare_v2(db, "SELECT v FROM meta WHERE k = 'schema_version'", -1, &q, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(q), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(q, 0), "2");
    sqlite3_finalize(q);
    /* the new event is stored without its turn: a third less written per turn */
    assert_int_equal(sqlite3_prepare_v2(db, "SELECT json, turn_seq FROM events WHERE seq = 2", -1, &q, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(q), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(q, 0), "{\"id\":\"E00000002\",\"turn\":}");
    assert_int_equal(sqlite3_column_int64(q, 1), 2);
    sqlite3_finalize(q);
    sqlite3_close(db);
}

static void test_sqlite_not_a_db(void **state)
{
    struct fx *f = *state;
    char p[300], uri[320], err[512] = "";
    snprintf(p, sizeof p, "%s/garbage.db", f->dir);
    FILE *fp = fopen(p, "w");
    assert_non_null(fp);
    for (int i = 0; i < 200; i++)
        fputs("this is not an sqlite database at all. ", fp);
    fclose(fp);
    snprintf(uri, sizeof uri, "sqlite:%s", p);
    struct mst_store *st = NULL;
    assert_int_equal(mst_open_uri(uri, MST_DUR_FULL, &st, err, sizeof err), MST_ESCHEMA);
    assert_null(st);
    assert_true(strlen(err) > 0);

    /* an sqlite database that is not ours is refused, not adopted */
    snprintf(p, sizeof p, "%s/foreign.db", f->dir);
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(p, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "CREATE TABLE t(x)", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    snprintf(uri, sizeof uri, "sqlite:%s", p);
    assert_int_equal(mst_open_uri(uri, MST_DUR_FULL, &st, err, sizeof err), MST_ESCHEMA);
    assert_non_null(strstr(err, "not a mapbroker database"));
}

static void test_sqlite_meta(void **state)
{
    /* the epoch and version really live in the meta table (inspectable) */
    struct fx *f = *state;
    char epoch[64];
    snprintf(epoch, sizeof epoch, "%s", mst_epoch(f->st));
    mst_close(f->st);
    f->st = NULL;
    sqlite3 *db = NULL;
    sqlite3_stmt *q = NULL;
    assert_int_equal(sqlite3_open_v2(f->path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, "SELECT k, v FROM meta ORDER BY k", -1, &q, NULL), SQLITE_OK);
    int seen = 0;
    while (sqlite3_step(q) == SQLITE_ROW) {
        const char *k = (const char *)sqlite3_column_text(q, 0), *v = (const char *)sqlite3_column_text(q, 1);
        if (strcmp(k, "epoch") == 0) {
            assert_string_equal(v, epoch);
            seen |= 1;
        } else if (strcmp(k, "schema_version") == 0) {
            assert_string_equal(v, "2");
            seen |= 2;
        }
    }
    sqlite3_finalize(q);
    /* and the journal is WAL */
    assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &q, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(q), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(q, 0), "wal");
    sqlite3_finalize(q);
    sqlite3_close(db);
    assert_int_equal(seen, 3);
    assert_int_equal(fx_reopen(f, MST_DUR_FULL), MST_OK);
}

/* ------------------------------------------------------------------- main */

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(int argc, char **argv)
{
    if (argc != 2 || (strcmp(argv[1], "memory") != 0 && strcmp(argv[1], "sqlite") != 0)) {
        fprintf(stderr, "usage: %s memory|sqlite\n", argv[0]);
        return 2;
    }
    g_backend = argv[1];

    const struct CMUnitTest common[] = {
        T(test_epoch),
        T(test_records_put_get_upsert),
        T(test_records_owner_filter),
        T(test_records_del),
        T(test_records_many),
        T(test_invalid_args),
        T(test_turns_scan_asc),
        T(test_turns_scan_desc),
        T(test_turns_thread_filter),
        T(test_turn_get),
        T(test_turn_fields),
        T(test_turn_last_seq_count),
        T(test_turn_eexist),
        T(test_turns_pagination),
        T(test_events),
        T(test_events_embed_turn),
        T(test_empty_turn_text),
        T(test_events_trim),
        T(test_audit),
        T(test_callbacks_stop),
        T(test_write_in_callback_refused),
        T(test_tx_commit),
        T(test_tx_rollback),
        T(test_tx_misuse),
        T(test_open_uri),
        T(test_registry),
        T(test_strerror),
    };
    const struct CMUnitTest sqlite_only[] = {
        T(test_sqlite_reopen),
        T(test_sqlite_wal_bounded),
        T(test_sqlite_deferred_sync),
        T(test_sqlite_epoch_distinct),
        T(test_sqlite_ebusy),
        T(test_sqlite_file_modes),
        T(test_sqlite_schema_newer),
        T(test_sqlite_not_a_db),
        T(test_sqlite_migrate_v1),
        T(test_sqlite_meta),
    };
    int fails = 0;
    if (is_sqlite()) {
        fails += cmocka_run_group_tests_name("store_contract_sqlite", common, NULL, NULL);
        fails += cmocka_run_group_tests_name("store_sqlite_only", sqlite_only, NULL, NULL);
    } else {
        fails += cmocka_run_group_tests_name("store_contract_memory", common, NULL, NULL);
    }
    return fails ? 1 : 0;
}
