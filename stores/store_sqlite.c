/* store_sqlite.c - the "sqlite" backend: the broker's default, durable store.
 *
 * Mechanics (C-HABITS habit 13):
 *  - one connection, WAL journal. MST_DUR_FULL: every commit is durable once
 *    sq_sync has fdatasync'd the WAL (the broker's sync thread does, before it
 *    acknowledges: store.h "deferred durability"); it then survives process
 *    crash, OS crash and power loss. synchronous=NORMAL (MST_DUR_NORMAL) fsyncs only at
 *    checkpoints: still safe against a *process* crash (the WAL frames are in
 *    the OS page cache), but an OS crash or power loss can lose the last
 *    transactions committed since the previous checkpoint (the database itself
 *    stays consistent). That is the documented loss window of NORMAL;
 *  - every statement is prepared once at open (SQLITE_PREPARE_PERSISTENT, which
 *    tells SQLite they are long-lived) and is bound/stepped/reset per call;
 *  - group commit: begin/commit are BEGIN IMMEDIATE / COMMIT and the broker
 *    batches a whole loop pass into one transaction, so the cost of an fsync is
 *    shared by hundreds of writes. IMMEDIATE takes the write lock up front, so a
 *    transaction can never fail half-way with SQLITE_BUSY on its first write;
 *  - a `meta` table carries schema_version and the epoch; the version is checked
 *    at open and older databases climb a migration ladder;
 *  - a PATH.lock file held with flock() keeps a second broker off the same
 *    database: SQLite's own locking would happily let two processes interleave
 *    their writes, which would break the per-conversation seq the broker
 *    assigns from memory;
 *  - close rolls back an unfinished transaction, finalizes, checkpoints with
 *    TRUNCATE (so a clean shutdown leaves a single file), closes, unlocks.
 *
 * Writes and begin/commit/rollback from inside a scan callback are refused with
 * MST_EINVAL (same rule as the memory backend); so is re-entering the scan that
 * is running (one prepared statement cannot run twice at the same time).
 */
#include "store.h"
#include "store_int.h"

#include "mp_ulid.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

/* Bump when the schema changes and add the step to sq__migrations. */
#define SQ_SCHEMA_VERSION 2

static const char sq__schema_v1[] =
    "CREATE TABLE meta(k TEXT PRIMARY KEY NOT NULL, v TEXT NOT NULL) WITHOUT ROWID;"
    /* records: large-ish JSON rows, so a rowid table plus a unique key index
     * (WITHOUT ROWID is only a win for small rows) */
    "CREATE TABLE records(kind INTEGER NOT NULL, owner TEXT NOT NULL, key TEXT NOT NULL,"
    " json TEXT NOT NULL, PRIMARY KEY(kind, owner, key));"
    /* turns: appended in rowid order; (conv_id, seq) serves scans, last_seq and
     * count as index range lookups, id serves turn_get */
    "CREATE TABLE turns(conv_id TEXT NOT NULL, seq INTEGER NOT NULL, id TEXT NOT NULL,"
    " thread_id TEXT, participant TEXT, content_type TEXT, ts INTEGER NOT NULL, json TEXT NOT NULL);"
    "CREATE UNIQUE INDEX turns_conv_seq ON turns(conv_id, seq);"
    "CREATE UNIQUE INDEX turns_id ON turns(id);"
    /* events: seq is the rowid, so scans by seq, last, first and trim walk the
     * table b-tree itself; the conv index is partial because most events
     * (agent_*, scope_*) have no conversation */
    "CREATE TABLE events(seq INTEGER PRIMARY KEY, id TEXT NOT NULL, type TEXT NOT NULL, conv_id TEXT,"
    " ts INTEGER NOT NULL, json TEXT NOT NULL);"
    "CREATE UNIQUE INDEX events_id ON events(id);"
    "CREATE INDEX events_conv ON events(conv_id, seq) WHERE conv_id IS NOT NULL;"
    "CREATE TABLE audit(id TEXT NOT NULL, ts INTEGER NOT NULL, principal TEXT, action TEXT, target TEXT,"
    " json TEXT NOT NULL);"
    "CREATE UNIQUE INDEX audit_id ON audit(id);";

/* sq__migrations[v - 1] upgrades a database from version v to v + 1, each run in
 * the same transaction as the version bump. Empty while v1 is the only schema;
 * the slot keeps the ladder's shape visible. */
static const char *const sq__migrations[] = {
    /* 1 -> 2: an event that embeds the turn appended just before it in the
     * same transaction (mail.turn.added does) stores itself without those
     * bytes, plus where they go (turn_off) and which turn (turn_seq, in the
     * event's conversation); scans join them back. A third less written per
     * turn. The (conv_id, seq) index on events goes: the broker never scans
     * events by conversation, and a conversation scan still works by
     * walking the log. */
    "DROP INDEX events_conv;"
    "ALTER TABLE events ADD COLUMN turn_seq INTEGER;"
    "ALTER TABLE events ADD COLUMN turn_off INTEGER;",
};

enum sq_stmt {
    SQ_BEGIN,
    SQ_COMMIT,
    SQ_ROLLBACK,
    SQ_REC_PUT,
    SQ_REC_DEL,
    SQ_REC_GET,
    SQ_REC_SCAN,
    SQ_REC_SCAN_OWNER,
    SQ_TURN_INS,
    SQ_TURN_ASC,
    SQ_TURN_DESC,
    SQ_TURN_GET,
    SQ_TURN_LAST,
    SQ_TURN_COUNT,
    SQ_EV_INS,
    SQ_EV_SCAN,
    SQ_EV_SCAN_CONV,
    SQ_EV_LAST,
    SQ_EV_SEQ_OF,
    SQ_EV_FIRST,
    SQ_EV_AFTER_ID,
    SQ_EV_TRIM,
    SQ_AU_INS,
    SQ_AU_SCAN,
    SQ_AU_SCAN_BEFORE,
    SQ_NSTMT
};

#define SQ_TURN_COLS "id, conv_id, seq, thread_id, participant, content_type, ts, json"
#define SQ_EV_COLS "seq, id, type, conv_id, ts, json"
#define SQ_AU_COLS "id, ts, principal, action, target, json"
/* an event row with the turn it embeds (schema v2) */
#define SQ_EV_SEL                                                                                                      \
    "SELECT e.seq, e.id, e.type, e.conv_id, e.ts, e.json, e.turn_off, t.json FROM events e LEFT JOIN turns t"        \
    " ON e.turn_seq IS NOT NULL AND t.conv_id = e.conv_id AND t.seq = e.turn_seq"

/* Separate statements where a single one with "(?1 IS NULL OR col = ?1)" would
 * stop the planner from using the partial / prefix index it needs. */
