/* store_memory.c - the "memory" backend: volatile, fast, for tests and benchmarks.
 *
 * Layout, chosen so that every operation the broker does on its hot path is
 * O(1) amortised or O(log n):
 *  - records: one open-addressing hash map per kind, keyed by "owner\0key"
 *    (a NUL separator cannot occur inside a C string, so keys cannot collide);
 *  - turns: a hash map conv_id -> conversation, each holding a growable array
 *    of turns sorted by seq. The broker appends seq = last+1, which is a plain
 *    push; scans binary-search their start and walk the array, so a replay of
 *    100k turns is a pointer walk. A second map turn id -> turn serves turn_get
 *    and the duplicate-id check;
 *  - events: one array sorted by seq with a moving head, so trimming the oldest
 *    events is O(trimmed) and the array is compacted only when the dead prefix
 *    outgrows the live part; a map id -> event serves seq_of;
 *  - audit: an array sorted by id (ULIDs arrive in order, so again a push).
 * Every row is a single allocation holding its public struct (struct mst_turn,
 * ...) followed by copies of its strings, so callbacks get a pointer into the
 * store with no per-call copying, and freeing is one free().
 *
 * Transactions: begin/commit/rollback only track whether a transaction is open
 * (so misuse is reported exactly as the sqlite backend reports it); writes are
 * applied immediately and rollback does NOT undo them. That is enough for tests
 * and benchmarks, and the state stays consistent because every write is
 * complete before it returns.
 *
 * Writes (and begin/commit/rollback) from inside a scan callback are refused
 * with MST_EINVAL: they could reallocate the very array being walked.
 */
#include "store.h"
#include "store_int.h"

#include "mp_ulid.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- hash map */

struct mm_slot {
    uint64_t h;
    const char *k; /* NULL = empty, &mm__tomb = deleted; else borrowed from the value */
    size_t klen;
    void *v;
};

struct mm_map {
    struct mm_slot *s;
    size_t cap;  /* power of two or 0 */
    size_t used; /* live + tombstones: what bounds probe lengths */
    size_t live;
};

static const char mm__tomb = 0;

static uint64_t mm__hash(const char *k, size_t n)
{
    /* FNV-1a, then a final avalanche so that linear probing on the low bits
     * does not cluster for ids that differ only in their last characters. */
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)k[i];
        h *= 1099511628211ull;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h;
}

static struct mm_slot *mm__find(const struct mm_map *m, const char *k, size_t n, uint64_t h)
{
    if (!m->cap)
        return NULL;
    size_t mask = m->cap - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
        struct mm_slot *s = &m->s[i];
        if (!s->k)
            return NULL;
        if (s->k != &mm__tomb && s->h == h && s->klen == n && memcmp(s->k, k, n) == 0)
            return s;
    }
}

static void *mm_get(const struct mm_map *m, const char *k, size_t n)
{
    struct mm_slot *s = mm__find(m, k, n, mm__hash(k, n));
    return s ? s->v : NULL;
}

static int mm__resize(struct mm_map *m, size_t cap)
{
    struct mm_slot *ns = calloc(cap, sizeof *ns);
    if (!ns)
        return MST_ENOMEM;
    for (size_t i = 0; i < m->cap; i++) {
        struct mm_slot *s = &m->s[i];
        if (!s->k || s->k == &mm__tomb)
            continue;
        size_t j = s->h & (cap - 1);
        while (ns[j].k)
            j = (j + 1) & (cap - 1);
        ns[j] = *s;
    }
    free(m->s);
    m->s = ns;
    m->cap = cap;
    m->used = m->live;
    return MST_OK;
}

/* Insert or replace; *old receives the replaced value (NULL if new). k must
 * stay valid as long as the entry exists (it points into v). */
static int mm_put(struct mm_map *m, const char *k, size_t n, void *v, void **old)
{
    uint64_t h = mm__hash(k, n);
    *old = NULL;
    struct mm_slot *s = mm__find(m, k, n, h);
    if (s) {
        *old = s->v;
        s->k = k;
        s->v = v;
        return MST_OK;
    }
    if ((m->used + 1) * 4 > m->cap * 3) {
        /* grow only when live entries need it; otherwise rehashing at the same
         * size just sweeps the tombstones away */
        size_t cap = m->cap ? m->cap : 16;
        while ((m->live + 1) * 2 > cap)
            cap *= 2;
        int rc = mm__resize(m, cap);
        if (rc)
            return rc;
    }
    size_t mask = m->cap - 1, i = h & mask;
    while (m->s[i].k && m->s[i].k != &mm__tomb)
        i = (i + 1) & mask;
    if (!m->s[i].k)
        m->used++;
    m->s[i] = (struct mm_slot){.h = h, .k = k, .klen = n, .v = v};
    m->live++;
    return MST_OK;
}

