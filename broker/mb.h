/* mb.h - the broker's core types and the API handlers use.
 *
 * Threading: everything here belongs to the one lws event-loop thread.
 *
 * Flow: net.c reassembles a WebSocket message -> mb_session_on_message()
 * parses it -> mb_dispatch() finds the handler in the method table, checks
 * connection state and permissions -> the handler reads cx->params, changes
 * state, emits events (mb_emit) and sets cx->result or returns an error ->
 * the reply is queued on the session. Outbound frames are queued per session
 * and written one per WRITEABLE callback.
 *
 * Durability: a handler that writes to the store calls mb_txn(b) first. Every
 * frame queued while a transaction is open is held back (per connection, in
 * order) until that transaction has committed; the commit runs at the start
 * of the next loop pass (group commit). So a reply or an event never reaches
 * a peer before the write it reports is durable.
 */
#ifndef MB_H
#define MB_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "mb_config.h"
#include "mb_log.h"
#include "mb_map.h"
#include "mp_err.h"
#include "mp_filter.h"
#include "mp_json.h"
#include "mp_rpc.h"
#include "mp_ulid.h"
#include "store.h"

struct lws;
struct lws_context;
struct lws_vhost;
typedef struct mb_broker mb_broker;
typedef struct mb_session mb_session;
typedef struct mb_agent mb_agent;
typedef struct mb_scope mb_scope;
typedef struct mb_sub mb_sub;
typedef struct mb_frame mb_frame;
typedef struct mb_mail mb_mail;
typedef struct mb_auth mb_auth;

#define MB_ID_BUF (MP_ID_MAX + 1)

/* ---- outbound frames -------------------------------------------------- */

/* An encoded, immutable message with LWS_PRE headroom, shared by refcount among
 * every queue that sends it (fan-out never copies). */
struct mb_frame {
    int refs;
    size_t len;
    char *mem; /* mem + LWS_PRE = text (NUL-terminated) */
};
/* Encode j (borrowed) into a new frame with refs = 1. NULL on OOM. */
mb_frame *mb_frame_json(const json_t *j);
/* New frame with room for len bytes of text (refs = 1, NUL-terminated, contents
 * to be written through mb_frame_buf before it is queued). NULL on OOM. */
mb_frame *mb_frame_alloc(size_t len);
char *mb_frame_buf(mb_frame *f);
/* New frame holding a copy of text[0..len). */
mb_frame *mb_frame_text(const char *text, size_t len);
const char *mb_frame_data(const mb_frame *f);
void mb_frame_ref(mb_frame *f);
void mb_frame_unref(mb_frame *f);

/* ---- sessions ----------------------------------------------------------- */

enum mb_pstate { MB_AWAIT_CONNECT = 0, MB_AWAIT_AUTH, MB_READY, MB_CLOSED };
enum mb_ptype { MB_PT_CLIENT = 0, MB_PT_AGENT, MB_PT_GATEWAY, MB_PT_SYSTEM };

/* frame kinds in a queue: responses are never dropped; events may be */
enum mb_qkind { MB_Q_RESPONSE = 0, MB_Q_MESSAGE, MB_Q_EVENT };

typedef struct mb_qent {
    struct mb_qent *next;
    mb_frame *f;
    uint64_t gen;   /* releasable once the broker's committed_gen >= gen */
    size_t off;     /* bytes already written (large frames go out in fragments) */
    enum mb_qkind kind;
} mb_qent;

/* Authenticated identity and what it may do (filled by auth.c). */
typedef struct mb_principal {
    char id[MB_ID_BUF];
    char method[32];       /* "none", "api-key", "bearer", "mtls" */
    int64_t expires_at;    /* ms, 0 = never */
    int operator_;         /* may use operator controls (inject, stop, suspend, resume, close any) */
    json_t *agents;        /* array of agent-id patterns it may register/act for; NULL = any */
    json_t *conversations; /* array of conversation ids it may read/write; NULL = any */
    json_t *types;         /* allowed participant types; NULL = any */
} mb_principal;

