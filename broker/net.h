/* net.h - the libwebsockets glue (net.c): listeners, WebSocket and HTTP callbacks, loop timers. */
#ifndef MB_NET_H
#define MB_NET_H

#include "mb.h"

struct mb_http;

/* Per-connection user data. `s` must stay the first member: session.c re-points
 * it on resume through lws_wsi_user(). */
typedef struct mb_pss {
    mb_session *s;
    struct mb_http *h; /* plain-HTTP request state (http.c), or NULL */
    char ip[64];
    int counted;       /* counted in the per-IP table */
} mb_pss;

/* Create the lws context and listeners. Returns 0 or -1 with errbuf filled. */
int mb_net_start(mb_broker *b, char *errbuf, size_t errlen);
/* Run the loop until b->stopping. */
void mb_net_run(mb_broker *b);
void mb_net_stop(mb_broker *b);
/* Ask for a group commit at the next loop pass (called when a transaction opens). */
void mb_net_commit_soon(mb_broker *b);

/* http.c */
int mb_http_on_request(mb_broker *b, struct lws *wsi, mb_pss *pss, const char *uri);
int mb_http_on_writeable(mb_broker *b, struct lws *wsi, mb_pss *pss);
void mb_http_on_close(mb_broker *b, struct lws *wsi, mb_pss *pss);
int mb_http_on_body(mb_broker *b, struct lws *wsi, mb_pss *pss, const void *in, size_t len);
int mb_http_on_body_done(mb_broker *b, struct lws *wsi, mb_pss *pss);
/* A WebSocket upgrade on a non-MAP path (e.g. /observe): 1 if http.c takes it. */
int mb_http_ws_path(const char *uri);
/* Set up pss->s (already created) as a /observe stream. */
int mb_http_ws_observe(mb_broker *b, struct lws *wsi, mb_pss *pss);

#endif
