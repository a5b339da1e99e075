/* fuzz_store.c - differential libFuzzer harness for the store contract (stores/store.h).
 *
 * The input is a program: a sequence of store operations (records put/get/del/
 * scan of every kind, turn append/scan/get/last_seq/count, event append/scan/
 * last/first_seq/seq_of/seq_after_id/trim, audit append/scan, begin/commit/
 * rollback, and a write attempted from inside a scan callback), decoded from
 * the bytes by a small reader. Each program runs against a fresh memory: store
 * and a fresh sqlite: store (a new file in a temp directory created once), and
 * the harness aborts on the first disagreement in a return code or in what a
 * read returned (every row a callback receives is serialised, field by field,
 * and compared byte for byte). Sanitizers (ASan/UBSan, leaks) are the other
 * oracle.
 *
 * Where the contract lets the backends differ on purpose, the program is kept
 * inside it:
 *  - memory's rollback does not undo writes (stores/README.md): a rollback is
 *    only issued when the open transaction holds no successful write; otherwise
 *    the op commits instead;
 *  - event ids must sort like seq (store.h): generated event ids are "E" + the
 *    zero-padded seq (+ an optional suffix), so any two appended ids sort like
 *    their seqs; a duplicate-id probe reuses the id of a live event only.
 * Fuzzed strings (keys, owners, ids, JSON text, ...) are otherwise arbitrary
 * non-NUL bytes.
 */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "store.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond, ...)                                                                                               \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            fprintf(stderr, "fuzz_store: line %d: %s: ", __LINE__, #cond);                                            \
            fprintf(stderr, __VA_ARGS__);                                                                              \
            fputc('\n', stderr);                                                                                       \
            abort();                                                                                                   \
        }                                                                                                              \
    } while (0)

static char g_dir[256];
static unsigned long g_n;