struct mb_session {
    mb_broker *b;
    struct lws *wsi;              /* NULL while detached (socket gone, waiting for resume) */
    uint64_t serial;              /* unique per broker run */
    enum mb_pstate state;
    enum mb_ptype ptype;
    char session_id[MP_ULID_LEN + 1];
    char participant_id[MB_ID_BUF];
    char resume_token[40];
    char *name;
    char peer[64];                /* remote address */
    int tls;                      /* came in over TLS */
    int detached;                 /* socket closed; kept for resume until detached_at + window */
    int64_t created_at, last_active, detached_at;
    char *primary_agent;          /* first agent registered on this session (owned string) or NULL */
    mb_map *owned;                /* agent id -> mb_agent* (borrowed) */
    mb_sub *subs;                 /* linked list */
    int nsubs;
    mb_principal principal;
    int authenticated;
    json_t *disconnect_policy;    /* from map/connect, or NULL */
    /* inbound reassembly */
    char *rx;
    size_t rx_len, rx_cap;
    int rx_too_big;               /* discarding an oversize message until its end */
    size_t rx_discarded;
    int64_t rx_last;              /* ms of the last discarded chunk */
    /* outbound queue */
    mb_qent *q_head, *q_tail;
    size_t q_count, q_bytes;
    uint64_t dropped;             /* event notifications dropped (slow consumer) */
    int64_t full_since;           /* ms when the queue first hit its limit, 0 if not full */
    int64_t progress_at;          /* ms of the last write, or when the queue became non-empty */
    int close_after_flush;        /* map/disconnect: close once the queue is empty */
    int in_wake_list;
    mb_session *wake_next;
    mb_session *next_dead;        /* graveyard link */
    /* rate limiting */
    int64_t rl_window_start;
    long long rl_count;
    /* observer (plain /observe WebSocket, not MAP) */
    int observer;
    int final_close;              /* session ends for good when the socket closes (no resume) */
    char *peer_system;            /* outbound federation link: the system id dialed, else NULL */
    void *obs;                    /* observer state (observe.c) */
    /* -- interop (#20): published MAP clients (compat.c, mail_v11.c) -- */
    char *url_credential;         /* ?token= / ?access_token= of the WebSocket upgrade, used by map/connect
                                     when it carries no auth (owned, wiped when freed), or NULL */
    unsigned compat_noted;        /* MB_COMPAT_* absorptions already logged on this connection */
    int mail_push;                /* wants mail/turn.received pushes (map/connect capabilities.mail) */
    unsigned notify_errors;       /* failed notifications on this connection (the first few are logged) */
};

/* The "from" identity: primary agent id if any, else the participant id. */
const char *mb_session_from(const mb_session *s);

/* Queue a frame (takes a new reference; the caller keeps its own). Applies the
 * queue limits: a frame of kind MB_Q_EVENT/MB_Q_MESSAGE is dropped when the
 * queue is full (counted in s->dropped); responses always go in.
 * Returns 0 if queued, 1 if dropped, -1 if the session is closed. */
int mb_session_send(mb_session *s, mb_frame *f, enum mb_qkind kind);
/* Encode and queue a JSON message (borrowed). */
int mb_session_send_json(mb_session *s, const json_t *j, enum mb_qkind kind);
/* Queue a close after everything queued so far has been written. */
void mb_session_close_after_flush(mb_session *s, int code, const char *reason);

/* ---- registry ----------------------------------------------------------- */

struct mb_agent {
    char *id;
    char *owner;          /* participant id of the owning session; NULL = orphaned */
    mb_session *session;  /* owning session (borrowed) or NULL */
    char *parent;         /* parent agent id or NULL */
    char *role;           /* or NULL */
    char *state;          /* "registered", "active", ... */
    char *prev_state;     /* state before suspend (for resume) */
    json_t *doc;          /* the full Agent object as returned to clients (owned) */
    mb_map *scopes;       /* scope id -> mb_scope* */
    mb_map *children;     /* child id -> mb_agent* */
    char *conversation;   /* mail: conversation this agent works in (task conversation), or NULL */
    char *principal;      /* principal id that registered it (auth), or NULL */
    int unclaimed;        /* spawned record whose own process has not registered it yet */
    int64_t expires_at;   /* orphaned after a restart: removed at this time unless reclaimed (0 = never) */
};