static const char *const sq__sql[SQ_NSTMT] = {
    [SQ_BEGIN] = "BEGIN IMMEDIATE",
    [SQ_COMMIT] = "COMMIT",
    [SQ_ROLLBACK] = "ROLLBACK",
    [SQ_REC_PUT] = "INSERT INTO records(kind, owner, key, json) VALUES(?1, ?2, ?3, ?4)"
                   " ON CONFLICT(kind, owner, key) DO UPDATE SET json = excluded.json",
    [SQ_REC_DEL] = "DELETE FROM records WHERE kind = ?1 AND owner = ?2 AND key = ?3",
    [SQ_REC_GET] = "SELECT owner, key, json FROM records WHERE kind = ?1 AND owner = ?2 AND key = ?3",
    [SQ_REC_SCAN] = "SELECT owner, key, json FROM records WHERE kind = ?1 ORDER BY owner, key",
    [SQ_REC_SCAN_OWNER] = "SELECT owner, key, json FROM records WHERE kind = ?1 AND owner = ?2 ORDER BY key",
    [SQ_TURN_INS] = "INSERT INTO turns(" SQ_TURN_COLS ") VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    /* the thread filter is applied on the (conv_id, seq) range; LIMIT counts
     * matching rows only */
    [SQ_TURN_ASC] = "SELECT " SQ_TURN_COLS " FROM turns WHERE conv_id = ?1 AND seq > ?2 AND seq <= ?3"
                    " AND (?4 IS NULL OR thread_id = ?4) ORDER BY seq ASC LIMIT ?5",
    [SQ_TURN_DESC] = "SELECT " SQ_TURN_COLS " FROM turns WHERE conv_id = ?1 AND seq > ?2 AND seq <= ?3"
                     " AND (?4 IS NULL OR thread_id = ?4) ORDER BY seq DESC LIMIT ?5",
    [SQ_TURN_GET] = "SELECT " SQ_TURN_COLS " FROM turns WHERE id = ?1",
    [SQ_TURN_LAST] = "SELECT seq FROM turns WHERE conv_id = ?1 ORDER BY seq DESC LIMIT 1",
    [SQ_TURN_COUNT] = "SELECT count(*) FROM turns WHERE conv_id = ?1",
    [SQ_EV_INS] = "INSERT INTO events(" SQ_EV_COLS ", turn_seq, turn_off) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    [SQ_EV_SCAN] = SQ_EV_SEL " WHERE e.seq > ?1 ORDER BY e.seq LIMIT ?2",
    [SQ_EV_SCAN_CONV] = SQ_EV_SEL " WHERE e.conv_id = ?1 AND e.seq > ?2 ORDER BY e.seq LIMIT ?3",
    [SQ_EV_LAST] = "SELECT seq, id FROM events ORDER BY seq DESC LIMIT 1",
    [SQ_EV_SEQ_OF] = "SELECT seq FROM events WHERE id = ?1",
    [SQ_EV_FIRST] = "SELECT seq FROM events ORDER BY seq ASC LIMIT 1",
    [SQ_EV_AFTER_ID] = "SELECT seq FROM events WHERE id > ?1 ORDER BY id ASC LIMIT 1",
    [SQ_EV_TRIM] = "DELETE FROM events WHERE seq <= ?1",
    [SQ_AU_INS] = "INSERT INTO audit(" SQ_AU_COLS ") VALUES(?1, ?2, ?3, ?4, ?5, ?6)",
    [SQ_AU_SCAN] = "SELECT " SQ_AU_COLS " FROM audit ORDER BY id DESC LIMIT ?1",
    [SQ_AU_SCAN_BEFORE] = "SELECT " SQ_AU_COLS " FROM audit WHERE id < ?1 ORDER BY id DESC LIMIT ?2",
};

struct sq_store {
    struct mst_store base;
    sqlite3 *db;
    sqlite3_stmt *stmt[SQ_NSTMT];
    char *path;
    int lock_fd;
    int wal_fd;      /* durability full: our descriptor of the WAL, fdatasync'd by sq_sync; else -1 */
    bool in_tx;      /* the caller's view: begin() succeeded, commit/rollback not yet called */
    bool tx_aborted; /* SQLite rolled the transaction back on its own (I/O error, disk full) */
    int depth;       /* > 0 while a callback runs */
    struct {         /* the last turn appended in this transaction (events that embed it) */
        bool valid;
        uint64_t seq;
        char *conv, *json;
        size_t len, cap, conv_cap;
    } lt;
    char *cut;       /* scratch: an event without its turn */
    size_t cut_cap;
    char epoch[64];
    char err[512];
    struct sq_ckpt { /* background checkpoints (see sq__ckpt_start) */
        pthread_t th;
        pthread_mutex_t mu;
        pthread_cond_t cv;
        bool started, want, stop, busy;
        int backfilled; /* WAL frames the thread's last checkpoint copied */
        sqlite3 *db;    /* the thread's own connection */
    } ck;
};

#define SQ(st) ((struct sq_store *)(st))

/* ------------------------------------------------------------------ errors */

/* Translate at the boundary (habit 2) and remember SQLite's own words, which are
 * what an operator needs ("disk I/O error", "database or disk is full", ...). */
static int sq__fail(struct sq_store *s, int src, const char *what)
{
    mst__fmt(s->err, sizeof s->err, "%s: %s", what, s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(src));
    /* some errors (IOERR, FULL, NOMEM) make SQLite roll back the whole
     * transaction; the caller still believes it is open, so remember that the
     * group is lost and refuse to pretend otherwise at commit */
    if (s->in_tx && s->db && sqlite3_get_autocommit(s->db))
        s->tx_aborted = true;
    switch (src & 0xff) {
    case SQLITE_CONSTRAINT: return MST_EEXIST;
    case SQLITE_NOMEM: return MST_ENOMEM;
    case SQLITE_BUSY:
    case SQLITE_LOCKED: return MST_EBUSY;
    case SQLITE_NOTADB:
    case SQLITE_CORRUPT: return MST_ESCHEMA;
    case SQLITE_TOOBIG:
    case SQLITE_RANGE:
    case SQLITE_MISMATCH: return MST_EINVAL;
    default: return MST_EIO;
    }
}

/* Guard shared by every write: no writes from callbacks, none into a
 * transaction SQLite already rolled back. */
static int sq__wcheck(struct sq_store *s)
{
    if (s->depth > 0) {
        mst__fmt(s->err, sizeof s->err, "store write from inside a scan callback");
        return MST_EINVAL;
    }
    if (s->tx_aborted) {
        mst__fmt(s->err, sizeof s->err, "the current transaction was rolled back after an error; "
                                        "call commit or rollback first");
        return MST_EIO;
    }
    return MST_OK;
}

/* ------------------------------------------------------------- statements */

static int sq__bind_text(sqlite3_stmt *st, int i, const char *s)
{
    return s ? sqlite3_bind_text(st, i, s, -1, SQLITE_STATIC) : sqlite3_bind_null(st, i);
}

/* Text is bound SQLITE_STATIC: it is borrowed for the call (store.h) and every
 * statement is reset before the call returns. */
static int sq__bind_json(sqlite3_stmt *st, int i, const char *json, size_t len)
{
    return sqlite3_bind_text64(st, i, json, mst__jlen(json, len), SQLITE_STATIC, SQLITE_UTF8);
}

/* Run a write statement whose parameters are bound; SQLITE_DONE expected. */
static int sq__run(struct sq_store *s, enum sq_stmt k, int brc, const char *what)
{
    sqlite3_stmt *st = s->stmt[k];
    int rc = brc == SQLITE_OK ? sqlite3_step(st) : brc;
    int out = rc == SQLITE_DONE ? MST_OK : sq__fail(s, rc, what);
    sqlite3_reset(st);
    return out;
}

/* limit 0 (= none) becomes -1, SQLite's "no limit" */
static sqlite3_int64 sq__limit(size_t limit) { return limit && limit <= INT64_MAX ? (sqlite3_int64)limit : -1; }

static const char *sq__col(sqlite3_stmt *st, int i) { return (const char *)sqlite3_column_text(st, i); }

/* Refuse to start a statement that is already running: a callback re-entering
 * the same scan would otherwise reset the outer iteration under its feet. */
static int sq__reentrant(struct sq_store *s, enum sq_stmt k)
{
    if (sqlite3_stmt_busy(s->stmt[k])) {
        mst__fmt(s->err, sizeof s->err, "re-entrant use of a running scan from its callback");
        return 1;
    }
    return 0;
}

/* ----------------------------------------------------------- transactions */

static int sq_begin(struct mst_store *st)
{
    struct sq_store *s = SQ(st);
    int rc = sq__wcheck(s);
    if (rc)
        return rc;
    if (s->in_tx) {
        mst__fmt(s->err, sizeof s->err, "begin: a transaction is already open");
        return MST_EINVAL;
    }
    rc = sq__run(s, SQ_BEGIN, SQLITE_OK, "begin");
    s->lt.valid = false;
    if (rc == MST_OK)
        s->in_tx = true;
    return rc;
}

