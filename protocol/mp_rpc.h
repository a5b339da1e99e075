/* mp_rpc.h - JSON-RPC 2.0 framing for MAP: one JSON object per WebSocket message.
 *
 * mp_rpc_parse() turns one complete message into an mp_msg. The caller owns
 * msg->root and releases it with mp_msg_free(); id/method/params are borrowed
 * from root. The id keeps its exact JSON type (integer, string, ...), so the
 * response echoes it verbatim.
 */
#ifndef MP_RPC_H
#define MP_RPC_H

#include <jansson.h>
#include <stddef.h>

#include "mp_err.h"

enum mp_kind { MP_KIND_REQUEST = 1, MP_KIND_NOTIFICATION, MP_KIND_RESPONSE };

typedef struct mp_msg {
    enum mp_kind kind;
    json_t *root;       /* owned */
    json_t *id;         /* borrowed; NULL for notifications */
    const char *method; /* borrowed; NULL for responses */
    json_t *params;     /* borrowed; an empty object when absent */
} mp_msg;

typedef struct mp_limits {
    size_t max_message;  /* bytes, checked by the transport before parsing */
    int max_depth;       /* nesting of objects+arrays */
    size_t max_method;   /* length of the method name */
} mp_limits;

#define MP_LIMITS_DEFAULT ((mp_limits){.max_message = 1u << 20, .max_depth = 64, .max_method = 128})

/* Parse one message.
 * Returns 0 and fills *out, or an mp_code with *e filled:
 *   MP_PARSE_ERROR      text is not JSON (or nests deeper than max_depth), *id_out = NULL
 *   MP_INVALID_REQUEST  valid JSON but not a JSON-RPC 2.0 request/notification/response
 *                       (arrays, scalars, wrong "jsonrpc", bad "id"/"method");
 *                       *id_out is the request id when one could be read (new reference) or NULL.
 *   MP_INVALID_PARAMS   "params" present but not an object (or null); *id_out as above.
 * On error nothing else needs freeing except *id_out. */
int mp_rpc_parse(const char *buf, size_t len, const mp_limits *lim, mp_msg *out, json_t **id_out, mp_err *e);
void mp_msg_free(mp_msg *m);

/* Envelope builders. All return a new reference; inputs marked _stolen are consumed
 * even on failure. id may be NULL (encoded as JSON null). */
json_t *mp_rpc_result(json_t *id, json_t *result_stolen);
json_t *mp_rpc_error(json_t *id, const mp_err *e);
json_t *mp_rpc_notification(const char *method, json_t *params_stolen);

#endif