static void fz__cleanup(void)
{
    if (g_dir[0])
        rmdir(g_dir); /* empty by then; ignore failure */
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *tmp = getenv("TMPDIR");
    snprintf(g_dir, sizeof g_dir, "%s/fuzz_store.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    CHECK(mkdtemp(g_dir) != NULL, "mkdtemp %s failed", g_dir);
    atexit(fz__cleanup);
    return 0;
}

/* ---- input reader ---- */

typedef struct {
    const uint8_t *p;
    size_t n;
} rd;

static unsigned u8(rd *r)
{
    if (!r->n)
        return 0;
    r->n--;
    return *r->p++;
}

static uint64_t u64small(rd *r)
{
    unsigned b = u8(r);
    switch (b >> 5) {
    case 0: return 0;
    case 7: {
        static const uint64_t big[] = {(uint64_t)INT64_MAX, (uint64_t)INT64_MAX + 1, UINT64_MAX, 1u << 31, 100, 1000,
                                       (uint64_t)INT64_MAX - 1, 65536};
        return big[b & 7];
    }
    default: return b & 31;
    }
}

/* A timestamp: small, negative or extreme. */
static int64_t i64(rd *r)
{
    uint64_t v = u64small(r);
    if (v > (uint64_t)INT64_MAX)
        return v == UINT64_MAX ? INT64_MIN : -1;
    return (int64_t)v - ((v & 1) ? 0 : 3);
}

/* A string: one of a few fixed values (so operations collide) or fuzzed bytes. */
static const char *str(rd *r, char *buf, size_t cap, const char *const *pool, int allow_null)
{
    unsigned b = u8(r);
    if (allow_null && b == 0)
        return NULL;
    if (b < 0xC0)
        return pool[b & 3];
    size_t len = (b & 0x3F) % (cap - 1);
    size_t i = 0;
    for (; i < len && r->n; i++) {
        unsigned c = u8(r);
        buf[i] = (char)(c ? c : 'x');
    }
    buf[i] = '\0';
    return buf;
}

static const char *const k_keys[] = {"a", "b", "", "key-\xc3\xa9"};
static const char *const k_owners[] = {"", "o1", "o2", "a"};
static const char *const k_json[] = {"{}", "{\"x\":1}", "[1,2,3]", "\"s\\u0000t\""};
static const char *const k_convs[] = {"conv-1", "conv-2", "", "conv-1\x7f"};
static const char *const k_threads[] = {"th-1", "th-2", "", "t"};
static const char *const k_tids[] = {"turn-1", "turn-2", "turn-3", ""};
static const char *const k_types[] = {"agent_registered", "mail.turn.added", "", "x"};
static const char *const k_misc[] = {"p1", "p2", "", "map/inject"};
static const char *const k_auids[] = {"01A", "01B", "01C", "01B0"};

/* ---- serialised read results ---- */

typedef struct {
    char *b;
    size_t n, cap;
    int rows;
    int stop_after; /* stop the scan after this many rows (0 = never) */
    struct mst_store *st;
    int write_in_cb; /* try a write from the first callback; record its rc */
} out;

static void put_bytes(out *o, const void *p, size_t n)
{
    if (o->n + n + 1 > o->cap) {
        size_t nc = o->cap ? o->cap : 256;
        while (nc < o->n + n + 1)
            nc *= 2;
        o->b = realloc(o->b, nc);
        CHECK(o->b, "oom");
        o->cap = nc;
    }
    memcpy(o->b + o->n, p, n);
    o->n += n;
}

static void put_str(out *o, const char *s)
{
    if (!s) {
        put_bytes(o, "\x01N", 2);
        return;
    }
    size_t n = strlen(s);
    put_bytes(o, &n, sizeof n);
    put_bytes(o, s, n);
}

static void put_u64(out *o, uint64_t v) { put_bytes(o, &v, sizeof v); }

static void put_json(out *o, const char *json, size_t len)
{
    CHECK(json != NULL, "row with NULL json");
    CHECK(json[len] == '\0', "json not NUL-terminated at len %zu", len);
    CHECK(strlen(json) == len, "json len %zu but strlen %zu", len, strlen(json));
    put_u64(o, len);
    put_bytes(o, json, len);
}

static int row_end(out *o)
{
    o->rows++;
    put_bytes(o, "|", 1);
    if (o->write_in_cb && o->rows == 1) {
        struct mst_record r = {.kind = MST_CONV, .key = "cb-write", .json = "{}"};
        int rc = mst_put(o->st, &r);
        put_u64(o, (uint64_t)rc);
    }
    return o->stop_after && o->rows >= o->stop_after;
}

static int rec_cb(void *arg, const struct mst_record *r)
{
    out *o = arg;
    put_u64(o, (uint64_t)r->kind);
    CHECK(!r->owner || r->owner[0], "record owner \"\" must be reported as NULL");
    put_str(o, r->owner);
    put_str(o, r->key);
    put_json(o, r->json, r->len);
    return row_end(o);
}

static int turn_cb(void *arg, const struct mst_turn *t)
{
    out *o = arg;
    put_str(o, t->id);
    put_str(o, t->conv_id);
    put_u64(o, t->seq);
    put_str(o, t->thread_id);
    put_str(o, t->participant);
    put_str(o, t->content_type);
    put_u64(o, (uint64_t)t->ts);
    put_json(o, t->json, t->len);
    return row_end(o);
}

static int event_cb(void *arg, const struct mst_event *e)
{
    out *o = arg;
    put_u64(o, e->seq);
    put_str(o, e->id);
    put_str(o, e->type);
    put_str(o, e->conv_id);
    put_u64(o, (uint64_t)e->ts);
    put_json(o, e->json, e->len);
    return row_end(o);
}

static int audit_cb(void *arg, const struct mst_audit *a)
{
    out *o = arg;
    put_str(o, a->id);
    put_u64(o, (uint64_t)a->ts);
    put_str(o, a->principal);
    put_str(o, a->action);
    put_str(o, a->target);
    put_json(o, a->json, a->len);
    return row_end(o);
}

/* ---- one program ---- */

enum { B_MEM = 0, B_SQL = 1 };

typedef struct {
    struct mst_store *st[2];
    int txn;         /* a transaction is open (per the program; both backends must agree) */
    int dirty;       /* a write succeeded inside the open transaction */
    uint64_t last_ev_seq;
    char last_ev_id[40];
    uint64_t trimmed; /* highest trim bound applied */
} prog;

static const char *const k_opnames[] = {"put", "del", "scan", "get", "turn_append", "turn_scan", "turn_get",
                                        "turn_last/count", "event_append", "event_scan", "event_last/first",
                                        "event_seq_of/after_id", "event_trim", "audit_append", "audit_scan",
                                        "begin", "commit", "rollback"};
#define NOPS (sizeof k_opnames / sizeof k_opnames[0])

static void same_rc(int op, int a, int b)
{
    CHECK(a == b, "%s: memory rc %d (%s), sqlite rc %d (%s)", k_opnames[op], a, mst_strerror(a), b, mst_strerror(b));
}

static void same_out(int op, out *a, out *b)
{
    CHECK(a->rows == b->rows && a->n == b->n && (!a->n || memcmp(a->b, b->b, a->n) == 0),
          "%s: results differ: memory %d rows / %zu bytes, sqlite %d rows / %zu bytes", k_opnames[op], a->rows, a->n,
          b->rows, b->n);
}

static void wrote(prog *p, int rc)
{
    if (rc == MST_OK && p->txn)
        p->dirty = 1;
}

static void run_op(prog *p, rd *r)
{
    int op = (int)(u8(r) % NOPS);
    char b1[64], b2[64], b3[64], b4[64], b5[64], b6[200];
    int rc[2];
    out o[2];
    memset(o, 0, sizeof o);
    unsigned flags;
    switch (op) {
    case 0: { /* put */
        struct mst_record rec = {.kind = (enum mst_kind)(u8(r) % 7)};
        rec.owner = str(r, b1, sizeof b1, k_owners, 1);
        rec.key = str(r, b2, sizeof b2, k_keys, 1);
        rec.json = str(r, b6, sizeof b6, k_json, 1);
        rec.len = (u8(r) & 1) || !rec.json ? 0 : strlen(rec.json);
        for (int i = 0; i < 2; i++)
            rc[i] = mst_put(p->st[i], &rec);
        same_rc(op, rc[0], rc[1]);
        wrote(p, rc[0]);
        break;
    }
    case 1: { /* del */
        enum mst_kind k = (enum mst_kind)(u8(r) % 7);
        const char *owner = str(r, b1, sizeof b1, k_owners, 1);
        const char *key = str(r, b2, sizeof b2, k_keys, 1);
        for (int i = 0; i < 2; i++)
            rc[i] = mst_del(p->st[i], k, owner, key);
        same_rc(op, rc[0], rc[1]);
        wrote(p, rc[0]);
        break;
    }
    case 2: { /* scan */
        enum mst_kind k = (enum mst_kind)(u8(r) % 7);
        const char *owner = str(r, b1, sizeof b1, k_owners, 1);
        flags = u8(r);
        for (int i = 0; i < 2; i++) {
            o[i].stop_after = (int)(flags & 7);
            o[i].st = p->st[i];
            o[i].write_in_cb = (flags & 8) != 0;
            rc[i] = mst_scan(p->st[i], k, owner, rec_cb, &o[i]);
        }
        same_rc(op, rc[0], rc[1]);
        same_out(op, &o[0], &o[1]);
        break;
    }
    case 3: { /* get */
        enum mst_kind k = (enum mst_kind)(u8(r) % 7);
        const char *owner = str(r, b1, sizeof b1, k_owners, 1);
        const char *key = str(r, b2, sizeof b2, k_keys, 1);
        for (int i = 0; i < 2; i++)
            rc[i] = mst_get(p->st[i], k, owner, key, rec_cb, &o[i]);
        same_rc(op, rc[0], rc[1]);
        same_out(op, &o[0], &o[1]);
        break;
    }
    case 4: { /* turn_append */
        struct mst_turn t = {0};
        t.conv_id = str(r, b1, sizeof b1, k_convs, 1);
        t.seq = u64small(r);
        t.id = str(r, b2, sizeof b2, k_tids, 1);
        t.thread_id = str(r, b3, sizeof b3, k_threads, 1);
        t.participant = str(r, b4, sizeof b4, k_misc, 1);
        t.content_type = str(r, b5, sizeof b5, k_types, 1);
        t.ts = i64(r);
        t.json = str(r, b6, sizeof b6, k_json, 1);
        t.len = t.json && (u8(r) & 1) ? strlen(t.json) : 0;
        for (int i = 0; i < 2; i++)
            rc[i] = mst_turn_append(p->st[i], &t);
        same_rc(op, rc[0], rc[1]);
        wrote(p, rc[0]);
        break;
    }
    case 5: { /* turn_scan */
        struct mst_turn_query q = {0};
        q.conv_id = str(r, b1, sizeof b1, k_convs, 1);
        q.after_seq = u64small(r);
        q.before_seq = u64small(r);
        flags = u8(r);
        q.desc = flags & 1;
        q.thread_id = (flags & 2) ? str(r, b2, sizeof b2, k_threads, 1) : NULL;
        q.limit = (size_t)(u8(r) % 6);
        for (int i = 0; i < 2; i++) {
            o[i].stop_after = (int)((flags >> 2) & 7);
            o[i].st = p->st[i];
            o[i].write_in_cb = (flags & 32) != 0;
            rc[i] = mst_turn_scan(p->st[i], &q, turn_cb, &o[i]);
        }
        same_rc(op, rc[0], rc[1]);
        same_out(op, &o[0], &o[1]);
        break;
    }
    case 6: { /* turn_get */
        const char *id = str(r, b1, sizeof b1, k_tids, 1);
        for (int i = 0; i < 2; i++)
            rc[i] = mst_turn_get(p->st[i], id, turn_cb, &o[i]);
        same_rc(op, rc[0], rc[1]);
        same_out(op, &o[0], &o[1]);
        break;
    }
    case 7: { /* turn_last_seq + turn_count */
        const char *conv = str(r, b1, sizeof b1, k_convs, 1);
        uint64_t v[2] = {7, 7}, c[2] = {7, 7};
        for (int i = 0; i < 2; i++)
            rc[i] = mst_turn_last_seq(p->st[i], conv, &v[i]);
        same_rc(op, rc[0], rc[1]);
        CHECK(rc[0] || v[0] == v[1], "turn_last_seq: memory %" PRIu64 ", sqlite %" PRIu64, v[0], v[1]);
        for (int i = 0; i < 2; i++)
            rc[i] = mst_turn_count(p->st[i], conv, &c[i]);
        same_rc(op, rc[0], rc[1]);
        CHECK(rc[0] || c[0] == c[1], "turn_count: memory %" PRIu64 ", sqlite %" PRIu64, c[0], c[1]);
        break;
    }
    case 8: { /* event_append */
        struct mst_event e = {0};
        flags = u8(r);
        e.seq = u64small(r);
        char id[64];
        if ((flags & 3) == 3 && p->last_ev_id[0] && p->last_ev_seq > p->trimmed) {
            snprintf(id, sizeof id, "%s", p->last_ev_id); /* duplicate id of a live event */
        } else if ((flags & 3) == 2) {
            snprintf(id, sizeof id, "E%020" PRIu64 "%s", e.seq, "0123456789ABC"); /* > 31 chars */
        } else {
            snprintf(id, sizeof id, "E%08" PRIu64 "%s", e.seq % 100000000u, (flags & 4) ? "Z" : "");
            if (e.seq >= 100000000u)
                snprintf(id, sizeof id, "F%019" PRIu64, e.seq); /* still sorts like seq among big ones */
        }
        e.id = (flags & 0xF0) == 0xF0 ? NULL : id;
        e.type = str(r, b2, sizeof b2, k_types, 1);
        e.conv_id = (flags & 8) ? str(r, b3, sizeof b3, k_convs, 1) : NULL;
        e.ts = i64(r);
        e.json = str(r, b6, sizeof b6, k_json, 1);
        e.len = e.json && (flags & 16) ? strlen(e.json) : 0;
        for (int i = 0; i < 2; i++)
            rc[i] = mst_event_append(p->st[i], &e);
        same_rc(op, rc[0], rc[1]);
        wrote(p, rc[0]);
        if (rc[0] == MST_OK && e.id) {
            p->last_ev_seq = e.seq;
            snprintf(p->last_ev_id, sizeof p->last_ev_id, "%s", e.id);
        }
        break;
    }
    case 9: { /* event_scan */
        struct mst_event_query q = {0};
        q.after_seq = u64small(r);
        flags = u8(r);
        q.conv_id = (flags & 1) ? str(r, b1, sizeof b1, k_convs, 1) : NULL;
        q.limit = (size_t)(u8(r) % 6);
        for (int i = 0; i < 2; i++) {
            o[i].stop_after = (int)((flags >> 1) & 7);
            o[i].st = p->st[i];
            o[i].write_in_cb = (flags & 16) != 0;
            rc[i] = mst_event_scan(p->st[i], &q, event_cb, &o[i]);
        }
        same_rc(op, rc[0], rc[1]);
        same_out(op, &o[0], &o[1]);
        break;
    }
    case 10: { /* event_last + event_first_seq */
        uint64_t s[2] = {9, 9}, f[2] = {9, 9};
        char id[2][32];
        memset(id, 0x55, sizeof id);
        for (int i = 0; i < 2; i++)
            rc[i] = mst_event_last(p->st[i], &s[i], id[i]);
        same_rc(op, rc[0], rc[1]);
        if (!rc[0]) {
            CHECK(s[0] == s[1], "event_last seq: memory %" PRIu64 ", sqlite %" PRIu64, s[0], s[1]);
            CHECK(memchr(id[0], 0, 32) && memchr(id[1], 0, 32), "event_last id not terminated");
            CHECK(!strcmp(id[0], id[1]), "event_last id: memory %s, sqlite %s", id[0], id[1]);
        }
        for (int i = 0; i < 2; i++)
            rc[i] = mst_event_first_seq(p->st[i], &f[i]);
        same_rc(op, rc[0], rc[1]);
        CHECK(rc[0] || f[0] == f[1], "event_first_seq: memory %" PRIu64 ", sqlite %" PRIu64, f[0], f[1]);
        break;
    }
    case 11: { /* event_seq_of + event_seq_after_id */
        flags = u8(r);
        char id[64];
        const char *q;
        if (flags & 1) {
            snprintf(id, sizeof id, "E%08" PRIu64 "%s", u64small(r), (flags & 2) ? "Z" : (flags & 4) ? "0" : "");
            q = id;
        } else {
            q = str(r, b1, sizeof b1, k_auids, 1);
        }
        uint64_t s[2] = {3, 3};
        for (int i = 0; i < 2; i++)
            rc[i] = mst_event_seq_of(p->st[i], q, &s[i]);
        same_rc(op, rc[0], rc[1]);
        CHECK(rc[0] || s[0] == s[1], "event_seq_of(%s): memory %" PRIu64 ", sqlite %" PRIu64, q ? q : "NULL", s[0],
              s[1]);
        s[0] = s[1] = 3;
        for (int i = 0; i < 2; i++)
            rc[i] = mst_event_seq_after_id(p->st[i], q, &s[i]);
        same_rc(op, rc[0], rc[1]);
        CHECK(rc[0] || s[0] == s[1], "event_seq_after_id(%s): memory %" PRIu64 ", sqlite %" PRIu64, q ? q : "NULL",
              s[0], s[1]);
        break;
    }
    case 12: { /* event_trim */
        uint64_t upto = u64small(r);
        for (int i = 0; i < 2; i++)
            rc[i] = mst_event_trim(p->st[i], upto);
        same_rc(op, rc[0], rc[1]);
        wrote(p, rc[0]);
        if (!rc[0] && upto > p->trimmed)
            p->trimmed = upto;
        break;
    }
    case 13: { /* audit_append */
        struct mst_audit a = {0};
        a.id = str(r, b1, sizeof b1, k_auids, 1);
        a.ts = i64(r);
        a.principal = str(r, b2, sizeof b2, k_misc, 1);
        a.action = str(r, b3, sizeof b3, k_misc, 1);
        a.target = str(r, b4, sizeof b4, k_keys, 1);
        a.json = str(r, b6, sizeof b6, k_json, 1);
        a.len = a.json && (u8(r) & 1) ? strlen(a.json) : 0;
        for (int i = 0; i < 2; i++)
            rc[i] = mst_audit_append(p->st[i], &a);
        same_rc(op, rc[0], rc[1]);
        wrote(p, rc[0]);
        break;
    }
    case 14: { /* audit_scan */
        flags = u8(r);
        const char *before = (flags & 1) ? str(r, b1, sizeof b1, k_auids, 1) : NULL;
        size_t limit = (size_t)(u8(r) % 5);
        for (int i = 0; i < 2; i++) {
            o[i].stop_after = (int)((flags >> 1) & 7);
            o[i].st = p->st[i];
            o[i].write_in_cb = (flags & 16) != 0;
            rc[i] = mst_audit_scan(p->st[i], before, limit, audit_cb, &o[i]);
        }
        same_rc(op, rc[0], rc[1]);
        same_out(op, &o[0], &o[1]);
        break;
    }
    case 15: /* begin */
        for (int i = 0; i < 2; i++)
            rc[i] = mst_begin(p->st[i]);
        same_rc(op, rc[0], rc[1]);
        if (!rc[0]) {
            p->txn = 1;
            p->dirty = 0;
        }
        break;
    case 16: /* commit */
    case 17: /* rollback (only when it undoes nothing; memory's rollback keeps writes) */
        if (op == 17 && p->dirty)
            op = 16;
        for (int i = 0; i < 2; i++)
            rc[i] = op == 16 ? mst_commit(p->st[i]) : mst_rollback(p->st[i]);
        same_rc(op, rc[0], rc[1]);
        if (!rc[0]) {
            p->txn = 0;
            p->dirty = 0;
        }
        break;
    }
    free(o[0].b);
    free(o[1].b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 4096)
        return 0; /* long programs add time, not coverage */
    char path[320], err[512];
    snprintf(path, sizeof path, "%s/db-%lu.sqlite", g_dir, ++g_n);
    struct mst_config mc = {.path = NULL, .durability = MST_DUR_NORMAL};
    struct mst_config sc = {.path = path, .durability = MST_DUR_NORMAL};
    prog p;
    memset(&p, 0, sizeof p);
    err[0] = '\0';
    CHECK(mst_memory_ops.open(&mc, &p.st[B_MEM], err, sizeof err) == MST_OK, "memory open: %s", err);
    CHECK(mst_sqlite_ops.open(&sc, &p.st[B_SQL], err, sizeof err) == MST_OK, "sqlite open %s: %s", path, err);
    rd r = {data, size};
    int ops = 0;
    while (r.n && ops < 256) {
        run_op(&p, &r);
        ops++;
    }
    /* a final full read-back of everything must agree too */
    out o[2];
    for (int k = 0; k <= MST_KIND_MAX; k++) {
        memset(o, 0, sizeof o);
        for (int i = 0; i < 2; i++)
            mst_scan(p.st[i], (enum mst_kind)k, NULL, rec_cb, &o[i]);
        same_out(2, &o[0], &o[1]);
        free(o[0].b);
        free(o[1].b);
    }
    memset(o, 0, sizeof o);
    for (int i = 0; i < 2; i++) {
        struct mst_event_query q = {0};
        mst_event_scan(p.st[i], &q, event_cb, &o[i]);
    }
    same_out(9, &o[0], &o[1]);
    free(o[0].b);
    free(o[1].b);
    if (p.txn) {
        mst_commit(p.st[0]);
        mst_commit(p.st[1]);
    }
    mst_close(p.st[0]);
    mst_close(p.st[1]);
    static const char *const sfx[] = {"", "-wal", "-shm", ".lock", "-journal"};
    for (size_t i = 0; i < sizeof sfx / sizeof sfx[0]; i++) {
        char f[340];
        snprintf(f, sizeof f, "%s%s", path, sfx[i]);
        unlink(f);
    }
    return 0;
}