static int sq_commit(struct mst_store *st)
{
    struct sq_store *s = SQ(st);
    if (s->depth > 0) {
        mst__fmt(s->err, sizeof s->err, "commit from inside a scan callback");
        return MST_EINVAL;
    }
    if (!s->in_tx) {
        mst__fmt(s->err, sizeof s->err, "commit: no transaction is open");
        return MST_EINVAL;
    }
    if (s->tx_aborted) {
        s->in_tx = s->tx_aborted = s->lt.valid = false;
        mst__fmt(s->err, sizeof s->err, "commit: the transaction had already been rolled back after an error");
        return MST_EIO;
    }
    int rc = sq__run(s, SQ_COMMIT, SQLITE_OK, "commit");
    if (rc != MST_OK && !sqlite3_get_autocommit(s->db)) {
        /* COMMIT failed but left the transaction open (e.g. SQLITE_BUSY): roll
         * back so that the store is in a known state and the next begin works.
         * The writes of this group are lost, which the error return says. */
        sqlite3_reset(s->stmt[SQ_ROLLBACK]);
        (void)sqlite3_step(s->stmt[SQ_ROLLBACK]);
        sqlite3_reset(s->stmt[SQ_ROLLBACK]);
    }
    s->in_tx = s->tx_aborted = s->lt.valid = false;
    return rc;
}

static int sq_rollback(struct mst_store *st)
{
    struct sq_store *s = SQ(st);
    if (s->depth > 0) {
        mst__fmt(s->err, sizeof s->err, "rollback from inside a scan callback");
        return MST_EINVAL;
    }
    if (!s->in_tx) {
        mst__fmt(s->err, sizeof s->err, "rollback: no transaction is open");
        return MST_EINVAL;
    }
    int rc = MST_OK;
    if (!sqlite3_get_autocommit(s->db))
        rc = sq__run(s, SQ_ROLLBACK, SQLITE_OK, "rollback");
    s->in_tx = s->tx_aborted = s->lt.valid = false;
    return rc;
}

static const char *sq_epoch(struct mst_store *st) { return SQ(st)->epoch; }
static const char *sq_last_error(struct mst_store *st) { return SQ(st)->err; }

/* ---------------------------------------------------------------- records */

static int sq_put(struct mst_store *st, const struct mst_record *r)
{
    struct sq_store *s = SQ(st);
    int rc = sq__wcheck(s);
    if (rc)
        return rc;
    if (!mst__record_ok(r))
        return MST_EINVAL;
    sqlite3_stmt *q = s->stmt[SQ_REC_PUT];
    int b = sqlite3_bind_int(q, 1, (int)r->kind);
    if (!b) b = sq__bind_text(q, 2, mst__owner(r->owner));
    if (!b) b = sq__bind_text(q, 3, r->key);
    if (!b) b = sq__bind_json(q, 4, r->json, r->len);
    return sq__run(s, SQ_REC_PUT, b, "put record");
}

static int sq_del(struct mst_store *st, enum mst_kind kind, const char *owner, const char *key)
{
    struct sq_store *s = SQ(st);
    int rc = sq__wcheck(s);
    if (rc)
        return rc;
    if (!mst__kind_ok(kind) || !key)
        return MST_EINVAL;
    sqlite3_stmt *q = s->stmt[SQ_REC_DEL];
    int b = sqlite3_bind_int(q, 1, (int)kind);
    if (!b) b = sq__bind_text(q, 2, mst__owner(owner));
    if (!b) b = sq__bind_text(q, 3, key);
    rc = sq__run(s, SQ_REC_DEL, b, "delete record");
    if (rc == MST_OK && sqlite3_changes(s->db) == 0)
        return MST_ENOTFOUND;
    return rc;
}

/* Step a bound SELECT, handing rows to `row`; stops when it returns non-zero.
 * Returns MST_OK, or the translated error. found (optional) counts rows seen. */
typedef int (*sq_row_fn)(sqlite3_stmt *q, void *cb, void *arg);

static int sq__select(struct sq_store *s, enum sq_stmt k, int brc, sq_row_fn row, void *cb, void *arg,
                      size_t *found, const char *what)
{
    sqlite3_stmt *q = s->stmt[k];
    int rc = brc;
    size_t n = 0;
    if (rc == SQLITE_OK) {
        s->depth++;
        while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
            n++;
            if (row(q, cb, arg))
                break;
        }
        s->depth--;
    }
    int out = (rc == SQLITE_ROW || rc == SQLITE_DONE) ? MST_OK : sq__fail(s, rc, what);
    sqlite3_reset(q);
    if (found)
        *found = n;
    return out;
}

/* what a record scan hands its row function: the records table does not
 * repeat the kind in the SELECT, the caller knows it */
struct sq_reccb {
    mst_record_cb cb;
    enum mst_kind kind;
};

static int sq__rec_row(sqlite3_stmt *q, void *cb, void *arg)
{
    const char *owner = sq__col(q, 0);
    struct mst_record r = {
        .kind = (enum mst_kind)0,
        .owner = owner && *owner ? owner : NULL,
        .key = sq__col(q, 1),
        .json = sq__col(q, 2),
        .len = (size_t)sqlite3_column_bytes(q, 2),
    };
    const struct sq_reccb *c = cb;
    r.kind = c->kind;
    return c->cb ? c->cb(arg, &r) : 1;
}

static int sq_scan(struct mst_store *st, enum mst_kind kind, const char *owner, mst_record_cb cb, void *arg)
{
    struct sq_store *s = SQ(st);
    if (!mst__kind_ok(kind) || !cb)
        return MST_EINVAL;
    enum sq_stmt k = owner ? SQ_REC_SCAN_OWNER : SQ_REC_SCAN;
    if (sq__reentrant(s, k))
        return MST_EINVAL;
    sqlite3_stmt *q = s->stmt[k];
    int b = sqlite3_bind_int(q, 1, (int)kind);
    if (!b && owner) b = sq__bind_text(q, 2, owner);
    struct sq_reccb c = {cb, kind};
    return sq__select(s, k, b, sq__rec_row, &c, arg, NULL, "scan records");
}

static int sq_get(struct mst_store *st, enum mst_kind kind, const char *owner, const char *key, mst_record_cb cb,
                  void *arg)
{
    struct sq_store *s = SQ(st);
    if (!mst__kind_ok(kind) || !key)
        return MST_EINVAL;
    if (sq__reentrant(s, SQ_REC_GET))
        return MST_EINVAL;
    sqlite3_stmt *q = s->stmt[SQ_REC_GET];
    int b = sqlite3_bind_int(q, 1, (int)kind);
    if (!b) b = sq__bind_text(q, 2, mst__owner(owner));
    if (!b) b = sq__bind_text(q, 3, key);
    struct sq_reccb c = {cb, kind};
    size_t n;
    int rc = sq__select(s, SQ_REC_GET, b, sq__rec_row, &c, arg, &n, "get record");
    return rc ? rc : n ? MST_OK : MST_ENOTFOUND;
}

/* ------------------------------------------------------------------ turns */

static int sq__reserve(char **buf, size_t *cap, size_t n);
static int sq__keep(char **buf, size_t *cap, const char *src, size_t n);