static void *mm_del(struct mm_map *m, const char *k, size_t n)
{
    struct mm_slot *s = mm__find(m, k, n, mm__hash(k, n));
    if (!s)
        return NULL;
    void *v = s->v;
    s->k = &mm__tomb;
    s->v = NULL;
    m->live--;
    return v;
}

/* ------------------------------------------------------------------- rows */

struct mm_rec {
    struct mst_record r; /* r.owner NULL when stored owner is "" */
    const char *mkey;    /* owner "\0" key */
    size_t mklen;
};

struct mm_turn {
    struct mst_turn t;
};

struct mm_conv {
    char *id;
    struct mm_turn **v; /* sorted by seq */
    size_t n, cap;
};

struct mm_event {
    struct mst_event e;
};

struct mm_audit {
    struct mst_audit a;
};

struct mm_store {
    struct mst_store base;
    char epoch[MP_ULID_LEN + 1];
    char err[256];
    bool in_tx;
    int depth; /* > 0 while a callback runs */

    struct mm_map rec[MST_KIND_MAX + 1];
    struct mm_map convs;
    struct mm_map turn_ids;

    struct mm_event **ev; /* ev[head..n) live, sorted by seq */
    size_t ev_head, ev_n, ev_cap;
    struct mm_map ev_ids;

    struct mm_audit **au; /* sorted by id */
    size_t au_n, au_cap;
};

#define MM(st) ((struct mm_store *)(st))

/* Arena-style packing of a row: the struct, then each string NUL-terminated. */
struct mm_pack {
    char *p;
};

static size_t mm__sz(const char *s) { return s ? strlen(s) + 1 : 0; }

static const char *mm__cp(struct mm_pack *pk, const char *s, size_t n)
{
    if (!s)
        return NULL;
    char *d = pk->p;
    memcpy(d, s, n);
    d[n] = '\0';
    pk->p += n + 1;
    return d;
}

static const char *mm__cps(struct mm_pack *pk, const char *s) { return s ? mm__cp(pk, s, strlen(s)) : NULL; }

/* Doubling growth for the row arrays; a macro so that each array keeps its
 * own element type (no void ** punning). Evaluates to an mst_rc. */
#define MM_GROW(arr, cap, need, rc) ((arr) = mm__grow_to((arr), &(cap), (need), sizeof *(arr), &(rc)), (rc))

static void *mm__grow_to(void *v, size_t *cap, size_t need, size_t elem, int *rc)
{
    *rc = MST_OK;
    if (need <= *cap)
        return v;
    size_t nc = *cap ? *cap * 2 : 16;
    while (nc < need)
        nc *= 2;
    void *nv = realloc(v, nc * elem);
    if (!nv) {
        *rc = MST_ENOMEM;
        return v;
    }
    *cap = nc;
    return nv;
}

static int mm__refuse(struct mm_store *s)
{
    if (s->depth > 0) {
        mst__fmt(s->err, sizeof s->err, "store write from inside a scan callback");
        return MST_EINVAL;
    }
    return MST_OK;
}

/* ------------------------------------------------------------- open/close */

static void mm_close(struct mst_store *st)
{
    struct mm_store *s = MM(st);
    if (!s)
        return;
    for (int k = 0; k <= MST_KIND_MAX; k++) {
        for (size_t i = 0; i < s->rec[k].cap; i++)
            if (s->rec[k].s[i].k && s->rec[k].s[i].k != &mm__tomb)
                free(s->rec[k].s[i].v);
        free(s->rec[k].s);
    }
    for (size_t i = 0; i < s->convs.cap; i++) {
        struct mm_slot *sl = &s->convs.s[i];
        if (!sl->k || sl->k == &mm__tomb)
            continue;
        struct mm_conv *c = sl->v;
        for (size_t j = 0; j < c->n; j++)
            free(c->v[j]);
        free(c->v);
        free(c->id);
        free(c);
    }
    free(s->convs.s);
    free(s->turn_ids.s);
    for (size_t i = s->ev_head; i < s->ev_n; i++)
        free(s->ev[i]);
    free(s->ev);
    free(s->ev_ids.s);
    for (size_t i = 0; i < s->au_n; i++)
        free(s->au[i]);
    free(s->au);
    free(s);
}

