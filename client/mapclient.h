/* mapclient.h - libmapclient: a small C client for MAP brokers (JSON-RPC 2.0 over WebSocket).
 *
 * One mc_client is one logical MAP participant (a client or an agent) with one
 * WebSocket connection at a time. Everything runs on the caller's thread: the
 * library owns a private libwebsockets context and drives it only from inside
 * mc_connect(), mc_call(), mc_service() and the other blocking calls. An
 * mc_client is not thread-safe; use it from one thread.
 *
 * Requests are correlated by JSON-RPC id. Two forms exist:
 *   - blocking: mc_call() (and the helpers built on it) run the loop until the
 *     reply arrives or the timeout passes;
 *   - async:    mc_request() returns at once; the callback runs later from
 *     mc_service().
 *
 * Callbacks (map/message, map/event, other notifications, async replies) are
 * only ever invoked from mc_service() called at top level, never from inside
 * mc_call() or from within another callback. So: blocking calls inside a
 * callback are allowed, and notifications that arrive while a blocking call
 * waits are kept, in arrival order, for the next mc_service().
 *
 * Reconnect (mc_options.reconnect, on by default): when an established
 * connection drops, the client reconnects with exponential backoff (initial
 * backoff_initial_ms, doubling, capped at backoff_max_ms), re-sends map/connect
 * with the resumeToken of the last connect result, re-registers the same agent
 * id, re-creates every subscription (or keeps it when the broker resumed the
 * session) and catches up each one with map/replay {afterEventId: the last
 * eventId it delivered, filter}, page by page until hasMore is false. Each
 * missed event is delivered exactly once (events are de-duplicated on eventId,
 * which MAP makes strictly increasing) and before any live event that arrived
 * during the catch-up. Requests in flight when the connection drops fail with
 * MC_ERR_CLOSED; requests issued while reconnecting wait for the new session.
 *
 * Errors: every function that can fail returns 0 on success or a non-zero
 * code, and fills the optional mp_err (from protocol/mp_err.h) with the code, a
 * message and (for broker errors) the offending field. Codes are either MAP /
 * JSON-RPC error codes returned by the broker (enum mp_code, e.g. 2001
 * AGENT_NOT_FOUND, -32601 METHOD_NOT_FOUND) or the client-side codes below,
 * which are small negative numbers that never collide with MAP codes.
 *
 * Ownership vocabulary used below: "borrowed" = the callee does not keep or
 * free it; "stolen" = the callee takes the reference, even on failure;
 * "returned-new" = the caller must release it (json_decref / free).
 */
#ifndef MAPCLIENT_H
#define MAPCLIENT_H

#include <jansson.h>
#include <stddef.h>

#include "mp_err.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MC_VERSION "0.1.0"

/* Client-side error codes (in mp_err.code and as return values). */
enum mc_code {
    MC_ERR_USAGE = -1,     /* invalid argument (NULL client, bad URL, missing field) */
    MC_ERR_CONNECT = -2,   /* could not open the WebSocket / TLS connection */
    MC_ERR_TIMEOUT = -3,   /* no reply within the timeout */
    MC_ERR_CLOSED = -4,    /* the connection closed before the reply came, or the client is closed */
    MC_ERR_PROTOCOL = -5,  /* the broker sent something that is not valid MAP / JSON-RPC */
    MC_ERR_NOMEM = -6,     /* out of memory */
};

typedef struct mc_client mc_client;
typedef struct mc_sub mc_sub;

typedef enum mc_ptype { MC_PT_CLIENT = 0, MC_PT_AGENT = 1 } mc_ptype;

/* Connection state as reported to mc_options.on_state. */
typedef enum mc_state {
    MC_STATE_DISCONNECTED = 0, /* no connection (initial, or closed for good) */
    MC_STATE_CONNECTING,       /* WebSocket / TLS handshake */
    MC_STATE_HANDSHAKE,        /* map/connect, agent registration, subscription restore + catch-up */
    MC_STATE_READY,            /* session usable */
    MC_STATE_RECONNECT_WAIT,   /* dropped; waiting for the next reconnect attempt */
} mc_state;

/* One map/event delivered to a subscription callback. All pointers are borrowed
 * and valid only during the callback (json_incref what you keep). */
