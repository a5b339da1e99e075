/* broker_harness.h - stand up a real broker (memory store, open mode) with
 * socketless sessions, feed JSON-RPC text through mb_session_on_message(), run
 * the group commit and read back what each session was sent.
 *
 * Sessions get a fake, never-dereferenced `struct lws *` so that
 * mb_session_send() queues frames (a NULL wsi means "detached" and drops them);
 * the handful of lws calls the core makes on a live socket are stubbed in
 * broker_harness.c. After every request the harness commits
 * (mb_broker_commit), checks that every queued frame has become releasable,
 * pops the frames and keeps them, parsed, in a per-session inbox.
 *
 * Param texts are printf formats in which ' stands for " (so tests can write
 * "{'agentId':'%s'}"); the rewrite applies after formatting, so substituted
 * JSON fragments may use ' too (write \u0027 for a literal apostrophe).
 *
 * Every json_t returned is a new reference the caller releases. On a harness
 * failure the current cmocka test fails (fail_msg).
 */
#ifndef BROKER_HARNESS_H
#define BROKER_HARNESS_H

#include <jansson.h>
#include <stddef.h>

#include "mb.h"

typedef struct bh bh;

/* New broker over memory:. extra: NULL-terminated extra argv (e.g. {"--max-thread-depth","2",NULL}) or NULL. */
bh *bh_new(const char *const *extra);
void bh_free(bh *h);
mb_broker *bh_broker(bh *h);

/* A session as right after the WebSocket upgrade (not connected). */
mb_session *bh_raw(bh *h);
/* A connected session: map/connect {participantType, participantId} (pid may be NULL). Inbox cleared. */
mb_session *bh_connect(bh *h, const char *ptype, const char *pid);
/* An agent connection (participantId = aid) that registered agent aid (role may be NULL). Inbox cleared. */
mb_session *bh_agent(bh *h, const char *aid, const char *role);

/* Feed one raw message, then commit and collect every session's frames. */
void bh_send_raw(bh *h, mb_session *s, const char *text);
/* Request `method` with params built from fmt (' -> "); returns the whole response
 * object ({jsonrpc,id,result|error}). Fails the test if no response arrives. */
json_t *bh_call(bh *h, mb_session *s, const char *method, const char *fmt, ...);
/* bh_call that must succeed; returns the result. */
json_t *bh_ok(bh *h, mb_session *s, const char *method, const char *fmt, ...);
/* bh_call that must fail with `code`; returns the error object ({code,message,data?}). */
json_t *bh_err(bh *h, mb_session *s, int code, const char *method, const char *fmt, ...);
/* Same as bh_err, also checks error.data.field. */
void bh_err_field(bh *h, mb_session *s, int code, const char *field, const char *method, const char *fmt, ...);
/* Notification (no id): the harness commits and collects; nothing is returned. */
void bh_notify(bh *h, mb_session *s, const char *method, const char *fmt, ...);

/* Parse fmt (' -> ") into JSON. */
json_t *bh_json(const char *fmt, ...);

/* Inbox: frames received so far (parsed), oldest first. */
size_t bh_inbox_len(bh *h, mb_session *s);
/* Remove and return the first frame whose "method" equals method (NULL = any frame). NULL if none. */
json_t *bh_pop(bh *h, mb_session *s, const char *method);
/* How many queued frames have this method. */
size_t bh_count(bh *h, mb_session *s, const char *method);
void bh_clear(bh *h, mb_session *s);

/* map/subscribe with the given filter text (may be NULL = no filter) and options text (may be NULL);
 * writes the subscription id into id_out (>= 64 bytes). */
void bh_subscribe(bh *h, mb_session *s, const char *filter, const char *options, char *id_out);
/* Remove every map/event notification from the inbox and return their params, in order. */
json_t *bh_events(bh *h, mb_session *s);
/* Only the Event objects (params.event) of the removed map/event frames whose type matches (NULL = all). */
json_t *bh_event_objs(bh *h, mb_session *s, const char *type);
/* Remove the map/message notifications; return their params.message, in order. */
json_t *bh_messages(bh *h, mb_session *s);

/* The socket closed (mb_session_on_close: detach for resume or destroy). */
void bh_drop(bh *h, mb_session *s);
/* End the session now (mb_session_destroy), then commit. */
void bh_end(bh *h, mb_session *s, const char *reason);

/* Small JSON accessors: dotted path lookup ("error.data.field", "agents.0.id"). Borrowed. */
json_t *bh_get(json_t *j, const char *path);
const char *bh_str(json_t *j, const char *path);
long long bh_int(json_t *j, const char *path);
/* Array of strings at path equals the comma-separated list (order-sensitive unless sorted=1). */
void bh_assert_ids(json_t *arr, const char *csv, int sorted);
/* Collect field `key` of each object in arr into a comma-separated string (static buffer). */
const char *bh_join(json_t *arr, const char *key);

#endif
