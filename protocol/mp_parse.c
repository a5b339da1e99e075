/* mp_parse.c - strict JSON text -> jansson tree, without jansson's lexer.
 *
 * Accepts exactly the texts json_loadb(JSON_REJECT_DUPLICATES |
 * JSON_DECODE_ANY) accepts and builds an equal tree: the same types (integer
 * vs real), the same values, object keys in document order. jansson reads its
 * input through a stream abstraction one byte at a time (with a UTF-8 check
 * per byte) and grows a string buffer per token; on a 256-byte map/send that
 * was 29 % of the broker's time. Here a string without escapes becomes a
 * json_string straight from the input bytes.
 *
 * What is not here: error messages. mp_json_parse says only "no"; a caller
 * that needs jansson's words re-parses the (rare) bad text with json_loadb.
 * The unit test and the fuzz_rpc oracle check the equivalence both ways.
 */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mp_json.h"
#include "mp_scan.h"

/* jansson refuses values nested deeper than 2048 (JSON_PARSER_MAX_DEPTH,
 * counting the scalar inside the innermost container); refusing containers
 * past 2047 means we never accept what it refuses. */
#define MP__JANSSON_MAX_DEPTH 2047

typedef struct {
    const unsigned char *p, *end;
    int depth, max_depth;
    mp_buf sbuf; /* scratch for strings with escapes */
} mp__ps;

static json_t *mp__value(mp__ps *ps);

static inline void mp__ws(mp__ps *ps)
{
    const unsigned char *p = ps->p, *e = ps->end;
    while (p < e && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t'))
        p++;
    ps->p = p;
}

/* One UTF-8 sequence starting at p (first byte >= 0x80), as jansson's
 * utf8_check_first + utf8_check_full judge it: its length, or 0 if invalid. */
static size_t mp__utf8_seq(const unsigned char *p, const unsigned char *e)
{
    unsigned u = p[0];
    size_t n;
    uint32_t v;
    if (u >= 0xC2 && u <= 0xDF)
        n = 2, v = u & 0x1F;
    else if (u >= 0xE0 && u <= 0xEF)
        n = 3, v = u & 0x0F;
    else if (u >= 0xF0 && u <= 0xF4)
        n = 4, v = u & 0x07;
    else
        return 0;
    if ((size_t)(e - p) < n)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if (p[i] < 0x80 || p[i] > 0xBF)
            return 0;
        v = (v << 6) | (p[i] & 0x3F);
    }
    if (v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF) || (n == 3 && v < 0x800) || (n == 4 && v < 0x10000))
        return 0;
    return n;
}

static int mp__hex4(const unsigned char *p, const unsigned char *e, uint32_t *out)
{
    if (e - p < 4)
        return -1;
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= c - '0';
        else if (c >= 'a' && c <= 'f')
            v |= c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            v |= c - 'A' + 10;
        else
            return -1;
    }
    *out = v;
    return 0;
}

/* Append to the scratch string; -1 on OOM. */
static int mp__sput(mp__ps *ps, const void *src, size_t k) { return mp_buf_put(&ps->sbuf, src, k); }

/* A string token (ps->p just past the opening quote). out, len: the decoded
 * bytes, pointing into the input when there were no escapes (scratch 0),
 * else into ps->sbuf.p (scratch 1; valid until the next string). NUL bytes
 * (from \u0000) are refused, as jansson refuses them without JSON_ALLOW_NUL. */
