/* mp_err.h - MAP / JSON-RPC error codes and the error value every layer returns.
 *
 * An mp_err is a small value type (no heap) filled by whoever detects a
 * problem and turned into a JSON-RPC error object at the edge. `field`
 * names the offending parameter (dot path, e.g. "params.to.agent"); it goes
 * into error.data.field so a client knows what to fix.
 */
#ifndef MP_ERR_H
#define MP_ERR_H

#include <jansson.h>
#include <stdarg.h>

enum mp_code {
    MP_OK = 0,
    /* JSON-RPC */
    MP_PARSE_ERROR = -32700,
    MP_INVALID_REQUEST = -32600,
    MP_METHOD_NOT_FOUND = -32601,
    MP_INVALID_PARAMS = -32602,
    MP_INTERNAL = -32603,
    /* auth 1000-1999 */
    MP_AUTH_REQUIRED = 1000,
    MP_AUTH_FAILED = 1001,
    MP_TOKEN_EXPIRED = 1002,
    MP_PERMISSION_DENIED = 1003,
    MP_INSUFFICIENT_SCOPE = 1004,
    MP_AUTH_METHOD_NOT_SUPPORTED = 1005,
    MP_INVALID_CREDENTIALS = 1006,
    /* routing 2000-2999 */
    MP_ADDRESS_NOT_FOUND = 2000,
    MP_AGENT_NOT_FOUND = 2001,
    MP_SCOPE_NOT_FOUND = 2002,
    MP_DELIVERY_FAILED = 2003,
    MP_ADDRESS_AMBIGUOUS = 2004,
    /* agent 3000-3999 */
    MP_AGENT_EXISTS = 3000,
    MP_STATE_INVALID = 3001,
    MP_NOT_RESPONDING = 3002,
    MP_TERMINATED = 3003,
    MP_SPAWN_FAILED = 3004,
    /* resource 4000-4999 */
    MP_EXHAUSTED = 4000,
    MP_RATE_LIMITED = 4001,
    MP_QUOTA_EXCEEDED = 4002,
    /* federation 5000-5999 */
    MP_FED_UNAVAILABLE = 5000,
    MP_FED_SYSTEM_NOT_FOUND = 5001,
    MP_FED_AUTH_FAILED = 5002,
    MP_FED_ROUTE_REJECTED = 5003,
    MP_FED_LOOP = 5010,
    MP_FED_MAX_HOPS = 5011,
    /* mail 10000-10999 (SDK numbering, MAP.md 14.7) */
    MP_MAIL_CONV_NOT_FOUND = 10000,
    MP_MAIL_CONV_CLOSED = 10001,
    MP_MAIL_NOT_PARTICIPANT = 10002,
    MP_MAIL_PERMISSION = 10003,
    MP_MAIL_TURN_NOT_FOUND = 10004,
    MP_MAIL_THREAD_NOT_FOUND = 10005,
    MP_MAIL_BAD_CONTENT = 10006,
    MP_MAIL_ALREADY_JOINED = 10007,
    MP_MAIL_INVITATION_REQUIRED = 10008,
    MP_MAIL_HISTORY_DENIED = 10009,   /* also used for NESTING_LIMIT, see mail.c */
    MP_MAIL_PARENT_NOT_FOUND = 10010,
};

#define MP_ERR_MSG_MAX 256
#define MP_ERR_FIELD_MAX 96

typedef struct mp_err {
    int code;                        /* enum mp_code; 0 = no error */
    int retryable;                   /* -> data.retryable */
    long long retry_after_ms;        /* -> data.retryAfterMs when > 0 */
    char message[MP_ERR_MSG_MAX];
    char field[MP_ERR_FIELD_MAX];    /* "" when no single field is at fault */
} mp_err;

/* Fill *e (never NULL) and return code, so handlers can `return mp_err_set(...)`.
 * field may be NULL. */
int mp_err_set(mp_err *e, int code, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
int mp_err_vset(mp_err *e, int code, const char *field, const char *fmt, va_list ap)
    __attribute__((format(printf, 4, 0)));
void mp_err_clear(mp_err *e);

/* "protocol", "auth", "routing", "agent", "resource", "federation", "mail", "trajectory", "internal". */
const char *mp_err_category(int code);

/* Build the JSON-RPC error object {code, message, data:{category, field?, retryable?}}.
 * Returns a new reference (NULL only on OOM). */
json_t *mp_err_json(const mp_err *e);

#endif
