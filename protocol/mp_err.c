#include "mp_err.h"

#include <stdio.h>
#include <string.h>

/* Length of the valid UTF-8 sequence at s (as strict as jansson: no overlongs,
 * no surrogates, nothing above U+10FFFF), or 0 if the bytes at s are not one. */
static size_t mp__utf8_seq(const unsigned char *s)
{
    unsigned char c = s[0];
    if (c < 0x80)
        return 1;
    size_t n;
    unsigned int cp;
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2;
        cp = c & 0x1Fu;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        cp = c & 0x0Fu;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        cp = c & 0x07u;
    } else {
        return 0; /* stray continuation byte, overlong 2-byte lead, or 0xF5..0xFF */
    }
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80) /* also stops at the NUL terminator */
            return 0;
        cp = (cp << 6) | (s[i] & 0x3Fu);
    }
    if ((n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return n;
}

/* Truncation by snprintf may cut a multi-byte UTF-8 sequence (and a caller's
 * "%.*s" may cut one in the middle); jansson would then refuse the string and the
 * whole error object would be lost. Cut the text at the first invalid sequence. */
static void mp__utf8_trim(char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (p[i]) {
        size_t n = mp__utf8_seq(p + i);
        if (!n) {
            s[i] = '\0';
            return;
        }
        i += n;
    }
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
    if (code >= 13000 && code < 14000) return "trajectory"; /* MAP.md 1.3, 14.8 */
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