static int sq_turn_append(struct mst_store *st, const struct mst_turn *t)
{
    struct sq_store *s = SQ(st);
    int rc = sq__wcheck(s);
    if (rc)
        return rc;
    if (!mst__turn_ok(t))
        return MST_EINVAL;
    sqlite3_stmt *q = s->stmt[SQ_TURN_INS];
    int b = sq__bind_text(q, 1, t->id);
    if (!b) b = sq__bind_text(q, 2, t->conv_id);
    if (!b) b = sqlite3_bind_int64(q, 3, (sqlite3_int64)t->seq);
    if (!b) b = sq__bind_text(q, 4, t->thread_id);
    if (!b) b = sq__bind_text(q, 5, t->participant);
    if (!b) b = sq__bind_text(q, 6, t->content_type);
    if (!b) b = sqlite3_bind_int64(q, 7, t->ts);
    if (!b) b = sq__bind_json(q, 8, t->json, t->len);
    rc = sq__run(s, SQ_TURN_INS, b, "append turn");
    s->lt.valid = false;
    if (rc == MST_OK && s->in_tx) /* an event of this transaction may embed it */
        s->lt.valid = sq__keep(&s->lt.json, &s->lt.cap, t->json, mst__jlen(t->json, t->len)) == 0 &&
                      sq__keep(&s->lt.conv, &s->lt.conv_cap, t->conv_id, strlen(t->conv_id) + 1) == 0;
    if (s->lt.valid) {
        s->lt.len = mst__jlen(t->json, t->len);
        s->lt.seq = t->seq;
    }
    return rc;
}

/* A reusable buffer of at least n bytes. */
static int sq__reserve(char **buf, size_t *cap, size_t n)
{
    if (n > *cap) {
        char *nb = realloc(*buf, n);
        if (!nb)
            return -1;
        *buf = nb;
        *cap = n;
    }
    return 0;
}

/* Copy n bytes into a reusable buffer. The buffer is allocated even for n = 0
 * (an empty turn text): memcpy and the later memchr / memcmp on it need a
 * pointer, not NULL. */
static int sq__keep(char **buf, size_t *cap, const char *src, size_t n)
{
    if (sq__reserve(buf, cap, n ? n : 1))
        return -1;
    if (n)
        memcpy(*buf, src, n);
    return 0;
}

static int sq__turn_row(sqlite3_stmt *q, void *cb, void *arg)
{
    struct mst_turn t = {
        .id = sq__col(q, 0),
        .conv_id = sq__col(q, 1),
        .seq = (uint64_t)sqlite3_column_int64(q, 2),
        .thread_id = sq__col(q, 3),
        .participant = sq__col(q, 4),
        .content_type = sq__col(q, 5),
        .ts = sqlite3_column_int64(q, 6),
        .json = sq__col(q, 7),
        .len = (size_t)sqlite3_column_bytes(q, 7),
    };
    mst_turn_cb f = *(mst_turn_cb *)cb;
    return f ? f(arg, &t) : 1;
}

static int sq_turn_scan(struct mst_store *st, const struct mst_turn_query *qq, mst_turn_cb cb, void *arg)
{
    struct sq_store *s = SQ(st);
    if (!qq || !qq->conv_id || !cb)
        return MST_EINVAL;
    /* seqs live in 1..INT64_MAX: an after bound at or past the top, or a
     * before bound of 1, selects nothing */
    if (qq->after_seq >= (uint64_t)INT64_MAX || qq->before_seq == 1)
        return MST_OK;
    uint64_t hi = qq->before_seq && qq->before_seq - 1 < (uint64_t)INT64_MAX ? qq->before_seq - 1 : (uint64_t)INT64_MAX;
    enum sq_stmt k = qq->desc ? SQ_TURN_DESC : SQ_TURN_ASC;
    if (sq__reentrant(s, k))
        return MST_EINVAL;
    sqlite3_stmt *q = s->stmt[k];
    int b = sq__bind_text(q, 1, qq->conv_id);
    if (!b) b = sqlite3_bind_int64(q, 2, (sqlite3_int64)qq->after_seq);
    if (!b) b = sqlite3_bind_int64(q, 3, (sqlite3_int64)hi);
    if (!b) b = sq__bind_text(q, 4, qq->thread_id);
    if (!b) b = sqlite3_bind_int64(q, 5, sq__limit(qq->limit));
    return sq__select(s, k, b, sq__turn_row, &cb, arg, NULL, "scan turns");
}

static int sq_turn_get(struct mst_store *st, const char *turn_id, mst_turn_cb cb, void *arg)
{
    struct sq_store *s = SQ(st);
    if (!turn_id)
        return MST_EINVAL;
    if (sq__reentrant(s, SQ_TURN_GET))
        return MST_EINVAL;
    size_t n;
    int rc = sq__select(s, SQ_TURN_GET, sq__bind_text(s->stmt[SQ_TURN_GET], 1, turn_id), sq__turn_row, &cb, arg, &n,
                        "get turn");
    return rc ? rc : n ? MST_OK : MST_ENOTFOUND;
}

/* Single-value SELECTs: first column of the first row as an int64 (0 if none). */
static int sq__one_i64(struct sq_store *s, enum sq_stmt k, int brc, int64_t *v, size_t *found, const char *what)
{
    sqlite3_stmt *q = s->stmt[k];
    int rc = brc == SQLITE_OK ? sqlite3_step(q) : brc;
    int out = MST_OK;
    *v = 0;
    if (found)
        *found = 0;
    if (rc == SQLITE_ROW) {
        *v = sqlite3_column_int64(q, 0);
        if (found)
            *found = 1;
    } else if (rc != SQLITE_DONE) {
        out = sq__fail(s, rc, what);
    }
    sqlite3_reset(q);
    return out;
}

static int sq_turn_last_seq(struct mst_store *st, const char *conv_id, uint64_t *seq)
{
    struct sq_store *s = SQ(st);
    if (!conv_id || !seq)
        return MST_EINVAL;
    int64_t v;
    int rc = sq__one_i64(s, SQ_TURN_LAST, sq__bind_text(s->stmt[SQ_TURN_LAST], 1, conv_id), &v, NULL, "turn last seq");
    *seq = (uint64_t)v;
    return rc;
}

static int sq_turn_count(struct mst_store *st, const char *conv_id, uint64_t *count)
{
    struct sq_store *s = SQ(st);
    if (!conv_id || !count)
        return MST_EINVAL;
    int64_t v;
    int rc = sq__one_i64(s, SQ_TURN_COUNT, sq__bind_text(s->stmt[SQ_TURN_COUNT], 1, conv_id), &v, NULL, "turn count");
    *count = (uint64_t)v;
    return rc;
}

/* ----------------------------------------------------------------- events */

/* First occurrence of needle in hay. memchr on the first byte and memcmp: the
 * turn sits behind two or three '{' of its event, where glibc's memmem would
 * first factorize the whole needle (5 % of a durable turn's time). */
static const char *sq__find(const char *hay, size_t hn, const char *needle, size_t nn)
{
    if (!nn || nn > hn)
        return NULL;
    const char *last = hay + (hn - nn);
    for (const char *p = hay; p <= last; p++) {
        p = memchr(p, needle[0], (size_t)(last - p) + 1);
        if (!p)
            return NULL;
        if (!memcmp(p, needle, nn))
            return p;
    }
    return NULL;
}

static int sq_event_append(struct mst_store *st, const struct mst_event *e)
{
    struct sq_store *s = SQ(st);
    int rc = sq__wcheck(s);
    if (rc)
        return rc;
    if (!mst__event_ok(e))
        return MST_EINVAL;
    /* schema v2: an event that embeds the turn appended just before it in this
     * transaction is stored without it (both land in the same commit, so the
     * scan's join always finds the turn) */
    const char *json = e->json;
    size_t len = mst__jlen(e->json, e->len);
    const char *hit = NULL;
    if (s->lt.valid && e->conv_id && s->lt.len && len > s->lt.len && !strcmp(e->conv_id, s->lt.conv))
        hit = sq__find(json, len, s->lt.json, s->lt.len);
    if (hit) {
        size_t off = (size_t)(hit - json), rest = len - off - s->lt.len;
        if (sq__reserve(&s->cut, &s->cut_cap, len - s->lt.len) == 0) {
            memcpy(s->cut, json, off);
            memcpy(s->cut + off, hit + s->lt.len, rest);
            json = s->cut;
            len -= s->lt.len;
        } else {
            hit = NULL; /* out of memory: store it whole */
        }
    }
    sqlite3_stmt *q = s->stmt[SQ_EV_INS];
    int b = sqlite3_bind_int64(q, 1, (sqlite3_int64)e->seq);
    if (!b) b = sq__bind_text(q, 2, e->id);
    if (!b) b = sq__bind_text(q, 3, e->type);
    if (!b) b = sq__bind_text(q, 4, e->conv_id);
    if (!b) b = sqlite3_bind_int64(q, 5, e->ts);
    if (!b) b = sqlite3_bind_text64(q, 6, json, len, SQLITE_STATIC, SQLITE_UTF8);
    if (!b) b = hit ? sqlite3_bind_int64(q, 7, (sqlite3_int64)s->lt.seq) : sqlite3_bind_null(q, 7);
    if (!b) b = hit ? sqlite3_bind_int64(q, 8, (sqlite3_int64)(hit - e->json)) : sqlite3_bind_null(q, 8);
    return sq__run(s, SQ_EV_INS, b, "append event");
}