struct mb_scope {
    char *id;
    char *parent;
    json_t *doc;          /* the Scope object (owned) */
    mb_map *members;      /* agent id -> mb_agent* (insertion order) */
};

mb_agent *mb_agent_get(mb_broker *b, const char *id);
mb_scope *mb_scope_get(mb_broker *b, const char *id);
/* Refresh agent->doc from the struct fields (state, scopes, children...). Returns doc (borrowed). */
json_t *mb_agent_doc(mb_agent *a);
/* Remove an agent (events agent_unregistered + scope_member_left, store delete). */
void mb_agent_remove(mb_broker *b, mb_agent *a, const char *reason, const char *caused_by);
/* Change state with validation; emits agent_state_changed. Returns 0 or MP_STATE_INVALID (with e). */
int mb_agent_set_state(mb_broker *b, mb_agent *a, const char *state, const char *source, mp_err *e);
/* Write the agent's current document to the store. */
void mb_agent_persist(mb_broker *b, mb_agent *a);

/* ---- events ------------------------------------------------------------- */

/* A routed message, encoded once (the Message object as compact JSON) and
 * shared by its map/message frame and its message_* events, whose data is
 * built from it only when something reads it (mb_event_data). Refcounted. */
typedef struct mb_msgrec {
    int refs;
    char *fed_from; /* the peer system it came from (federatedFrom), or NULL */
    size_t len;
    char text[];
} mb_msgrec;

typedef struct mb_event {
    uint64_t seq;
    char id[MP_ULID_LEN + 1];
    char *type;
    char *source;     /* may be NULL */
    char *conv_id;    /* mail events: the conversation, else NULL */
    json_t *data;     /* owned; NULL until mb_event_data builds it for message events
                         recorded from an mb_msgrec */
    mb_msgrec *msg;   /* message_sent / message_delivered: the message (a reference) */
    char *rcpt;       /* message_delivered: the recipient id */
    int64_t ts;
    char *text;       /* encoded Event object {id,type,timestamp,source,data,causedBy}; NULL
                         until needed for events recorded lazily (mb_event_text) */
    size_t text_len;
    size_t cost;      /* memory charged to the history */
    char *caused_by;  /* JSON array text, e.g. ["01..."], or NULL */
} mb_event;

struct mb_sub {
    mb_sub *next;            /* in session list */
    mb_session *s;
    char id[MP_ULID_LEN + 1];
    mp_filter *filter;
    json_t *filter_json;     /* owned (for diagnostics) */
    uint64_t seq;            /* last sequenceNumber sent */
    uint64_t acked;          /* last acknowledged */
    int exclude_own;
    int include_payloads;
    uint64_t overflow_first; /* first event seq dropped in the current overflow run, 0 = none */
    char last_id[MP_ULID_LEN + 1]; /* newest event id queued on this subscription */
};

/* Emit an event: assigns seq/id/time, records it (memory history + store unless
 * it is a message_* event), and fans it out to matching subscriptions.
 * data is stolen. caused_by may be NULL. Copies the new event id into id_out
 * if given. Returns the event (borrowed; owned by the history). */
mb_event *mb_emit(mb_broker *b, const char *type, const char *source, json_t *data, const char *caused_by,
                  char id_out[MP_ULID_LEN + 1]);
/* Same; with lazy set (only allowed when no subscription exists and the event
 * is not persisted) the event goes into the history unencoded, charged
 * size_hint bytes (plus overhead). */
mb_event *mb_emit_ex(mb_broker *b, const char *type, const char *source, json_t *data, const char *caused_by,
                     char id_out[MP_ULID_LEN + 1], int lazy, size_t size_hint);
/* mb_emit with the data given as JSON text only (data_text, data_len bytes,
 * a JSON object; borrowed and copied): the event text is spliced around it and
 * no tree is built; the first reader that needs the data (a subscription
 * filter, a visibility check, an observer) parses it back (mb_event_data).
 * conv_id: the conversation of a mail.* event (what mb_emit reads from
 * data.conversationId), or NULL. No caused_by, no id_out. Returns the event
 * (borrowed) or NULL on OOM. */