typedef struct mc_event {
    const char *event_id;  /* envelope eventId (ULID) */
    json_t *event;         /* the Event object {id, type, timestamp, source?, data?, causedBy?} */
    json_t *envelope;      /* the map/event params, or the map/replay item for caught-up events */
    int replayed;          /* 1 when delivered by the reconnect catch-up (map/replay) */
} mc_event;

/* map/message: message is the Message object {id, from, to, timestamp, payload?, meta?} (borrowed). */
typedef void (*mc_message_cb)(mc_client *c, json_t *message, void *arg);
/* map/event for a subscription. */
typedef void (*mc_event_cb)(mc_client *c, mc_sub *sub, const mc_event *ev, void *arg);
/* Any other broker notification (method and params borrowed). */
typedef void (*mc_notify_cb)(mc_client *c, const char *method, json_t *params, void *arg);
/* Reply to mc_request(): on success err is NULL and result is the result (borrowed);
 * on failure result is NULL and err describes it (MAP code or MC_ERR_*). */
typedef void (*mc_reply_cb)(mc_client *c, json_t *result, const mp_err *err, void *arg);
/* State changes (including every reconnect). detail is a short reason, may be NULL. */
typedef void (*mc_state_cb)(mc_client *c, mc_state state, const char *detail, void *arg);

typedef struct mc_options {
    const char *url;            /* ws://host:port/path or wss://...; NULL = ws://127.0.0.1:7420/ */
    const char *ca_file;        /* wss: PEM CA bundle to verify the broker with; NULL = system store */
    int insecure;               /* wss: accept self-signed / mismatched certificates (tests only) */

    const char *auth_method;    /* e.g. "api-key", "bearer"; NULL = no auth object in map/connect */
    const char *auth_token;     /* credential sent as auth.token */

    mc_ptype participant_type;  /* MC_PT_CLIENT (default) or MC_PT_AGENT */
    const char *name;           /* participant name for map/connect, optional */

    /* Agent registration (map/agents/register after every connect) when
     * register_agent is non-zero or agent_id is set. */
    int register_agent;
    const char *agent_id;       /* chosen agent id; NULL = broker-generated (then kept for re-registration) */
    const char *agent_name;     /* defaults to name */
    const char *agent_role;
    const char *agent_parent;
    json_t *agent_metadata;     /* borrowed (copied at mc_client_new), optional */

    int reconnect;              /* 0 = default on; set MC_RECONNECT_OFF to disable */
    int backoff_initial_ms;     /* default 100 */
    int backoff_max_ms;         /* default 5000 */
    int connect_timeout_ms;     /* per attempt, default 5000 */
    size_t max_message;         /* inbound reassembly cap in bytes, default 16 MiB */

    mc_message_cb on_message;   void *message_arg;
    mc_notify_cb on_notify;     void *notify_arg;
    mc_state_cb on_state;       void *state_arg;
    mc_event_cb on_event;       void *event_arg;   /* for subscriptions created without a callback */
} mc_options;

#define MC_RECONNECT_OFF (-1)

/* ---- lifecycle ---- */

/* Create a client. opts is borrowed: strings are copied. Does not connect.
 * Returns a new client (free with mc_client_free), or NULL with *err filled
 * (MC_ERR_USAGE for a bad URL, MC_ERR_NOMEM, MC_ERR_CONNECT if lws cannot create its context).
 * err may be NULL. */
mc_client *mc_client_new(const mc_options *opts, mp_err *err);

/* Connect and run the MAP handshake (map/connect, then agent registration).
 * Blocks up to timeout_ms (<= 0: connect_timeout_ms). Returns 0 when READY, or:
 *   MC_ERR_CONNECT  the WebSocket connection failed (nothing listening, TLS failure)
 *   MC_ERR_TIMEOUT  the handshake did not finish in time
 *   a MAP code      the broker refused map/connect or map/agents/register (e.g. 1001, 3000)
 * No automatic retry here: reconnect only applies to connections that reached READY once. */
int mc_connect(mc_client *c, int timeout_ms, mp_err *err);

/* Send map/disconnect (waiting at most timeout_ms for the reply) and close the
 * socket. Pending requests fail with MC_ERR_CLOSED. Disables reconnect. Safe to call
 * when not connected. Returns 0, or MC_ERR_TIMEOUT if the close did not complete
 * (the socket is dropped anyway). */