static int sq__event_row(sqlite3_stmt *q, void *cb, void *arg)
{
    struct mst_event e = {
        .seq = (uint64_t)sqlite3_column_int64(q, 0),
        .id = sq__col(q, 1),
        .type = sq__col(q, 2),
        .conv_id = sq__col(q, 3),
        .ts = sqlite3_column_int64(q, 4),
        .json = sq__col(q, 5),
        .len = (size_t)sqlite3_column_bytes(q, 5),
    };
    char *joined = NULL;
    if (sqlite3_column_type(q, 6) != SQLITE_NULL) { /* put the turn back (schema v2) */
        sqlite3_int64 off = sqlite3_column_int64(q, 6);
        const char *tj = sq__col(q, 7);
        size_t tl = (size_t)sqlite3_column_bytes(q, 7);
        if (tj && e.json && off >= 0 && (size_t)off <= e.len && (joined = malloc(e.len + tl + 1))) {
            memcpy(joined, e.json, (size_t)off);
            memcpy(joined + off, tj, tl);
            memcpy(joined + off + tl, e.json + off, e.len - (size_t)off);
            joined[e.len + tl] = '\0';
            e.json = joined;
            e.len += tl;
        }
    }
    mst_event_cb f = *(mst_event_cb *)cb;
    int stop = f(arg, &e);
    free(joined);
    return stop;
}

static int sq_event_scan(struct mst_store *st, const struct mst_event_query *qq, mst_event_cb cb, void *arg)
{
    struct sq_store *s = SQ(st);
    if (!qq || !cb)
        return MST_EINVAL;
    if (qq->after_seq >= (uint64_t)INT64_MAX)
        return MST_OK;
    enum sq_stmt k = qq->conv_id ? SQ_EV_SCAN_CONV : SQ_EV_SCAN;
    if (sq__reentrant(s, k))
        return MST_EINVAL;
    sqlite3_stmt *q = s->stmt[k];
    int i = 1, b = SQLITE_OK;
    if (qq->conv_id)
        b = sq__bind_text(q, i++, qq->conv_id);
    if (!b) b = sqlite3_bind_int64(q, i++, (sqlite3_int64)qq->after_seq);
    if (!b) b = sqlite3_bind_int64(q, i, sq__limit(qq->limit));
    return sq__select(s, k, b, sq__event_row, &cb, arg, NULL, "scan events");
}

static int sq_event_last(struct mst_store *st, uint64_t *seq, char id_out[32])
{
    struct sq_store *s = SQ(st);
    if (!seq || !id_out)
        return MST_EINVAL;
    sqlite3_stmt *q = s->stmt[SQ_EV_LAST];
    int rc = sqlite3_step(q), out = MST_OK;
    *seq = 0;
    id_out[0] = '\0';
    if (rc == SQLITE_ROW) {
        *seq = (uint64_t)sqlite3_column_int64(q, 0);
        const char *id = sq__col(q, 1);
        snprintf(id_out, 32, "%s", id ? id : "");
    } else if (rc != SQLITE_DONE) {
        out = sq__fail(s, rc, "event last");
    }
    sqlite3_reset(q);
    return out;
}

static int sq_event_seq_of(struct mst_store *st, const char *event_id, uint64_t *seq)
{
    struct sq_store *s = SQ(st);
    if (!event_id || !seq)
        return MST_EINVAL;
    int64_t v;
    size_t n;
    int rc = sq__one_i64(s, SQ_EV_SEQ_OF, sq__bind_text(s->stmt[SQ_EV_SEQ_OF], 1, event_id), &v, &n, "event seq_of");
    if (rc)
        return rc;
    if (!n)
        return MST_ENOTFOUND;
    *seq = (uint64_t)v;
    return MST_OK;
}

static int sq_event_seq_after_id(struct mst_store *st, const char *event_id, uint64_t *seq)
{
    struct sq_store *s = SQ(st);
    if (!event_id || !seq)
        return MST_EINVAL;
    int64_t v;
    size_t n;
    int rc = sq__one_i64(s, SQ_EV_AFTER_ID, sq__bind_text(s->stmt[SQ_EV_AFTER_ID], 1, event_id), &v, &n,
                         "event seq_after_id");
    if (rc)
        return rc;
    if (!n)
        return MST_ENOTFOUND;
    *seq = (uint64_t)v - 1;
    return MST_OK;
}

static int sq_event_first_seq(struct mst_store *st, uint64_t *seq)
{
    struct sq_store *s = SQ(st);
    if (!seq)
        return MST_EINVAL;
    int64_t v;
    int rc = sq__one_i64(s, SQ_EV_FIRST, SQLITE_OK, &v, NULL, "event first seq");
    *seq = (uint64_t)v;
    return rc;
}

static int sq_event_trim(struct mst_store *st, uint64_t upto_seq)
{
    struct sq_store *s = SQ(st);
    int rc = sq__wcheck(s);
    if (rc)
        return rc;
    if (upto_seq == 0)
        return MST_OK;
    sqlite3_int64 v = upto_seq > (uint64_t)INT64_MAX ? INT64_MAX : (sqlite3_int64)upto_seq;
    return sq__run(s, SQ_EV_TRIM, sqlite3_bind_int64(s->stmt[SQ_EV_TRIM], 1, v), "trim events");
}

/* ------------------------------------------------------------------ audit */

static int sq_audit_append(struct mst_store *st, const struct mst_audit *a)
{
    struct sq_store *s = SQ(st);
    int rc = sq__wcheck(s);
    if (rc)
        return rc;
    if (!mst__audit_ok(a))
        return MST_EINVAL;
    sqlite3_stmt *q = s->stmt[SQ_AU_INS];
    int b = sq__bind_text(q, 1, a->id);
    if (!b) b = sqlite3_bind_int64(q, 2, a->ts);
    if (!b) b = sq__bind_text(q, 3, a->principal);
    if (!b) b = sq__bind_text(q, 4, a->action);
    if (!b) b = sq__bind_text(q, 5, a->target);
    if (!b) b = sq__bind_json(q, 6, a->json, a->len);
    return sq__run(s, SQ_AU_INS, b, "append audit");
}

static int sq__audit_row(sqlite3_stmt *q, void *cb, void *arg)
{
    struct mst_audit a = {
        .id = sq__col(q, 0),
        .ts = sqlite3_column_int64(q, 1),
        .principal = sq__col(q, 2),
        .action = sq__col(q, 3),
        .target = sq__col(q, 4),
        .json = sq__col(q, 5),
        .len = (size_t)sqlite3_column_bytes(q, 5),
    };
    mst_audit_cb f = *(mst_audit_cb *)cb;
    return f(arg, &a);
}

