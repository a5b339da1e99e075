#include "mp_err.h"

#include <stdio.h>
#include <string.h>

/* Truncation by snprintf may cut a multi-byte UTF-8 sequence; jansson would then
 * refuse the string. Drop an incomplete trailing sequence. */
static void mp__utf8_trim(char *s)
{
    size_t n = strlen(s);
    if (!n)
        return;
    size_t i = n;
    while (i > 0 && ((unsigned char)s[i - 1] & 0xC0) == 0x80)
        i--;
    if (i == 0)
        return;
    unsigned char lead = (unsigned char)s[i - 1];
    size_t need = lead < 0x80 ? 1 : (lead >> 5) == 6 ? 2 : (lead >> 4) == 14 ? 3 : (lead >> 3) == 30 ? 4 : 0;
    if (need == 0 || (n - (i - 1)) < need)
        s[i - 1] = '\0';
}

int mp_err_vset(mp_err *e, int code, const char *field, const char *fmt, va_list ap)
{
    e->code = code;
    e->retryable = (code == MP_DELIVERY_FAILED || code == MP_EXHAUSTED || code == MP_RATE_LIMITED ||
                    code == MP_FED_UNAVAILABLE || code == MP_NOT_RESPONDING || code == MP_TOKEN_EXPIRED);
    e->retry_after_ms = 0;
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    mp__utf8_trim(e->message);
    if (field)
        snprintf(e->field, sizeof e->field, "%s", field);
    else
        e->field[0] = '\0';
    mp__utf8_trim(e->field);
    return code;
}

int mp_err_set(mp_err *e, int code, const char *field, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    mp_err_vset(e, code, field, fmt, ap);
    va_end(ap);
    return code;
}

void mp_err_clear(mp_err *e)
{
    memset(e, 0, sizeof *e);
}

const char *mp_err_category(int code)
{
    if (code >= 1000 && code < 2000) return "auth";
    if (code >= 2000 && code < 3000) return "routing";
    if (code >= 3000 && code < 4000) return "agent";
    if (code >= 4000 && code < 5000) return "resource";
    if (code >= 5000 && code < 6000) return "federation";
    if (code >= 10000 && code < 11000) return "mail";
    if (code == MP_INTERNAL) return "internal";
    return "protocol";
}

json_t *mp_err_json(const mp_err *e)
{
    json_t *data = json_pack("{s:s, s:b}", "category", mp_err_category(e->code), "retryable", e->retryable);
    if (!data)
        return NULL;
    if (e->field[0])
        json_object_set_new(data, "field", json_string(e->field));
    if (e->retry_after_ms > 0)
        json_object_set_new(data, "retryAfterMs", json_integer(e->retry_after_ms));
    json_t *o = json_pack("{s:i, s:s, s:o}", "code", e->code,
                          "message", e->message[0] ? e->message : "error", "data", data);
    return o;
}