static int mm_open(const struct mst_config *cfg, struct mst_store **out, char *errbuf, size_t errlen)
{
    (void)cfg; /* path, durability and retention mean nothing for a volatile store */
    if (!out) {
        mst__fmt(errbuf, errlen, "memory store: out is NULL");
        return MST_EINVAL;
    }
    *out = NULL;
    struct mm_store *s = calloc(1, sizeof *s);
    if (!s) {
        mst__fmt(errbuf, errlen, "memory store: out of memory");
        return MST_ENOMEM;
    }
    s->base.ops = &mst_memory_ops;
    mp_ulid_gen g;
    mp_ulid_init(&g, 0);
    mp_ulid_next(&g, mp_now_ms(), s->epoch);
    *out = &s->base;
    return MST_OK;
}

/* ----------------------------------------------------------- transactions */

static int mm_begin(struct mst_store *st)
{
    struct mm_store *s = MM(st);
    int rc = mm__refuse(s);
    if (rc)
        return rc;
    if (s->in_tx) {
        mst__fmt(s->err, sizeof s->err, "begin: a transaction is already open");
        return MST_EINVAL;
    }
    s->in_tx = true;
    return MST_OK;
}

static int mm_end(struct mst_store *st, const char *what)
{
    struct mm_store *s = MM(st);
    int rc = mm__refuse(s);
    if (rc)
        return rc;
    if (!s->in_tx) {
        mst__fmt(s->err, sizeof s->err, "%s: no transaction is open", what);
        return MST_EINVAL;
    }
    s->in_tx = false;
    return MST_OK;
}

static int mm_commit(struct mst_store *st) { return mm_end(st, "commit"); }
static int mm_rollback(struct mst_store *st) { return mm_end(st, "rollback"); }

static const char *mm_epoch(struct mst_store *st) { return MM(st)->epoch; }
static const char *mm_last_error(struct mst_store *st) { return MM(st)->err; }

/* ---------------------------------------------------------------- records */

static int mm_put_rec(struct mst_store *st, const struct mst_record *r)
{
    struct mm_store *s = MM(st);
    int rc = mm__refuse(s);
    if (rc)
        return rc;
    if (!mst__record_ok(r))
        return MST_EINVAL;
    const char *owner = mst__owner(r->owner);
    size_t ol = strlen(owner), kl = strlen(r->key), jl = mst__jlen(r->json, r->len);
    struct mm_rec *m = malloc(sizeof *m + ol + 1 + kl + 1 + jl + 1);
    if (!m)
        return MST_ENOMEM;
    struct mm_pack pk = {(char *)(m + 1)};
    const char *o = mm__cp(&pk, owner, ol);
    m->r.key = mm__cp(&pk, r->key, kl);
    m->r.json = mm__cp(&pk, r->json, jl);
    m->r.len = jl;
    m->r.kind = r->kind;
    m->r.owner = ol ? o : NULL;
    m->mkey = o;
    m->mklen = ol + 1 + kl;
    void *old = NULL;
    rc = mm_put(&s->rec[r->kind], m->mkey, m->mklen, m, &old);
    if (rc) {
        free(m);
        return rc;
    }
    free(old);
    return MST_OK;
}

/* Builds the "owner\0key" lookup key; returns NULL (and frees nothing) on OOM. */
static char *mm__mkey(const char *owner, const char *key, size_t *n)
{
    owner = mst__owner(owner);
    size_t ol = strlen(owner), kl = strlen(key);
    char *b = malloc(ol + 1 + kl + 1);
    if (!b)
        return NULL;
    memcpy(b, owner, ol + 1);
    memcpy(b + ol + 1, key, kl + 1);
    *n = ol + 1 + kl;
    return b;
}

static int mm_del_rec(struct mst_store *st, enum mst_kind kind, const char *owner, const char *key)
{
    struct mm_store *s = MM(st);
    int rc = mm__refuse(s);
    if (rc)
        return rc;
    if (!mst__kind_ok(kind) || !key)
        return MST_EINVAL;
    size_t n;
    char *k = mm__mkey(owner, key, &n);
    if (!k)
        return MST_ENOMEM;
    void *v = mm_del(&s->rec[kind], k, n);
    free(k);
    if (!v)
        return MST_ENOTFOUND;
    free(v);
    return MST_OK;
}