int mc_close(mc_client *c, int timeout_ms);

/* Close (without waiting) and free everything, including mc_sub handles.
 * Callbacks for pending requests are NOT called. c may be NULL. */
void mc_client_free(mc_client *c);

/* Drive the loop: wait up to timeout_ms (0 = do not block) for network activity,
 * run timers (request timeouts, reconnect), then invoke queued callbacks.
 * Returns the number of callbacks invoked (>= 0), or MC_ERR_CLOSED when the
 * client is disconnected and will not reconnect (closed, or reconnect disabled).
 * When called from inside a callback it only services the network (no nested
 * callback dispatch) and returns 0. */
int mc_service(mc_client *c, int timeout_ms);

mc_state mc_get_state(const mc_client *c);
/* Borrowed strings from the last connect result (NULL before the first connect). */
const char *mc_session_id(const mc_client *c);
const char *mc_participant_id(const mc_client *c);
const char *mc_agent_id(const mc_client *c);    /* the registered agent id, or NULL */
/* Number of successful (re)connects so far; 1 after mc_connect. */
unsigned mc_connect_count(const mc_client *c);
/* The full last map/connect result (borrowed), or NULL. */
json_t *mc_connect_result(const mc_client *c);

/* ---- requests ---- */

/* Blocking request. method borrowed; params stolen (NULL = no params).
 * On success returns 0 and, if result_out is not NULL, stores the result
 * (returned-new; json_decref it). On failure returns the error code and fills
 * *err (may be NULL); *result_out is set to NULL:
 *   MAP / JSON-RPC code  the broker answered with an error object
 *   MC_ERR_TIMEOUT       no reply within timeout_ms (<= 0 means 30000)
 *   MC_ERR_CLOSED        connection lost before the reply (or client closed / never connected)
 *   MC_ERR_USAGE, MC_ERR_NOMEM
 * If the client is reconnecting, the request waits (within the timeout) for the
 * new session before it is sent. */
int mc_call(mc_client *c, const char *method, json_t *params_stolen, int timeout_ms, json_t **result_out, mp_err *err);

/* Async request: queue it and return. cb (may be NULL = fire and forget) runs
 * from mc_service() with the result or the error (same codes as mc_call).
 * method borrowed; params stolen. Returns 0 or MC_ERR_USAGE / MC_ERR_NOMEM / MC_ERR_CLOSED. */
int mc_request(mc_client *c, const char *method, json_t *params_stolen, int timeout_ms, mc_reply_cb cb, void *arg,
               mp_err *err);

/* Send a JSON-RPC notification (no reply), e.g. map/subscribe.ack. params stolen.
 * Returns 0 or MC_ERR_USAGE / MC_ERR_NOMEM / MC_ERR_CLOSED. */
int mc_notify(mc_client *c, const char *method, json_t *params_stolen, mp_err *err);

/* ---- subscriptions ---- */

/* map/subscribe with filter (stolen; NULL = everything). cb/arg receive each event
 * (cb NULL = mc_options.on_event). Blocking, like mc_call. On success *out (may
 * be NULL) receives a handle owned by the client, valid until mc_unsubscribe or
 * mc_client_free. The subscription survives reconnects (see top of file).
 * Returns 0 or the mc_call codes. */
int mc_subscribe(mc_client *c, json_t *filter_stolen, mc_event_cb cb, void *arg, int timeout_ms, mc_sub **out,
                 mp_err *err);
/* map/unsubscribe and free the handle (also when the broker call fails). Returns 0 or mc_call codes. */
int mc_unsubscribe(mc_client *c, mc_sub *sub, int timeout_ms, mp_err *err);
/* Current broker subscription id (changes after a reconnect that could not resume; borrowed). */
const char *mc_sub_id(const mc_sub *sub);
/* eventId of the last event delivered (queued) on this subscription, or NULL. Borrowed. */
const char *mc_sub_last_event_id(const mc_sub *sub);
/* The filter (borrowed). */
json_t *mc_sub_filter(const mc_sub *sub);

/* ---- helpers (blocking; all take timeout_ms and return mc_call codes; result_out as in mc_call) ---- */

