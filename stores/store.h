/* store.h - the pluggable persistence interface of mapbroker.
 *
 * One versioned ops table (struct mst_ops) behind an opaque handle
 * (struct mst_store), a registry by name, and inline-style wrappers
 * (mst_*) that are the only way the broker reaches a backend.
 *
 * Model
 *  - "Records" (conversations, participants, threads, agents, scopes) are JSON
 *    documents keyed by (kind, owner, key). The broker keeps them in memory and
 *    writes every change through; at start-up it reloads them with mst_scan().
 *  - Turns are an append-only log per conversation with a per-conversation
 *    `seq` (1, 2, 3, ...) chosen by the broker and stored in the same
 *    transaction as the turn; (conv_id, seq) is unique.
 *  - Events are an append-only, broker-wide log ordered by `seq` (and by the
 *    ULID event id, which sorts the same way).
 *  - Audit entries are an append-only log.
 *  - Every store has an `epoch` (a ULID minted when the store is created and
 *    never changed). Positions (epoch, seq) from another epoch are invalid.
 *
 * Transactions / group commit: mst_begin() opens a transaction that collects
 * every write until mst_commit(). The broker opens one lazily per event-loop
 * pass and commits once at the end, and only then releases the replies and
 * events caused by those writes. Writes outside begin/commit are committed
 * individually. Backends without transactions (memory) treat both as no-ops.
 *
 * Threading: a store handle is used from one thread at a time (the loop).
 *
 * Ownership: every `const char *` / json text passed in is borrowed for the
 * duration of the call (the backend copies what it keeps). Rows handed to
 * callbacks are borrowed and valid only during the callback. A callback
 * returns 0 to continue, non-zero to stop the scan (the scan then returns
 * MST_OK).
 */
#ifndef MST_STORE_H
#define MST_STORE_H

#include <stddef.h>
#include <stdint.h>

#define MST_OPS_V1 1
#define MST_OPS_V2 2 /* + sync_deferred, sync */

/* Error codes shared by every backend. 0 is success. */
enum mst_rc {
    MST_OK = 0,
    MST_ENOTFOUND = 1,  /* no such row */
    MST_EEXIST = 2,     /* unique key taken (e.g. duplicate (conv, seq)) */
    MST_EINVAL = 3,     /* bad argument */
    MST_ENOMEM = 4,
    MST_EIO = 5,        /* backend I/O / SQL failure; see mst_last_error() */
    MST_EBUSY = 6,      /* locked by another process (second broker on the same file) */
    MST_ESCHEMA = 7,    /* schema version newer than this build, or corrupt */
    MST_ERANGE = 8,     /* a position this store cannot serve (trimmed / other epoch) */
    MST_ENOBACKEND = 9, /* unknown store name in a URI */
};
const char *mst_strerror(int rc);

enum mst_durability { MST_DUR_FULL = 0, MST_DUR_NORMAL = 1 };

struct mst_config {
    const char *path;               /* backend-specific location (sqlite: file path); may be NULL for memory */
    enum mst_durability durability; /* sqlite: synchronous=FULL (no loss) or NORMAL (WAL: last commits may be lost on power failure) */
    int64_t event_retention;        /* keep at most this many events (0 = unlimited); trimmed by mst_event_trim */
};

/* Kinds of keyed JSON records. Append-only; values are stored on disk. */
enum mst_kind {
    MST_CONV = 1,        /* key = conversation id, owner = NULL */
    MST_PARTICIPANT = 2, /* key = participant id, owner = conversation id */
    MST_THREAD = 3,      /* key = thread id, owner = conversation id */
    MST_AGENT = 4,       /* key = agent id, owner = NULL (last known state) */
    MST_SCOPE = 5,       /* key = scope id, owner = NULL */
    MST_KIND_MAX = 5,
};

struct mst_record {
    enum mst_kind kind;
    const char *key;
    const char *owner; /* NULL when the kind has no owner */
    const char *json;  /* the document, UTF-8 JSON text */
    size_t len;
};

struct mst_turn {
    const char *id;           /* "turn-<ULID>" */
    const char *conv_id;
    uint64_t seq;             /* per conversation, 1-based, chosen by the broker */
    const char *thread_id;    /* NULL if none */
    const char *participant;
    const char *content_type;
    int64_t ts;               /* ms */
    const char *json;         /* the full Turn object */
    size_t len;
};

struct mst_turn_query {
    const char *conv_id;   /* required */
    uint64_t after_seq;    /* exclusive lower bound (0 = from the start) */
    uint64_t before_seq;   /* exclusive upper bound (0 = none) */
    int desc;              /* 1 = newest first */
    const char *thread_id; /* only turns of this thread (NULL = all) */
    size_t limit;          /* 0 = no limit */
};

struct mst_event {
    uint64_t seq;        /* broker-wide, 1-based, strictly increasing */
    const char *id;      /* ULID; sorts like seq */
    const char *type;    /* "agent_registered", "mail.turn.added", ... */
    const char *conv_id; /* conversationId for mail.* events, else NULL */
    int64_t ts;
    const char *json;    /* the full Event object {id,type,timestamp,source?,data?,causedBy?} */
    size_t len;
};