static int mm__reccmp(const void *a, const void *b)
{
    const struct mm_rec *x = *(const struct mm_rec *const *)a, *y = *(const struct mm_rec *const *)b;
    size_t n = x->mklen < y->mklen ? x->mklen : y->mklen;
    int c = memcmp(x->mkey, y->mkey, n);
    /* owner\0key compares like (owner, key) because '\0' sorts first */
    if (c)
        return c;
    return x->mklen < y->mklen ? -1 : x->mklen > y->mklen;
}

/* Scans return rows sorted by (owner, key), the same order the sqlite backend's
 * primary key gives, so callers never depend on a backend's hash order. */
static int mm_scan(struct mst_store *st, enum mst_kind kind, const char *owner, mst_record_cb cb, void *arg)
{
    struct mm_store *s = MM(st);
    if (!mst__kind_ok(kind) || !cb)
        return MST_EINVAL;
    struct mm_map *m = &s->rec[kind];
    if (!m->live)
        return MST_OK;
    struct mm_rec **v = malloc(m->live * sizeof *v);
    if (!v)
        return MST_ENOMEM;
    size_t n = 0;
    const char *want = owner ? mst__owner(owner) : NULL;
    for (size_t i = 0; i < m->cap; i++) {
        struct mm_slot *sl = &m->s[i];
        if (!sl->k || sl->k == &mm__tomb)
            continue;
        struct mm_rec *r = sl->v;
        if (want && strcmp(r->mkey, want) != 0)
            continue;
        v[n++] = r;
    }
    qsort(v, n, sizeof *v, mm__reccmp);
    s->depth++;
    for (size_t i = 0; i < n; i++)
        if (cb(arg, &v[i]->r))
            break;
    s->depth--;
    free(v);
    return MST_OK;
}

static int mm_get_rec(struct mst_store *st, enum mst_kind kind, const char *owner, const char *key, mst_record_cb cb,
                      void *arg)
{
    struct mm_store *s = MM(st);
    if (!mst__kind_ok(kind) || !key)
        return MST_EINVAL;
    size_t n;
    char *k = mm__mkey(owner, key, &n);
    if (!k)
        return MST_ENOMEM;
    struct mm_rec *r = mm_get(&s->rec[kind], k, n);
    free(k);
    if (!r)
        return MST_ENOTFOUND;
    if (cb) {
        s->depth++;
        (void)cb(arg, &r->r);
        s->depth--;
    }
    return MST_OK;
}

/* ------------------------------------------------------------------ turns */

/* First index whose seq is >= seq (lower bound) in a seq-sorted turn array. */
static size_t mm__turn_lb(struct mm_turn *const *v, size_t n, uint64_t seq)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (v[mid]->t.seq < seq)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static int mm_turn_append(struct mst_store *st, const struct mst_turn *t)
{
    struct mm_store *s = MM(st);
    int rc = mm__refuse(s);
    if (rc)
        return rc;
    if (!mst__turn_ok(t))
        return MST_EINVAL;
    size_t idl = strlen(t->id);
    if (mm_get(&s->turn_ids, t->id, idl))
        return MST_EEXIST;

    size_t cl = strlen(t->conv_id);
    struct mm_conv *c = mm_get(&s->convs, t->conv_id, cl);
    size_t pos = 0;
    if (c) {
        pos = c->n;
        if (c->n && c->v[c->n - 1]->t.seq >= t->seq) {
            pos = mm__turn_lb(c->v, c->n, t->seq);
            if (c->v[pos]->t.seq == t->seq)
                return MST_EEXIST;
        }
    }

    size_t jl = mst__jlen(t->json, t->len);
    struct mm_turn *m = malloc(sizeof *m + idl + 1 + cl + 1 + mm__sz(t->thread_id) + mm__sz(t->participant) +
                               mm__sz(t->content_type) + jl + 1);
    if (!m)
        return MST_ENOMEM;
    struct mm_pack pk = {(char *)(m + 1)};
    m->t.id = mm__cp(&pk, t->id, idl);
    m->t.conv_id = mm__cp(&pk, t->conv_id, cl);
    m->t.thread_id = mm__cps(&pk, t->thread_id);
    m->t.participant = mm__cps(&pk, t->participant);
    m->t.content_type = mm__cps(&pk, t->content_type);
    m->t.json = mm__cp(&pk, t->json, jl);
    m->t.len = jl;
    m->t.seq = t->seq;
    m->t.ts = t->ts;

    if (!c) {
        c = calloc(1, sizeof *c);
        if (!c || !(c->id = strdup(t->conv_id))) {
            free(c);
            free(m);
            return MST_ENOMEM;
        }
        void *old;
        if (mm_put(&s->convs, c->id, cl, c, &old)) {
            free(c->id);
            free(c);
            free(m);
            return MST_ENOMEM;
        }
    }
    void *old;
    if (MM_GROW(c->v, c->cap, c->n + 1, rc) || mm_put(&s->turn_ids, m->t.id, idl, m, &old)) {
        /* an empty conversation left behind is harmless: scans see no turns */
        free(m);
        return MST_ENOMEM;
    }
    memmove(&c->v[pos + 1], &c->v[pos], (c->n - pos) * sizeof *c->v);
    c->v[pos] = m;
    c->n++;
    return MST_OK;
}