mb_event *mb_emit_text(mb_broker *b, const char *type, const char *source, const char *conv_id,
                       const char *data_text, size_t data_len);
/* message_sent (rcpt NULL) or message_delivered (to rcpt, at ts) of message m,
 * whose data is built from m when first read: with no subscription anywhere
 * nothing is built or encoded now (not persisted: map/send is ephemeral).
 * Takes a reference to m. caused_by, id_out as for mb_emit. */
mb_event *mb_emit_msg(mb_broker *b, const char *type, const char *source, mb_msgrec *m, const char *rcpt,
                      int64_t ts, const char *caused_by, char id_out[MP_ULID_LEN + 1]);
/* The encoded Event object (encodes once on first use); NULL on OOM. */
const char *mb_event_text(mb_event *ev);
/* The event's data (built on first use for mb_emit_msg events); NULL on OOM. */
json_t *mb_event_data(mb_event *ev);
/* Drop a reference to m; the last one frees it. NULL-safe. */
void mb_msgrec_unref(mb_msgrec *m);

/* ---- method handlers ---------------------------------------------------- */

typedef struct mb_ctx {
    mb_broker *b;
    mb_session *s;
    const char *method;
    json_t *params;   /* borrowed, always an object */
    json_t *id;       /* borrowed, NULL for notifications */
    json_t *result;   /* set by the handler (owned by ctx); NULL -> {} */
    char *result_raw; /* or: the result already encoded (malloc, owned and freed by ctx), spliced into
                       * the reply; takes precedence over result */
    size_t result_raw_len;
    mp_err err;
    /* Optional work to run after the reply has been queued (e.g. replaying
     * stored events to a new subscription, which the SDK only accepts once it
     * knows the subscription id). */
    void (*after)(struct mb_ctx *cx, void *arg);
    void *after_arg;
    /* Delivering a federated envelope: the original Message (id, from,
     * timestamp are kept) and its source system. NULL otherwise. */
    json_t *origin;
    const char *origin_system;
} mb_ctx;

typedef int (*mb_handler)(mb_ctx *cx);

enum mb_mflags {
    MB_M_PRECONNECT = 1 << 0, /* allowed before map/connect succeeded */
    MB_M_PREAUTH = 1 << 1,    /* allowed while authentication is pending */
    MB_M_OPERATOR = 1 << 2,   /* needs an operator principal when auth is on */
    MB_M_WRITES = 1 << 3,     /* changes state (for audit / metrics) */
};

typedef struct mb_method {
    const char *name;
    mb_handler fn;
    unsigned flags;
} mb_method;

/* Method tables contributed by each module (NULL-name terminated). */
extern const mb_method mb_methods_conn[];
extern const mb_method mb_methods_agents[];
extern const mb_method mb_methods_scopes[];
extern const mb_method mb_methods_send[];
extern const mb_method mb_methods_events[];
extern const mb_method mb_methods_mail[];
extern const mb_method mb_methods_federation[];
extern const mb_method mb_methods_audit[];
extern const mb_method mb_methods_mail_v11[]; /* mail_v11.c: mail v1.1 methods beside v1.0 */

/* Convenience for handlers: set cx->err and return its code. */
#define MB_FAIL(cx, code, field, ...) mp_err_set(&(cx)->err, (code), (field), __VA_ARGS__)

/* ---- the broker --------------------------------------------------------- */

typedef struct mb_stats {
    uint64_t connections_total, connections_open;
    uint64_t frames_in, frames_out, bytes_in, bytes_out;
    uint64_t requests, errors, parse_errors;
    uint64_t messages_routed, deliveries, delivery_failures;
    uint64_t events_emitted, event_notifications, events_dropped;
    uint64_t turns_recorded, conversations_created;
    uint64_t commits, commit_us_total, commit_us_max;
    uint64_t commit_hist[12];     /* buckets: <=100us,250,500,1ms,2.5,5,10,25,50,100,250,+Inf */
    uint64_t slow_consumers_closed, oversize_closed, rate_limited;
    /* -- interop (#20) -- */
    uint64_t notification_errors; /* notifications whose handling failed (nobody gets the error) */
    uint64_t mail_pushes;         /* mail/turn.received notifications queued */
} mb_stats;