struct mst_event_query {
    uint64_t after_seq;  /* exclusive */
    const char *conv_id; /* only events of this conversation (NULL = all) */
    size_t limit;        /* 0 = no limit */
};

struct mst_audit {
    const char *id;        /* ULID */
    int64_t ts;
    const char *principal; /* who */
    const char *action;    /* what: "map/inject", "map/agents/stop", "mail/close", ... */
    const char *target;    /* agent / conversation id, may be NULL */
    const char *json;      /* full entry incl. payload */
    size_t len;
};

typedef int (*mst_record_cb)(void *arg, const struct mst_record *r);
typedef int (*mst_turn_cb)(void *arg, const struct mst_turn *t);
typedef int (*mst_event_cb)(void *arg, const struct mst_event *e);
typedef int (*mst_audit_cb)(void *arg, const struct mst_audit *a);

struct mst_store;

struct mst_ops {
    unsigned version;  /* MST_OPS_V1; new methods are only ever appended */
    const char *name;  /* "memory", "sqlite", ... : the URI scheme */

    /* Open or create. On failure returns an mst_rc, writes a human message into
     * errbuf and leaves *out NULL. */
    int (*open)(const struct mst_config *cfg, struct mst_store **out, char *errbuf, size_t errlen);
    /* Flush, checkpoint, release locks, free. Accepts a half-open store and NULL. */
    void (*close)(struct mst_store *st);

    int (*begin)(struct mst_store *st);
    int (*commit)(struct mst_store *st);
    int (*rollback)(struct mst_store *st);

    /* The store's epoch: a ULID minted at creation (stable across restarts). Borrowed. */
    const char *(*epoch)(struct mst_store *st);

    /* Records: upsert, delete (MST_ENOTFOUND if absent), scan one kind (owner NULL = all owners),
     * get one (MST_ENOTFOUND). */
    int (*put)(struct mst_store *st, const struct mst_record *r);
    int (*del)(struct mst_store *st, enum mst_kind kind, const char *owner, const char *key);
    int (*scan)(struct mst_store *st, enum mst_kind kind, const char *owner, mst_record_cb cb, void *arg);
    int (*get)(struct mst_store *st, enum mst_kind kind, const char *owner, const char *key, mst_record_cb cb,
               void *arg);

    /* Turns. append: MST_EEXIST if (conv_id, seq) or id exists. scan: ordered by seq.
     * get: by turn id. last_seq: highest seq of a conversation (0 if none). */
    int (*turn_append)(struct mst_store *st, const struct mst_turn *t);
    int (*turn_scan)(struct mst_store *st, const struct mst_turn_query *q, mst_turn_cb cb, void *arg);
    int (*turn_get)(struct mst_store *st, const char *turn_id, mst_turn_cb cb, void *arg);
    int (*turn_last_seq)(struct mst_store *st, const char *conv_id, uint64_t *seq);
    int (*turn_count)(struct mst_store *st, const char *conv_id, uint64_t *count);

    /* Events. append: MST_EEXIST if seq exists. scan: ascending seq.
     * last: highest seq and its id (0 and "" if empty). seq_of: seq for an event id (MST_ENOTFOUND).
     * first_seq: lowest retained seq (0 if empty). trim: delete events with seq <= upto. */
    int (*event_append)(struct mst_store *st, const struct mst_event *e);
    int (*event_scan)(struct mst_store *st, const struct mst_event_query *q, mst_event_cb cb, void *arg);
    int (*event_last)(struct mst_store *st, uint64_t *seq, char id_out[32]);
    int (*event_seq_of)(struct mst_store *st, const char *event_id, uint64_t *seq);
    int (*event_first_seq)(struct mst_store *st, uint64_t *seq);
    int (*event_trim)(struct mst_store *st, uint64_t upto_seq);

    /* Audit log: append; scan newest first, after_id = exclusive cursor (NULL = newest). */
    int (*audit_append)(struct mst_store *st, const struct mst_audit *a);
    int (*audit_scan)(struct mst_store *st, const char *before_id, size_t limit, mst_audit_cb cb, void *arg);

    /* Human-readable detail of the last MST_EIO / MST_ESCHEMA (borrowed, may be ""). */
    const char *(*last_error)(struct mst_store *st);

    /* ---- methods above are version 1 ---- */
    /* The position just before the first retained event whose id sorts after
     * event_id (ids are ULIDs that sort like seq): *seq = that event's seq - 1,
     * so scanning with after_seq = *seq resumes exactly after event_id even if
     * that event itself was never stored. MST_ENOTFOUND if no retained event
     * sorts after it. */
    int (*event_seq_after_id)(struct mst_store *st, const char *event_id, uint64_t *seq);