static int mm_turn_scan(struct mst_store *st, const struct mst_turn_query *q, mst_turn_cb cb, void *arg)
{
    struct mm_store *s = MM(st);
    if (!q || !q->conv_id || !cb)
        return MST_EINVAL;
    struct mm_conv *c = mm_get(&s->convs, q->conv_id, strlen(q->conv_id));
    if (!c || !c->n)
        return MST_OK;
    size_t sent = 0;
    s->depth++;
    if (!q->desc) {
        size_t i = q->after_seq == UINT64_MAX ? c->n : mm__turn_lb(c->v, c->n, q->after_seq + 1);
        for (; i < c->n; i++) {
            const struct mst_turn *t = &c->v[i]->t;
            if (q->before_seq && t->seq >= q->before_seq)
                break;
            if (q->thread_id && (!t->thread_id || strcmp(t->thread_id, q->thread_id) != 0))
                continue;
            if (cb(arg, t) || (q->limit && ++sent == q->limit))
                break;
        }
    } else {
        size_t i = q->before_seq ? mm__turn_lb(c->v, c->n, q->before_seq) : c->n;
        while (i-- > 0) {
            const struct mst_turn *t = &c->v[i]->t;
            if (t->seq <= q->after_seq)
                break;
            if (q->thread_id && (!t->thread_id || strcmp(t->thread_id, q->thread_id) != 0))
                continue;
            if (cb(arg, t) || (q->limit && ++sent == q->limit))
                break;
        }
    }
    s->depth--;
    return MST_OK;
}

static int mm_turn_get(struct mst_store *st, const char *turn_id, mst_turn_cb cb, void *arg)
{
    struct mm_store *s = MM(st);
    if (!turn_id)
        return MST_EINVAL;
    struct mm_turn *t = mm_get(&s->turn_ids, turn_id, strlen(turn_id));
    if (!t)
        return MST_ENOTFOUND;
    if (cb) {
        s->depth++;
        (void)cb(arg, &t->t);
        s->depth--;
    }
    return MST_OK;
}

static int mm_turn_last_seq(struct mst_store *st, const char *conv_id, uint64_t *seq)
{
    if (!conv_id || !seq)
        return MST_EINVAL;
    struct mm_conv *c = mm_get(&MM(st)->convs, conv_id, strlen(conv_id));
    *seq = c && c->n ? c->v[c->n - 1]->t.seq : 0;
    return MST_OK;
}

static int mm_turn_count(struct mst_store *st, const char *conv_id, uint64_t *count)
{
    if (!conv_id || !count)
        return MST_EINVAL;
    struct mm_conv *c = mm_get(&MM(st)->convs, conv_id, strlen(conv_id));
    *count = c ? c->n : 0;
    return MST_OK;
}

/* ----------------------------------------------------------------- events */