/* map/send {to, payload, meta}: to, payload, meta stolen (payload/meta may be NULL). */
int mc_send(mc_client *c, json_t *to_stolen, json_t *payload_stolen, json_t *meta_stolen, int timeout_ms,
            json_t **result_out, mp_err *err);
/* map/send to {agent: agent_id}. */
int mc_send_to_agent(mc_client *c, const char *agent_id, json_t *payload_stolen, json_t *meta_stolen, int timeout_ms,
                     json_t **result_out, mp_err *err);
/* Reply to a received message (borrowed): to {agent: message.from}, meta.isResult:true,
 * meta.correlationId = message.meta.correlationId or message.id; meta_extra (stolen, may be NULL)
 * is merged into meta (e.g. to copy meta.mail). */
int mc_reply(mc_client *c, json_t *message, json_t *payload_stolen, json_t *meta_extra_stolen, int timeout_ms,
             json_t **result_out, mp_err *err);
/* map/replay {afterEventId?, filter?, limit?} (one page; after_event_id borrowed, filter stolen, limit <= 0 = broker default). */
int mc_replay(mc_client *c, const char *after_event_id, json_t *filter_stolen, int limit, int timeout_ms,
              json_t **result_out, mp_err *err);
/* map/agents/list {filter?} (filter stolen, may be NULL). */
int mc_agents_list(mc_client *c, json_t *filter_stolen, int timeout_ms, json_t **result_out, mp_err *err);
/* map/agents/register with params (stolen). */
int mc_agents_register(mc_client *c, json_t *params_stolen, int timeout_ms, json_t **result_out, mp_err *err);
/* map/agents/spawn with params (stolen): {agentId?, name?, role?, parent?, metadata?, initialMessage?, ...}. */
int mc_agents_spawn(mc_client *c, json_t *params_stolen, int timeout_ms, json_t **result_out, mp_err *err);
/* map/agents/stop {agentId, reason?, force?}; reason borrowed, may be NULL. */
int mc_agents_stop(mc_client *c, const char *agent_id, const char *reason, int force, int timeout_ms,
                   json_t **result_out, mp_err *err);
/* map/inject {agentId, content, delivery?}; content stolen, delivery borrowed (NULL = broker default). */
int mc_inject(mc_client *c, const char *agent_id, json_t *content_stolen, const char *delivery, int timeout_ms,
              json_t **result_out, mp_err *err);

/* Mail (MAP.md §10.5): each is map to "mail/<name>" with params stolen (NULL = {}).
 * conversationId and the other fields go in params exactly as on the wire. */
int mc_mail_create(mc_client *c, json_t *params_stolen, int timeout_ms, json_t **result_out, mp_err *err);
int mc_mail_get(mc_client *c, json_t *params_stolen, int timeout_ms, json_t **result_out, mp_err *err);
int mc_mail_list(mc_client *c, json_t *params_stolen, int timeout_ms, json_t **result_out, mp_err *err);
int mc_mail_close(mc_client *c, json_t *params_stolen, int timeout_ms, json_t **result_out, mp_err *err);
int mc_mail_join(mc_client *c, json_t *params_stolen, int timeout_ms, json_t **result_out, mp_err *err);
int mc_mail_leave(mc_client *c, json_t *params_stolen, int timeout_ms, json_t **result_out, mp_err *err);
int mc_mail_invite(mc_client *c, json_t *params_stolen, int timeout_ms, json_t **result_out, mp_err *err);
int mc_mail_turn(mc_client *c, json_t *params_stolen, int timeout_ms, json_t **result_out, mp_err *err);
int mc_mail_turns_list(mc_client *c, json_t *params_stolen, int timeout_ms, json_t **result_out, mp_err *err);
int mc_mail_thread_create(mc_client *c, json_t *params_stolen, int timeout_ms, json_t **result_out, mp_err *err);
int mc_mail_thread_list(mc_client *c, json_t *params_stolen, int timeout_ms, json_t **result_out, mp_err *err);
int mc_mail_summary(mc_client *c, json_t *params_stolen, int timeout_ms, json_t **result_out, mp_err *err);
int mc_mail_replay(mc_client *c, json_t *params_stolen, int timeout_ms, json_t **result_out, mp_err *err);

/* Human-readable name for an error code (MAP, JSON-RPC or MC_ERR_*); static string. */
const char *mc_strerror(int code);

#ifdef __cplusplus
}
#endif
#endif