static int mp__string(mp__ps *ps, const char **out, size_t *len, int *scratch)
{
    const unsigned char *p = ps->p, *e = ps->end, *start = p;
    /* fast scan: plain ASCII and valid UTF-8 up to the closing quote or a backslash */
    for (;;) {
        p += mp_scan_plain(p, (size_t)(e - p));
        if (p >= e)
            return -1;
        unsigned c = *p;
        if (c == '"') {
            *out = (const char *)start;
            *len = (size_t)(p - start);
            *scratch = 0;
            ps->p = p + 1;
            return 0;
        }
        if (c == '\\')
            break;
        if (c < 0x20)
            return -1;
        if (c < 0x80) {
            p++;
            continue;
        }
        size_t k = mp__utf8_seq(p, e);
        if (!k)
            return -1;
        p += k;
    }
    /* escapes: decode into the scratch buffer */
    ps->sbuf.len = 0;
    if (mp__sput(ps, start, (size_t)(p - start)))
        return -1;
    for (;;) {
        if (p >= e)
            return -1;
        unsigned c = *p;
        if (c == '"')
            break;
        if (c < 0x20)
            return -1;
        if (c >= 0x80) {
            size_t k = mp__utf8_seq(p, e);
            if (!k || mp__sput(ps, p, k))
                return -1;
            p += k;
            continue;
        }
        if (c != '\\') {
            const unsigned char *q = p + mp_scan_plain(p, (size_t)(e - p));
            if (mp__sput(ps, p, (size_t)(q - p)))
                return -1;
            p = q;
            continue;
        }
        if (e - p < 2)
            return -1;
        char ch;
        switch (p[1]) {
        case '"': ch = '"'; break;
        case '\\': ch = '\\'; break;
        case '/': ch = '/'; break;
        case 'b': ch = '\b'; break;
        case 'f': ch = '\f'; break;
        case 'n': ch = '\n'; break;
        case 'r': ch = '\r'; break;
        case 't': ch = '\t'; break;
        case 'u': {
            uint32_t v, lo;
            if (mp__hex4(p + 2, e, &v))
                return -1;
            p += 6;
            if (v >= 0xD800 && v <= 0xDBFF) {
                if (e - p < 6 || p[0] != '\\' || p[1] != 'u' || mp__hex4(p + 2, e, &lo) || lo < 0xDC00 ||
                    lo > 0xDFFF)
                    return -1;
                p += 6;
                v = ((v - 0xD800) << 10) + (lo - 0xDC00) + 0x10000;
            } else if ((v >= 0xDC00 && v <= 0xDFFF) || v == 0) {
                return -1;
            }
            unsigned char u[4];
            size_t k;
            if (v < 0x80) {
                u[0] = (unsigned char)v, k = 1;
            } else if (v < 0x800) {
                u[0] = (unsigned char)(0xC0 | (v >> 6)), u[1] = (unsigned char)(0x80 | (v & 0x3F)), k = 2;
            } else if (v < 0x10000) {
                u[0] = (unsigned char)(0xE0 | (v >> 12)), u[1] = (unsigned char)(0x80 | ((v >> 6) & 0x3F));
                u[2] = (unsigned char)(0x80 | (v & 0x3F)), k = 3;
            } else {
                u[0] = (unsigned char)(0xF0 | (v >> 18)), u[1] = (unsigned char)(0x80 | ((v >> 12) & 0x3F));
                u[2] = (unsigned char)(0x80 | ((v >> 6) & 0x3F)), u[3] = (unsigned char)(0x80 | (v & 0x3F)), k = 4;
            }
            if (mp__sput(ps, u, k))
                return -1;
            continue;
        }
        default: return -1;
        }
        if (mp__sput(ps, &ch, 1))
            return -1;
        p += 2;
    }
    ps->p = p + 1;
    *out = ps->sbuf.p;
    *len = ps->sbuf.len;
    *scratch = 1;
    return 0;
}

/* A number, by RFC 8259's grammar (as jansson lexes it): an integer without
 * fraction or exponent must fit json_int_t, a real must not overflow. */
static json_t *mp__number(mp__ps *ps)
{
    const unsigned char *p = ps->p, *e = ps->end, *start = p;
    int neg = 0, real = 0;
    if (p < e && *p == '-')
        neg = 1, p++;
    if (p >= e)
        return NULL;
    if (*p == '0') {
        p++;
        if (p < e && *p >= '0' && *p <= '9')
            return NULL;
    } else if (*p >= '1' && *p <= '9') {
        while (p < e && *p >= '0' && *p <= '9')
            p++;
    } else {
        return NULL;
    }
    const unsigned char *int_end = p;
    if (p < e && *p == '.') {
        p++;
        if (p >= e || *p < '0' || *p > '9')
            return NULL;
        while (p < e && *p >= '0' && *p <= '9')
            p++;
        real = 1;
    }
    if (p < e && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < e && (*p == '+' || *p == '-'))
            p++;
        if (p >= e || *p < '0' || *p > '9')
            return NULL;
        while (p < e && *p >= '0' && *p <= '9')
            p++;
        real = 1;
    }
    ps->p = p;
    if (!real) {
        uint64_t v = 0;
        for (const unsigned char *q = start + neg; q < int_end; q++) {
            unsigned d = (unsigned)(*q - '0');
            if (v > (UINT64_MAX - d) / 10)
                return NULL;
            v = v * 10 + d;
        }
        if (neg) {
            if (v > (uint64_t)INT64_MAX + 1)
                return NULL;
            return json_integer(v == (uint64_t)INT64_MAX + 1 ? (json_int_t)INT64_MIN : -(json_int_t)v);
        }
        if (v > (uint64_t)INT64_MAX)
            return NULL;
        return json_integer((json_int_t)v);
    }
    /* strtod needs a terminated copy */
    size_t n = (size_t)(p - start);
    char small[64], *buf = n < sizeof small ? small : malloc(n + 1);
    if (!buf)
        return NULL;
    memcpy(buf, start, n);
    buf[n] = '\0';
    errno = 0;
    char *end;
    double d = strtod(buf, &end);
    int bad = end != buf + n || ((d == HUGE_VAL || d == -HUGE_VAL) && errno == ERANGE);
    if (buf != small)
        free(buf);
    return bad ? NULL : json_real(d);
}