struct mb_broker {
    mb_config *cfg;
    struct lws_context *ctx;
    struct mst_store *store;
    mp_limits limits;
    mp_ulid_gen ulid;
    int64_t started_at;
    unsigned char *wbuf;          /* LWS_PRE + MB_WRITE_CHUNK: one coalesced write (session.c) */
    mb_qent *qent_free;           /* spare queue entries (session.c): a fan-out queues one per */
    size_t qent_free_n;           /* observer per event, so they are reused, not malloc'd */

    /* sessions */
    mb_map *sessions;          /* session id -> mb_session* (attached and detached) */
    mb_map *participants;      /* participant id -> mb_session* (most recent) */
    mb_map *resume_tokens;     /* token -> mb_session* */
    uint64_t next_serial;
    mb_session *graveyard;     /* closed sessions freed at the end of the loop pass */

    /* registry */
    mb_map *agents;            /* id -> mb_agent* (registration order) */
    mb_map *scopes;            /* id -> mb_scope* */

    /* events */
    uint64_t event_seq;        /* last assigned */
    mb_event **hist;           /* ring of the newest events */
    size_t hist_cap, hist_head, hist_len;
    size_t hist_bytes;         /* approximate memory held by the history */
    mb_map *sub_index;         /* subscription id -> mb_sub* */

    /* group commit: frames queued with gen > committed_gen wait (session.c);
     * committed_gen is the newest durable group (with a deferred-sync store,
     * the one the sync thread last flushed: see broker.c) */
    int txn_open;
    uint64_t txn_gen, committed_gen;
    mb_session *wake_list;
    struct mb_syncer *syncer;  /* deferred-sync stores only, else NULL */
    int syncer_tried;
    int store_failed;          /* a commit failed: the broker refuses writes (see broker.c) */

    mb_mail *mail;             /* mail service (mail.c) */
    mb_auth *auth;             /* authentication (auth.c), NULL = open */
    mb_stats stats;
    volatile int stopping;
};

/* Lifecycle (broker.c). */
int mb_broker_init(mb_broker *b, mb_config *cfg, char *errbuf, size_t errlen);
void mb_broker_free(mb_broker *b);
/* Called from a loop timer: commit the open transaction, release held frames
 * and free the sessions retired during the pass. */
void mb_broker_commit(mb_broker *b);
/* Commit the open transaction and release held frames, nothing else: safe in
 * the middle of a pass (after each request when commit-window-us is 0). */
void mb_broker_commit_now(mb_broker *b);
/* On the loop after every service pass: release what the sync thread made
 * durable since (no-op without a deferred-sync store). */
void mb_broker_synced(mb_broker *b);
/* Stop the sync thread once it has flushed what it was asked to. */
void mb_broker_sync_stop(mb_broker *b);
/* Periodic housekeeping (expired sessions, slow consumers). */
void mb_broker_housekeeping(mb_broker *b);

/* Open a store transaction for the current loop pass if none is open. Every
 * handler calls this before its first store write. Returns 0, or an error if
 * the store is failed (the handler should fail the request with MP_INTERNAL). */
int mb_txn(mb_broker *b);

/* New ULID (with an optional prefix such as "conv-") into out (>= 40 bytes). */
void mb_new_id(mb_broker *b, const char *prefix, char *out, size_t outlen);
int64_t mb_now(void);

/* Session lifecycle (session.c). */
mb_session *mb_session_new(mb_broker *b, struct lws *wsi, const char *peer, int tls);
/* The socket is gone: detach (keep for resume) or destroy. */
void mb_session_on_close(mb_session *s);
/* One complete inbound WebSocket message. */
void mb_session_on_message(mb_session *s, const char *buf, size_t len);
/* Writeable: write at most one frame (fragment). Returns -1 to close the connection. */
int mb_session_on_writeable(mb_session *s);
/* Destroy now: subscriptions, agents per disconnect policy, queue. */
void mb_session_destroy(mb_session *s, const char *reason);
/* Free a session from the graveyard (no events, no side effects). */
void mb_session_free(mb_session *s);
/* Free the spare queue entries kept for reuse (at broker shutdown). */
void mb_session_spares_free(mb_broker *b);
/* Attach detached session `old` to the live socket of `fresh` (resume). Returns old. */
mb_session *mb_session_resume(mb_session *fresh, mb_session *old);

