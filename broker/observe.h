/* observe.h - plain observer streams over WebSocket (/observe) and SSE (observe.c). */
#ifndef MB_OBSERVE_H
#define MB_OBSERVE_H

#include "mb.h"

/* Turn session s into an observer of conversation conv_id (NULL/"" = global
 * feed), resuming after turn seq `after` (string, may be NULL) of store
 * `epoch` (may be NULL). Queues hello, snapshot and the missed turns, or an
 * error message followed by a close. Returns -1 only on OOM. */
int mb_observe_open(mb_broker *b, mb_session *s, const char *conv_id, const char *after, const char *epoch, int sse);
/* Detach (socket gone). Safe to call for any session. */
void mb_observe_close(mb_broker *b, mb_session *s);
/* Called by mb_emit for every mail.* event. */
void mb_observe_on_event(mb_broker *b, const mb_event *ev);
int mb_observe_is_sse(const mb_session *s);
/* Continue a catch-up replay if the session's queue has room (called as it drains). */
void mb_observe_pump(mb_broker *b, mb_session *s);
void mb_observe_free(void);
/* Comment line to idle SSE streams so proxies keep them open (every 15 s). */
void mb_observe_keepalive(mb_broker *b);

#endif