/* After a member or an element: 1 on ',' (another follows), 0 on the closing
 * bracket, -1 on anything else; the separator is consumed. */
static int mp__next(mp__ps *ps, char close)
{
    mp__ws(ps);
    if (ps->p >= ps->end)
        return -1;
    if (*ps->p == ',' || *ps->p == close)
        return *ps->p++ == ',';
    return -1;
}

static json_t *mp__object(mp__ps *ps)
{
    json_t *o = json_object();
    if (!o)
        return NULL;
    mp__ws(ps);
    if (ps->p < ps->end && *ps->p == '}') {
        ps->p++;
        return o;
    }
    for (;;) {
        if (ps->p >= ps->end || *ps->p != '"')
            goto fail;
        ps->p++;
        const char *k;
        size_t kn;
        int scratch;
        if (mp__string(ps, &k, &kn, &scratch))
            goto fail;
        char *kcopy = NULL;
        if (scratch) { /* the value's strings reuse the scratch buffer */
            kcopy = malloc(kn ? kn : 1);
            if (!kcopy)
                goto fail;
            memcpy(kcopy, k, kn);
            k = kcopy;
        }
        if (json_object_getn(o, k, kn)) {
            free(kcopy);
            goto fail;
        }
        mp__ws(ps);
        if (ps->p >= ps->end || *ps->p != ':') {
            free(kcopy);
            goto fail;
        }
        ps->p++;
        json_t *v = mp__value(ps);
        if (!v || json_object_setn_new_nocheck(o, k, kn, v)) {
            free(kcopy);
            goto fail;
        }
        free(kcopy);
        int more = mp__next(ps, '}');
        if (more < 0)
            goto fail;
        if (!more)
            return o;
        mp__ws(ps);
    }
fail:
    json_decref(o);
    return NULL;
}

static json_t *mp__array(mp__ps *ps)
{
    json_t *a = json_array();
    if (!a)
        return NULL;
    mp__ws(ps);
    if (ps->p < ps->end && *ps->p == ']') {
        ps->p++;
        return a;
    }
    for (;;) {
        json_t *v = mp__value(ps);
        if (!v || json_array_append_new(a, v))
            goto fail;
        int more = mp__next(ps, ']');
        if (more < 0)
            goto fail;
        if (!more)
            return a;
    }
fail:
    json_decref(a);
    return NULL;
}

static int mp__lit(mp__ps *ps, const char *w, size_t n)
{
    if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, w, n))
        return -1;
    ps->p += n;
    return 0;
}

static json_t *mp__value(mp__ps *ps)
{
    mp__ws(ps);
    if (ps->p >= ps->end)
        return NULL;
    switch (*ps->p) {
    case '{':
    case '[': {
        if (++ps->depth > ps->max_depth)
            return NULL;
        int obj = *ps->p == '{';
        ps->p++;
        json_t *v = obj ? mp__object(ps) : mp__array(ps);
        ps->depth--;
        return v;
    }
    case '"': {
        ps->p++;
        const char *s;
        size_t n;
        int scratch;
        if (mp__string(ps, &s, &n, &scratch))
            return NULL;
        return json_stringn_nocheck(s, n);
    }
    case 't': return mp__lit(ps, "true", 4) ? NULL : json_true();
    case 'f': return mp__lit(ps, "false", 5) ? NULL : json_false();
    case 'n': return mp__lit(ps, "null", 4) ? NULL : json_null();
    default: return mp__number(ps);
    }
}

json_t *mp_json_parse(const char *buf, size_t len, int max_depth)
{
    mp__ps ps = {.p = (const unsigned char *)buf, .end = (const unsigned char *)buf + len};
    ps.max_depth = max_depth < MP__JANSSON_MAX_DEPTH ? max_depth : MP__JANSSON_MAX_DEPTH;
    json_t *v = mp__value(&ps);
    if (v) {
        mp__ws(&ps);
        if (ps.p != ps.end) {
            json_decref(v);
            v = NULL;
        }
    }
    free(ps.sbuf.p);
    return v;
}