static int sq_audit_scan(struct mst_store *st, const char *before_id, size_t limit, mst_audit_cb cb, void *arg)
{
    struct sq_store *s = SQ(st);
    if (!cb)
        return MST_EINVAL;
    enum sq_stmt k = before_id ? SQ_AU_SCAN_BEFORE : SQ_AU_SCAN;
    if (sq__reentrant(s, k))
        return MST_EINVAL;
    sqlite3_stmt *q = s->stmt[k];
    int i = 1, b = SQLITE_OK;
    if (before_id)
        b = sq__bind_text(q, i++, before_id);
    if (!b) b = sqlite3_bind_int64(q, i, sq__limit(limit));
    return sq__select(s, k, b, sq__audit_row, &cb, arg, NULL, "scan audit");
}

/* ------------------------------------------------------------- open/close */

/* ------------------------------------------------------ background checkpoints
 *
 * SQLite's automatic checkpoint runs inside the COMMIT that pushes the WAL
 * past its threshold, i.e. on the broker's event loop: it copies up to 32 MiB
 * of pages into the database file and fsyncs it while every client waits for
 * its ack. Instead, the WAL hook (called after each commit with the WAL's
 * size) wakes a thread that runs a PASSIVE checkpoint on its own connection;
 * PASSIVE never blocks the writer, and the writer restarts the WAL from the
 * top once a checkpoint has caught up with it. Without the thread (SQLite
 * built single-threaded, or the thread could not start) the hook checkpoints
 * inline, as SQLite would. */

#define SQ_CKPT_PAGES 8192 /* 32 MiB of WAL: a checkpoint copies each hot page once for many commits */

static void *sq__ckpt_main(void *arg)
{
    struct sq_store *s = arg;
    pthread_mutex_lock(&s->ck.mu);
    for (;;) {
        while (!s->ck.want && !s->ck.stop)
            pthread_cond_wait(&s->ck.cv, &s->ck.mu);
        if (s->ck.stop)
            break;
        s->ck.want = false;
        s->ck.busy = true;
        pthread_mutex_unlock(&s->ck.mu);
        /* an error (busy, I/O) leaves the WAL as it is; the next commit asks again */
        int done = 0;
        if (sqlite3_wal_checkpoint_v2(s->ck.db, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, &done) != SQLITE_OK)
            done = 0;
        pthread_mutex_lock(&s->ck.mu);
        s->ck.busy = false;
        s->ck.backfilled = done;
        pthread_cond_broadcast(&s->ck.cv); /* a writer at the hard cap waits for this */
    }
    pthread_mutex_unlock(&s->ck.mu);
    return NULL;
}

/* After each commit, on the writer's thread. The WAL restarts from the top
 * only at a write that finds every frame copied, and under load the writer
 * always adds frames while the thread copies. So the thread copies the bulk,
 * and when what is left is small the writer copies that itself (a few pages
 * and one fsync) and the next transaction restarts the WAL.
 *
 * A writer faster than the disk could outrun the thread for ever (each pass
 * leaves more than the small remainder behind). At twice the threshold the
 * writer therefore waits for the thread's pass to end and copies the rest
 * itself: back-pressure instead of a WAL without bound. */