static size_t mm__ev_lb(struct mm_store *s, uint64_t seq)
{
    size_t lo = s->ev_head, hi = s->ev_n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (s->ev[mid]->e.seq < seq)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static int mm_event_append(struct mst_store *st, const struct mst_event *e)
{
    struct mm_store *s = MM(st);
    int rc = mm__refuse(s);
    if (rc)
        return rc;
    if (!mst__event_ok(e))
        return MST_EINVAL;
    size_t pos = s->ev_n;
    if (s->ev_n > s->ev_head && s->ev[s->ev_n - 1]->e.seq >= e->seq) {
        pos = mm__ev_lb(s, e->seq);
        if (s->ev[pos]->e.seq == e->seq)
            return MST_EEXIST;
    }
    size_t idl = strlen(e->id);
    if (mm_get(&s->ev_ids, e->id, idl))
        return MST_EEXIST;

    size_t jl = mst__jlen(e->json, e->len);
    struct mm_event *m = malloc(sizeof *m + idl + 1 + mm__sz(e->type) + mm__sz(e->conv_id) + jl + 1);
    if (!m)
        return MST_ENOMEM;
    struct mm_pack pk = {(char *)(m + 1)};
    m->e.id = mm__cp(&pk, e->id, idl);
    m->e.type = mm__cps(&pk, e->type);
    m->e.conv_id = mm__cps(&pk, e->conv_id);
    m->e.json = mm__cp(&pk, e->json, jl);
    m->e.len = jl;
    m->e.seq = e->seq;
    m->e.ts = e->ts;

    void *old;
    if (MM_GROW(s->ev, s->ev_cap, s->ev_n + 1, rc) || mm_put(&s->ev_ids, m->e.id, idl, m, &old)) {
        free(m);
        return MST_ENOMEM;
    }
    memmove(&s->ev[pos + 1], &s->ev[pos], (s->ev_n - pos) * sizeof *s->ev);
    s->ev[pos] = m;
    s->ev_n++;
    return MST_OK;
}

static int mm_event_scan(struct mst_store *st, const struct mst_event_query *q, mst_event_cb cb, void *arg)
{
    struct mm_store *s = MM(st);
    if (!q || !cb)
        return MST_EINVAL;
    size_t i = q->after_seq == UINT64_MAX ? s->ev_n : mm__ev_lb(s, q->after_seq + 1), sent = 0;
    s->depth++;
    for (; i < s->ev_n; i++) {
        const struct mst_event *e = &s->ev[i]->e;
        if (q->conv_id && (!e->conv_id || strcmp(e->conv_id, q->conv_id) != 0))
            continue;
        if (cb(arg, e) || (q->limit && ++sent == q->limit))
            break;
    }
    s->depth--;
    return MST_OK;
}

static int mm_event_last(struct mst_store *st, uint64_t *seq, char id_out[32])
{
    struct mm_store *s = MM(st);
    if (!seq || !id_out)
        return MST_EINVAL;
    if (s->ev_n == s->ev_head) {
        *seq = 0;
        id_out[0] = '\0';
        return MST_OK;
    }
    const struct mst_event *e = &s->ev[s->ev_n - 1]->e;
    *seq = e->seq;
    snprintf(id_out, 32, "%s", e->id);
    return MST_OK;
}

static int mm_event_seq_of(struct mst_store *st, const char *event_id, uint64_t *seq)
{
    if (!event_id || !seq)
        return MST_EINVAL;
    struct mm_event *e = mm_get(&MM(st)->ev_ids, event_id, strlen(event_id));
    if (!e)
        return MST_ENOTFOUND;
    *seq = e->e.seq;
    return MST_OK;
}

static int mm_event_seq_after_id(struct mst_store *st, const char *event_id, uint64_t *seq)
{
    struct mm_store *s = MM(st);
    if (!event_id || !seq)
        return MST_EINVAL;
    /* retained events [ev_head, ev_n) are in seq order, and ids sort the same way */
    size_t lo = s->ev_head, hi = s->ev_n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (strcmp(s->ev[mid]->e.id, event_id) <= 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == s->ev_n)
        return MST_ENOTFOUND;
    *seq = s->ev[lo]->e.seq - 1;
    return MST_OK;
}

static int mm_event_first_seq(struct mst_store *st, uint64_t *seq)
{
    struct mm_store *s = MM(st);
    if (!seq)
        return MST_EINVAL;
    *seq = s->ev_n > s->ev_head ? s->ev[s->ev_head]->e.seq : 0;
    return MST_OK;
}

static int mm_event_trim(struct mst_store *st, uint64_t upto_seq)
{
    struct mm_store *s = MM(st);
    int rc = mm__refuse(s);
    if (rc)
        return rc;
    size_t end = upto_seq == UINT64_MAX ? s->ev_n : mm__ev_lb(s, upto_seq + 1);
    for (size_t i = s->ev_head; i < end; i++) {
        (void)mm_del(&s->ev_ids, s->ev[i]->e.id, strlen(s->ev[i]->e.id));
        free(s->ev[i]);
    }
    s->ev_head = end;
    /* compact once the dead prefix is larger than what is alive, so the array
     * stays O(live) and trimming stays amortised O(1) per event */
    if (s->ev_head > 64 && s->ev_head * 2 > s->ev_n) {
        memmove(s->ev, s->ev + s->ev_head, (s->ev_n - s->ev_head) * sizeof *s->ev);
        s->ev_n -= s->ev_head;
        s->ev_head = 0;
    } else if (s->ev_head == s->ev_n) {
        s->ev_head = s->ev_n = 0;
    }
    return MST_OK;
}

/* ------------------------------------------------------------------ audit */

static size_t mm__au_lb(struct mm_store *s, const char *id)
{
    size_t lo = 0, hi = s->au_n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (strcmp(s->au[mid]->a.id, id) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static int mm_audit_append(struct mst_store *st, const struct mst_audit *a)
{
    struct mm_store *s = MM(st);
    int rc = mm__refuse(s);
    if (rc)
        return rc;
    if (!mst__audit_ok(a))
        return MST_EINVAL;
    size_t pos = s->au_n;
    if (s->au_n && strcmp(s->au[s->au_n - 1]->a.id, a->id) >= 0) {
        pos = mm__au_lb(s, a->id);
        if (strcmp(s->au[pos]->a.id, a->id) == 0)
            return MST_EEXIST;
    }
    size_t jl = mst__jlen(a->json, a->len);
    struct mm_audit *m = malloc(sizeof *m + mm__sz(a->id) + mm__sz(a->principal) + mm__sz(a->action) +
                                mm__sz(a->target) + jl + 1);
    if (!m)
        return MST_ENOMEM;
    struct mm_pack pk = {(char *)(m + 1)};
    m->a.id = mm__cps(&pk, a->id);
    m->a.principal = mm__cps(&pk, a->principal);
    m->a.action = mm__cps(&pk, a->action);
    m->a.target = mm__cps(&pk, a->target);
    m->a.json = mm__cp(&pk, a->json, jl);
    m->a.len = jl;
    m->a.ts = a->ts;
    if (MM_GROW(s->au, s->au_cap, s->au_n + 1, rc)) {
        free(m);
        return MST_ENOMEM;
    }
    memmove(&s->au[pos + 1], &s->au[pos], (s->au_n - pos) * sizeof *s->au);
    s->au[pos] = m;
    s->au_n++;
    return MST_OK;
}

static int mm_audit_scan(struct mst_store *st, const char *before_id, size_t limit, mst_audit_cb cb, void *arg)
{
    struct mm_store *s = MM(st);
    if (!cb)
        return MST_EINVAL;
    size_t i = before_id ? mm__au_lb(s, before_id) : s->au_n, sent = 0;
    s->depth++;
    while (i-- > 0) {
        if (cb(arg, &s->au[i]->a) || (limit && ++sent == limit))
            break;
    }
    s->depth--;
    return MST_OK;
}

const struct mst_ops mst_memory_ops = {
    .version = MST_OPS_V1,
    .name = "memory",
    .open = mm_open,
    .close = mm_close,
    .begin = mm_begin,
    .commit = mm_commit,
    .rollback = mm_rollback,
    .epoch = mm_epoch,
    .put = mm_put_rec,
    .del = mm_del_rec,
    .scan = mm_scan,
    .get = mm_get_rec,
    .turn_append = mm_turn_append,
    .turn_scan = mm_turn_scan,
    .turn_get = mm_turn_get,
    .turn_last_seq = mm_turn_last_seq,
    .turn_count = mm_turn_count,
    .event_append = mm_event_append,
    .event_scan = mm_event_scan,
    .event_last = mm_event_last,
    .event_seq_of = mm_event_seq_of,
    .event_first_seq = mm_event_first_seq,
    .event_seq_after_id = mm_event_seq_after_id,
    .event_trim = mm_event_trim,
    .audit_append = mm_audit_append,
    .audit_scan = mm_audit_scan,
    .last_error = mm_last_error,
};