    /* ---- version 2 (optional: NULL = every commit is durable on return) ----
     * Deferred durability: when sync_deferred(st) is 1, commit() returns once
     * the transaction is written and visible, and sync() makes every
     * transaction committed before the call durable. Unlike every other
     * method, sync() may run on another thread, concurrently with the rest,
     * so that the broker can work on the next group while the disk flushes.
     * sync() returns MST_OK, or MST_EIO when the flush failed: the
     * transactions it covered may be lost and must not be acknowledged. */
    int (*sync_deferred)(struct mst_store *st);
    int (*sync)(struct mst_store *st);
};

/* Every backend's handle starts with this; the wrappers dispatch through it. */
struct mst_store {
    const struct mst_ops *ops;
};

/* Registry. Built-in backends ("memory", "sqlite") are registered on first use. */
int mst_register(const struct mst_ops *ops);
const struct mst_ops *mst_find(const char *name);

/* Open from a URI: "memory:", "sqlite:PATH" (a bare path means sqlite).
 * Returns an mst_rc; errbuf gets a message naming the problem. */
int mst_open_uri(const char *uri, enum mst_durability dur, struct mst_store **out, char *errbuf, size_t errlen);

/* Wrappers: the only way callers touch a backend. */
static inline void mst_close(struct mst_store *st) { if (st) st->ops->close(st); }
static inline int mst_begin(struct mst_store *st) { return st->ops->begin(st); }
static inline int mst_commit(struct mst_store *st) { return st->ops->commit(st); }
static inline int mst_sync_deferred(struct mst_store *st)
{ return st->ops->version >= MST_OPS_V2 && st->ops->sync_deferred && st->ops->sync_deferred(st); }
static inline int mst_sync(struct mst_store *st)
{ return st->ops->version >= MST_OPS_V2 && st->ops->sync ? st->ops->sync(st) : MST_OK; }
static inline int mst_rollback(struct mst_store *st) { return st->ops->rollback(st); }
static inline const char *mst_epoch(struct mst_store *st) { return st->ops->epoch(st); }
static inline const char *mst_name(struct mst_store *st) { return st->ops->name; }
static inline int mst_put(struct mst_store *st, const struct mst_record *r) { return st->ops->put(st, r); }
static inline int mst_del(struct mst_store *st, enum mst_kind k, const char *owner, const char *key)
{ return st->ops->del(st, k, owner, key); }
static inline int mst_scan(struct mst_store *st, enum mst_kind k, const char *owner, mst_record_cb cb, void *arg)
{ return st->ops->scan(st, k, owner, cb, arg); }
static inline int mst_get(struct mst_store *st, enum mst_kind k, const char *owner, const char *key, mst_record_cb cb, void *arg)
{ return st->ops->get(st, k, owner, key, cb, arg); }
static inline int mst_turn_append(struct mst_store *st, const struct mst_turn *t) { return st->ops->turn_append(st, t); }
static inline int mst_turn_scan(struct mst_store *st, const struct mst_turn_query *q, mst_turn_cb cb, void *arg)
{ return st->ops->turn_scan(st, q, cb, arg); }
static inline int mst_turn_get(struct mst_store *st, const char *id, mst_turn_cb cb, void *arg)
{ return st->ops->turn_get(st, id, cb, arg); }
static inline int mst_turn_last_seq(struct mst_store *st, const char *conv, uint64_t *seq)
{ return st->ops->turn_last_seq(st, conv, seq); }
static inline int mst_turn_count(struct mst_store *st, const char *conv, uint64_t *n)
{ return st->ops->turn_count(st, conv, n); }
static inline int mst_event_append(struct mst_store *st, const struct mst_event *e) { return st->ops->event_append(st, e); }
static inline int mst_event_scan(struct mst_store *st, const struct mst_event_query *q, mst_event_cb cb, void *arg)
{ return st->ops->event_scan(st, q, cb, arg); }
static inline int mst_event_last(struct mst_store *st, uint64_t *seq, char id[32]) { return st->ops->event_last(st, seq, id); }
static inline int mst_event_seq_of(struct mst_store *st, const char *id, uint64_t *seq) { return st->ops->event_seq_of(st, id, seq); }
static inline int mst_event_first_seq(struct mst_store *st, uint64_t *seq) { return st->ops->event_first_seq(st, seq); }
static inline int mst_event_seq_after_id(struct mst_store *st, const char *id, uint64_t *seq)
{ return st->ops->event_seq_after_id(st, id, seq); }
static inline int mst_event_trim(struct mst_store *st, uint64_t upto) { return st->ops->event_trim(st, upto); }
static inline int mst_audit_append(struct mst_store *st, const struct mst_audit *a) { return st->ops->audit_append(st, a); }
static inline int mst_audit_scan(struct mst_store *st, const char *before, size_t limit, mst_audit_cb cb, void *arg)
{ return st->ops->audit_scan(st, before, limit, cb, arg); }
static inline const char *mst_last_error(struct mst_store *st) { return st->ops->last_error(st); }

extern const struct mst_ops mst_memory_ops;
extern const struct mst_ops mst_sqlite_ops;

#endif