/* Dispatch (dispatch.c). */
void mb_dispatch(mb_session *s, mp_msg *m);
const mb_method *mb_method_find(const char *name);

/* Subscriptions and history (events.c). */
/* Walk recorded events with seq > after_seq in order (store for the part older
 * than the in-memory history, then memory). cb returns non-zero to stop. */
typedef int (*mb_event_cb)(void *arg, const mb_event *ev);
int mb_events_scan(mb_broker *b, uint64_t after_seq, mb_event_cb cb, void *arg);
/* Resolve an event id to its seq: 0 and MST_ENOTFOUND if unknown. */
int mb_events_seq_of(mb_broker *b, const char *event_id, uint64_t *seq);
/* Is this event visible to the session (permissions)? */
int mb_event_visible(mb_broker *b, mb_session *s, const mb_event *ev);
void mb_subs_drop_session(mb_broker *b, mb_session *s);
void mb_events_free(mb_broker *b);
/* Filter environment backed by the registry. */
const mp_filter_env *mb_filter_env(mb_broker *b);

/* Send (router.c). Deliver one map/message frame to a session. */
int mb_route_deliver(mb_broker *b, mb_session *to, mb_frame *f);

/* Mail (mail.c): lifecycle, and the hooks the core calls. */
int mb_mail_init(mb_broker *b, char *errbuf, size_t errlen);
void mb_mail_free(mb_broker *b);
/* map/send carried meta.mail: record an intercepted turn (never fails the send). */
void mb_mail_intercept(mb_broker *b, mb_session *s, const char *message_id, json_t *params);
/* An agent was spawned by `parent` (may be NULL): give it a task conversation if the parent has one. */
void mb_mail_on_spawn(mb_broker *b, mb_session *s, mb_agent *child, mb_agent *parent);
/* Task conversation a map/send without meta.mail should be recorded in, or NULL. */
const char *mb_mail_task_context(mb_broker *b, mb_session *s, json_t *to);
/* An agent stopped or unregistered: close its task conversation with a summary. */
void mb_mail_on_agent_stop(mb_broker *b, mb_agent *a, const char *reason);


/* ---- cross-module internals ---- */
void mb_agent_free(mb_agent *a);
void mb_scope_free(mb_scope *sc);
/* Rebuild registry entries from stored documents (doc is stolen). */
mb_agent *mb_agent_restore(mb_broker *b, json_t *doc);
mb_scope *mb_scope_restore(mb_broker *b, json_t *doc);
/* Route a message as cx->s (router.c). On success sets cx->result {messageId, delivered}
 * and writes the message id into msg_id_out (>= 64 bytes). */
/* Route one message from cx->s (map/send). On success the map/send result is
 * in cx->result_raw (or cx->result): a caller answering with its own result
 * drops it first (mb_ctx_drop_result). */
int mb_send_message(mb_ctx *cx, json_t *to, json_t *payload, json_t *meta, char *msg_id_out);
/* Free whatever result a handler step left in cx (result and result_raw). */
void mb_ctx_drop_result(mb_ctx *cx);
/* Record an operator action in the audit log (audit.c). payload is borrowed. */
void mb_audit(mb_ctx *cx, const char *target, json_t *payload);
/* Federation (federation.c). */
int mb_federation_forward(mb_ctx *cx, const char *system, json_t *message);
void mb_federation_free(void);
/* Federation links we dial (federation.c). */
int mb_federation_start(mb_broker *b, char *errbuf, size_t errlen);
/* A response arrived on an outbound link (our own requests' answers). */
void mb_federation_on_response(mb_session *s, mp_msg *m);
/* The outbound link's socket is up / gone. */
mb_session *mb_federation_on_established(mb_broker *b, struct lws *wsi);
void mb_federation_dial_failed(struct lws *wsi, const char *why);
void mb_federation_stop(void);
void mb_federation_link_down(mb_session *s);
/* End the session for good when its socket closes (no resume). */
void mb_session_mark_final(mb_session *s);

#endif