static int sq__wal_hook(void *arg, sqlite3 *db, const char *name, int pages)
{
    struct sq_store *s = arg;
    if (pages < SQ_CKPT_PAGES)
        return SQLITE_OK;
    bool inline_ckpt = !s->ck.started;
    if (s->ck.started) {
        pthread_mutex_lock(&s->ck.mu);
        if (pages >= 2 * SQ_CKPT_PAGES) {
            s->ck.want = false; /* a pass not begun yet: the writer does it now */
            while (s->ck.busy)
                pthread_cond_wait(&s->ck.cv, &s->ck.mu);
            inline_ckpt = true;
            s->ck.backfilled = 0;
        } else if (!s->ck.busy && !s->ck.want) {
            /* backfilled > pages: counted before a restart, stale */
            if (s->ck.backfilled > 0 && pages >= s->ck.backfilled && pages - s->ck.backfilled < SQ_CKPT_PAGES / 8) {
                inline_ckpt = true;
                s->ck.backfilled = 0;
            } else {
                s->ck.want = true;
                pthread_cond_signal(&s->ck.cv);
            }
        }
        pthread_mutex_unlock(&s->ck.mu);
    }
    if (inline_ckpt)
        (void)sqlite3_wal_checkpoint_v2(db, name, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
    return SQLITE_OK;
}

/* After the schema is in place (the thread's connection must find a WAL
 * database). Failing to start the thread is not an error: checkpoints then
 * run inline. */
static void sq__ckpt_start(struct sq_store *s, const char *sync_pragma)
{
    sqlite3_wal_hook(s->db, sq__wal_hook, s); /* replaces SQLite's autocheckpoint hook */
    if (!sqlite3_threadsafe() ||
        sqlite3_open_v2(s->path, &s->ck.db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK)
        goto inline_only;
    sqlite3_busy_timeout(s->ck.db, 2000);
    /* the checkpointer's synchronous setting decides whether it fsyncs the database */
    if (sqlite3_exec(s->ck.db, sync_pragma, NULL, NULL, NULL) != SQLITE_OK)
        goto inline_only;
    if (pthread_mutex_init(&s->ck.mu, NULL))
        goto inline_only;
    if (pthread_cond_init(&s->ck.cv, NULL)) {
        pthread_mutex_destroy(&s->ck.mu);
        goto inline_only;
    }
    if (pthread_create(&s->ck.th, NULL, sq__ckpt_main, s)) {
        pthread_cond_destroy(&s->ck.cv);
        pthread_mutex_destroy(&s->ck.mu);
        goto inline_only;
    }
    s->ck.started = true;
    return;
inline_only:
    sqlite3_close(s->ck.db); /* NULL-safe */
    s->ck.db = NULL;
}

static void sq__ckpt_stop(struct sq_store *s)
{
    if (s->ck.started) {
        pthread_mutex_lock(&s->ck.mu);
        s->ck.stop = true;
        pthread_cond_signal(&s->ck.cv);
        pthread_mutex_unlock(&s->ck.mu);
        pthread_join(s->ck.th, NULL);
        pthread_cond_destroy(&s->ck.cv);
        pthread_mutex_destroy(&s->ck.mu);
        s->ck.started = false;
    }
    sqlite3_close(s->ck.db);
    s->ck.db = NULL;
}

static void sq_close(struct mst_store *st)
{
    struct sq_store *s = SQ(st);
    if (!s)
        return;
    sq__ckpt_stop(s);
    if (s->db) {
        /* close never commits: an unfinished group is the caller's bug or a
         * shutdown in the middle of a pass, and half a group must not land */
        if (!sqlite3_get_autocommit(s->db))
            (void)sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
        for (int i = 0; i < SQ_NSTMT; i++)
            sqlite3_finalize(s->stmt[i]); /* NULL-safe */
        (void)sqlite3_wal_checkpoint_v2(s->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
        sqlite3_close(s->db);
    }
    /* the lock file is left in place on purpose: unlinking it would let a
     * process that opened the old inode and one that creates a new file both
     * "hold" the lock. Closing the descriptor releases the flock. */
    if (s->wal_fd >= 0)
        close(s->wal_fd);
    free(s->lt.json);
    free(s->lt.conv);
    free(s->cut);
    if (s->lock_fd >= 0)
        close(s->lock_fd);
    free(s->path);
    free(s);
}

/* mkdir -p of PATH's parent, mode 0700: the database holds every message. */
static int sq__mkparents(const char *path, char *errbuf, size_t errlen)
{
    char *d = strdup(path);
    if (!d)
        return MST_ENOMEM;
    char *slash = strrchr(d, '/');
    int rc = MST_OK;
    if (!slash || slash == d)
        goto out; /* relative file in cwd, or a file in "/" */
    *slash = '\0';
    for (char *p = d + 1;; p++) {
        if (*p == '/' || *p == '\0') {
            char c = *p;
            *p = '\0';
            if (mkdir(d, 0700) != 0 && errno != EEXIST) {
                mst__fmt(errbuf, errlen, "cannot create directory %s: %s", d, strerror(errno));
                rc = MST_EIO;
                goto out;
            }
            *p = c;
            if (!c)
                break;
        }
    }
    struct stat sb;
    if (stat(d, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
        mst__fmt(errbuf, errlen, "%s is not a directory", d);
        rc = MST_EIO;
    }
out:
    free(d);
    return rc;
}

/* One broker per database: an exclusive, non-blocking flock on PATH.lock,
 * which then holds the owner's pid for the error message of the next one. */
static int sq__lock(struct sq_store *s, char *errbuf, size_t errlen)
{
    size_t n = strlen(s->path);
    char *lp = malloc(n + sizeof ".lock");
    if (!lp)
        return MST_ENOMEM;
    memcpy(lp, s->path, n);
    memcpy(lp + n, ".lock", sizeof ".lock");
    int rc = MST_OK;
    s->lock_fd = open(lp, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (s->lock_fd < 0) {
        mst__fmt(errbuf, errlen, "cannot open lock file %s: %s", lp, strerror(errno));
        rc = MST_EIO;
        goto out;
    }
    if (flock(s->lock_fd, LOCK_EX | LOCK_NB) != 0) {
        if (errno == EWOULDBLOCK) {
            char buf[32] = {0};
            ssize_t r = pread(s->lock_fd, buf, sizeof buf - 1, 0);
            long pid = r > 0 ? strtol(buf, NULL, 10) : 0;
            if (pid > 0)
                mst__fmt(errbuf, errlen, "database %s is in use by another mapbroker (pid %ld)", s->path, pid);
            else
                mst__fmt(errbuf, errlen, "database %s is in use by another mapbroker (lock %s)", s->path, lp);
            rc = MST_EBUSY;
        } else {
            mst__fmt(errbuf, errlen, "cannot lock %s: %s", lp, strerror(errno));
            rc = MST_EIO;
        }
        goto out;
    }
    (void)fchmod(s->lock_fd, 0600);
    char pid[32];
    int pl = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    if (ftruncate(s->lock_fd, 0) != 0 || pwrite(s->lock_fd, pid, (size_t)pl, 0) != pl) {
        /* the lock itself is held; only the diagnostic pid is missing */
    }
out:
    free(lp);
    return rc;
}

/* Create the database file ourselves with 0600: SQLite gives the -wal and -shm
 * files the permissions of the main file, so this covers all three without
 * touching the process-wide umask. An existing file keeps its mode. */
static int sq__create_file(const char *path, char *errbuf, size_t errlen)
{
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        if (errno == EEXIST)
            return MST_OK;
        mst__fmt(errbuf, errlen, "cannot create database %s: %s", path, strerror(errno));
        return MST_EIO;
    }
    (void)fchmod(fd, 0600); /* in case the umask removed our own bits */
    close(fd);
    return MST_OK;
}

static int sq__exec(struct sq_store *s, const char *sql, const char *what, char *errbuf, size_t errlen)
{
    int rc = sqlite3_exec(s->db, sql, NULL, NULL, NULL);
    if (rc == SQLITE_OK)
        return MST_OK;
    int out = sq__fail(s, rc, what);
    mst__fmt(errbuf, errlen, "database %s: %s", s->path, s->err);
    return out;
}

/* Read meta.v for key k into buf; returns 1 if present. */
static int sq__meta_get(struct sq_store *s, const char *k, char *buf, size_t len, int *rc)
{
    sqlite3_stmt *q = NULL;
    int found = 0;
    *rc = sqlite3_prepare_v2(s->db, "SELECT v FROM meta WHERE k = ?1", -1, &q, NULL);
    if (*rc == SQLITE_OK && (*rc = sqlite3_bind_text(q, 1, k, -1, SQLITE_STATIC)) == SQLITE_OK) {
        *rc = sqlite3_step(q);
        if (*rc == SQLITE_ROW) {
            const char *v = (const char *)sqlite3_column_text(q, 0);
            snprintf(buf, len, "%s", v ? v : "");
            found = 1;
            *rc = SQLITE_OK;
        } else if (*rc == SQLITE_DONE) {
            *rc = SQLITE_OK;
        }
    }
    sqlite3_finalize(q);
    return found;
}

static int sq__create_schema(struct sq_store *s, char *errbuf, size_t errlen)
{
    char epoch[MP_ULID_LEN + 1], sql[256];
    mp_ulid_gen g;
    mp_ulid_init(&g, 0);
    int64_t now = mp_now_ms();
    mp_ulid_next(&g, now, epoch);
    snprintf(sql, sizeof sql,
             "INSERT INTO meta(k, v) VALUES('schema_version', '1'), ('epoch', '%s'), ('created_ms', '%lld');",
             epoch, (long long)now); /* v1, then the migration ladder: one path for new and old files */
    int rc = sq__exec(s, "BEGIN IMMEDIATE", "create schema", errbuf, errlen);
    if (rc)
        return rc;
    if ((rc = sq__exec(s, sq__schema_v1, "create schema", errbuf, errlen)) ||
        (rc = sq__exec(s, sql, "create schema", errbuf, errlen)) ||
        (rc = sq__exec(s, "COMMIT", "create schema", errbuf, errlen))) {
        (void)sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
        return rc;
    }
    return MST_OK;
}

/* Check the version, climb the ladder if older, refuse if newer, load epoch. */
static int sq__schema(struct sq_store *s, char *errbuf, size_t errlen)
{
    sqlite3_stmt *q = NULL;
    int has_meta = 0, ntables = 0, src;
    src = sqlite3_prepare_v2(s->db, "SELECT name FROM sqlite_master WHERE type = 'table'", -1, &q, NULL);
    while (src == SQLITE_OK && (src = sqlite3_step(q)) == SQLITE_ROW) {
        ntables++;
        const char *n = (const char *)sqlite3_column_text(q, 0);
        if (n && strcmp(n, "meta") == 0)
            has_meta = 1;
        src = SQLITE_OK;
    }
    sqlite3_finalize(q);
    if (src != SQLITE_OK && src != SQLITE_DONE) {
        int rc = sq__fail(s, src, "read schema");
        mst__fmt(errbuf, errlen, "database %s: %s", s->path, s->err);
        return rc;
    }
    if (!has_meta) {
        if (ntables) {
            mst__fmt(errbuf, errlen, "database %s is not a mapbroker database (no meta table)", s->path);
            return MST_ESCHEMA;
        }
        int rc = sq__create_schema(s, errbuf, errlen);
        if (rc)
            return rc;
    }

    char buf[64];
    if (!sq__meta_get(s, "schema_version", buf, sizeof buf, &src)) {
        if (src) {
            int rc = sq__fail(s, src, "read schema_version");
            mst__fmt(errbuf, errlen, "database %s: %s", s->path, s->err);
            return rc;
        }
        mst__fmt(errbuf, errlen, "database %s has no schema_version in its meta table", s->path);
        return MST_ESCHEMA;
    }
    char *end;
    long v = strtol(buf, &end, 10);
    if (end == buf || *end || v < 1) {
        mst__fmt(errbuf, errlen, "database %s has an invalid schema_version \"%s\"", s->path, buf);
        return MST_ESCHEMA;
    }
    if (v > SQ_SCHEMA_VERSION) {
        mst__fmt(errbuf, errlen,
                 "database %s has schema version %ld, newer than this build supports (%d); "
                 "upgrade mapbroker or use another database",
                 s->path, v, SQ_SCHEMA_VERSION);
        return MST_ESCHEMA;
    }
    for (; v < SQ_SCHEMA_VERSION; v++) {
        const char *step = sq__migrations[v - 1];
        char bump[128];
        snprintf(bump, sizeof bump, "UPDATE meta SET v = '%ld' WHERE k = 'schema_version';", v + 1);
        int rc = sq__exec(s, "BEGIN IMMEDIATE", "migrate", errbuf, errlen);
        if (!rc && step)
            rc = sq__exec(s, step, "migrate", errbuf, errlen);
        if (!rc)
            rc = sq__exec(s, bump, "migrate", errbuf, errlen);
        if (!rc)
            rc = sq__exec(s, "COMMIT", "migrate", errbuf, errlen);
        if (rc) {
            (void)sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
            return rc;
        }
    }

    if (!sq__meta_get(s, "epoch", s->epoch, sizeof s->epoch, &src) || !s->epoch[0]) {
        mst__fmt(errbuf, errlen, "database %s has no epoch in its meta table", s->path);
        return MST_ESCHEMA;
    }
    return MST_OK;
}

static int sq_open(const struct mst_config *cfg, struct mst_store **out, char *errbuf, size_t errlen)
{
    int rc = MST_OK;
    struct sq_store *s = NULL;

    if (errbuf && errlen)
        errbuf[0] = '\0';
    if (!out) {
        mst__fmt(errbuf, errlen, "sqlite store: out is NULL");
        return MST_EINVAL;
    }
    *out = NULL;
    if (!cfg || !cfg->path || !*cfg->path) {
        mst__fmt(errbuf, errlen, "sqlite store needs a path (\"sqlite:PATH\")");
        return MST_EINVAL;
    }
    s = calloc(1, sizeof *s);
    if (!s) {
        mst__fmt(errbuf, errlen, "sqlite store: out of memory");
        return MST_ENOMEM;
    }
    s->base.ops = &mst_sqlite_ops;
    s->lock_fd = -1;
    s->wal_fd = -1;
    if (!(s->path = strdup(cfg->path))) {
        rc = MST_ENOMEM;
        mst__fmt(errbuf, errlen, "sqlite store: out of memory");
        goto fail;
    }
    if ((rc = sq__mkparents(s->path, errbuf, errlen)))
        goto fail;
    if ((rc = sq__lock(s, errbuf, errlen)))
        goto fail;
    if ((rc = sq__create_file(s->path, errbuf, errlen)))
        goto fail;

    /* No memory statistics: with them every SQLite allocation takes a global
     * mutex. Only possible before SQLite initializes, so only the first open
     * of the process gets it (later calls fail harmlessly). */
    (void)sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
    /* NOMUTEX: a handle is used from one thread at a time (store.h) */
    int src = sqlite3_open_v2(s->path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
    if (src != SQLITE_OK) {
        rc = sq__fail(s, src, "open");
        mst__fmt(errbuf, errlen, "database %s: %s", s->path, s->err);
        goto fail;
    }
    sqlite3_extended_result_codes(s->db, 1);
    /* a reader such as the sqlite3 CLI may briefly hold a lock; wait for it a
     * little rather than fail a whole group commit */
    sqlite3_busy_timeout(s->db, 2000);

    /* journal_mode is the first statement that reads the file, so a file that
     * is not a database is reported here (SQLITE_NOTADB -> MST_ESCHEMA) */
    {
        sqlite3_stmt *q = NULL;
        src = sqlite3_prepare_v2(s->db, "PRAGMA journal_mode=WAL", -1, &q, NULL);
        if (src == SQLITE_OK)
            src = sqlite3_step(q);
        int wal = src == SQLITE_ROW && sqlite3_column_text(q, 0) &&
                  strcmp((const char *)sqlite3_column_text(q, 0), "wal") == 0;
        if (src != SQLITE_ROW) {
            rc = sq__fail(s, src, "set WAL journal");
            sqlite3_finalize(q);
            mst__fmt(errbuf, errlen, "database %s: %s", s->path, s->err);
            goto fail;
        }
        sqlite3_finalize(q);
        if (!wal) {
            mst__fmt(errbuf, errlen, "database %s: cannot switch to WAL journal mode", s->path);
            rc = MST_EIO;
            goto fail;
        }
    }
    /* durability full: commits write the WAL without fsync (NORMAL) and
     * sq_sync fdatasyncs it before the broker acknowledges (deferred sync,
     * store.h); FULL is the fallback if we cannot open the WAL ourselves.
     * Checkpoints sync the WAL before and the database after either way. */
    const char *sync_pragma = "PRAGMA synchronous=NORMAL";
    if ((rc = sq__exec(s, sync_pragma, "set synchronous", errbuf, errlen)))
        goto fail;
    /* a bigger page cache keeps the index pages of the hot conversations in
     * memory; the WAL is capped after checkpoints so bursts don't leave a huge
     * file behind. Checkpoints (every SQ_CKPT_PAGES pages, in a thread) are
     * set up by sq__ckpt_start once the schema exists. */
    if ((rc = sq__exec(s, "PRAGMA cache_size=-16384; PRAGMA temp_store=MEMORY; PRAGMA journal_size_limit=67108864;",
                       "set pragmas", errbuf, errlen)))
        goto fail;

    if ((rc = sq__schema(s, errbuf, errlen)))
        goto fail;
    if (cfg->durability != MST_DUR_NORMAL) {
        /* fdatasync works on the file, whichever descriptor names it; the WAL
         * exists from the schema check on and is only ever truncated (never
         * replaced) while a connection is open */
        char wal[PATH_MAX];
        if (snprintf(wal, sizeof wal, "%s-wal", s->path) < (int)sizeof wal)
            s->wal_fd = open(wal, O_RDWR | O_CLOEXEC);
        if (s->wal_fd < 0 &&
            (rc = sq__exec(s, "PRAGMA synchronous=FULL", "set synchronous", errbuf, errlen)))
            goto fail;
    }
    sq__ckpt_start(s, sync_pragma);

    for (int i = 0; i < SQ_NSTMT; i++) {
        src = sqlite3_prepare_v3(s->db, sq__sql[i], -1, SQLITE_PREPARE_PERSISTENT, &s->stmt[i], NULL);
        if (src != SQLITE_OK) {
            rc = sq__fail(s, src, "prepare");
            mst__fmt(errbuf, errlen, "database %s: preparing \"%s\": %s", s->path, sq__sql[i], s->err);
            goto fail;
        }
    }
    s->err[0] = '\0';
    *out = &s->base;
    return MST_OK;

fail:
    sq_close(&s->base);
    return rc;
}

static int sq_sync_deferred(struct mst_store *st) { return SQ(st)->wal_fd >= 0; }

/* Any thread (store.h): touches only wal_fd, fixed from open to close. */
static int sq_sync(struct mst_store *st)
{
    struct sq_store *s = SQ(st);
    if (s->wal_fd < 0)
        return MST_OK;
    return fdatasync(s->wal_fd) == 0 ? MST_OK : MST_EIO;
}

const struct mst_ops mst_sqlite_ops = {
    .version = MST_OPS_V2,
    .name = "sqlite",
    .open = sq_open,
    .close = sq_close,
    .begin = sq_begin,
    .commit = sq_commit,
    .rollback = sq_rollback,
    .epoch = sq_epoch,
    .put = sq_put,
    .del = sq_del,
    .scan = sq_scan,
    .get = sq_get,
    .turn_append = sq_turn_append,
    .turn_scan = sq_turn_scan,
    .turn_get = sq_turn_get,
    .turn_last_seq = sq_turn_last_seq,
    .turn_count = sq_turn_count,
    .event_append = sq_event_append,
    .event_scan = sq_event_scan,
    .event_last = sq_event_last,
    .event_seq_of = sq_event_seq_of,
    .event_first_seq = sq_event_first_seq,
    .event_seq_after_id = sq_event_seq_after_id,
    .event_trim = sq_event_trim,
    .audit_append = sq_audit_append,
    .audit_scan = sq_audit_scan,
    .last_error = sq_last_error,
    .sync_deferred = sq_sync_deferred,
    .sync = sq_sync,
};
