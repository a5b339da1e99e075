#include "mp_json.h"
#include "mp_scan.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const char *mp__name(const char *key, const char *path)
{
    return path ? path : key;
}

static json_t *mp__lookup(json_t *obj, const char *key)
{
    if (!obj || !json_is_object(obj))
        return NULL;
    json_t *v = json_object_get(obj, key);
    return json_is_null(v) ? NULL : v;
}

int mp_get_str_p(json_t *obj, const char *key, const char *path, int required, const char **out, mp_err *e)
{
    json_t *v = mp__lookup(obj, key);
    *out = NULL;
    if (!v) {
        if (required)
            return mp_err_set(e, MP_INVALID_PARAMS, mp__name(key, path), "Missing required parameter: %s",
                              mp__name(key, path));
        return 0;
    }
    if (!json_is_string(v))
        return mp_err_set(e, MP_INVALID_PARAMS, mp__name(key, path), "Parameter %s must be a string",
                          mp__name(key, path));
    *out = json_string_value(v);
    return 0;
}

int mp_get_str(json_t *obj, const char *key, int required, const char **out, mp_err *e)
{
    return mp_get_str_p(obj, key, NULL, required, out, e);
}

int mp_get_id(json_t *obj, const char *key, int required, const char **out, mp_err *e)
{
    int rc = mp_get_str(obj, key, required, out, e);
    if (rc || !*out)
        return rc;
    if (json_string_length(json_object_get(obj, key)) != strlen(*out) || !mp_id_valid(*out)) {
        *out = NULL;
        return mp_err_set(e, MP_INVALID_PARAMS, key,
                          "Parameter %s is not a valid id (1-%d characters of A-Z a-z 0-9 . _ : @ ~ + = -)", key,
                          MP_ID_MAX);
    }
    return 0;
}

int mp_get_int(json_t *obj, const char *key, int required, long long *out, mp_err *e)
{
    json_t *v = mp__lookup(obj, key);
    if (!v) {
        if (required)
            return mp_err_set(e, MP_INVALID_PARAMS, key, "Missing required parameter: %s", key);
        return 0;
    }
    if (json_is_real(v)) {
        /* Accept integral reals ("5.0"). Range-check before the cast: converting an
         * out-of-range double to long long is undefined behaviour. */
        double d = json_real_value(v);
        if (d > -9.2e18 && d < 9.2e18 && d == (double)(long long)d) {
            *out = (long long)d;
            return 0;
        }
    }
    if (!json_is_integer(v))
        return mp_err_set(e, MP_INVALID_PARAMS, key, "Parameter %s must be an integer", key);
    *out = json_integer_value(v);
    return 0;
}

int mp_get_int_range(json_t *obj, const char *key, long long min, long long max, long long *out, mp_err *e)
{
    long long v = *out;
    if (!mp__lookup(obj, key))
        return 0; /* absent: keep the caller's default, even one outside [min,max] */
    int rc = mp_get_int(obj, key, MP_OPTIONAL, &v, e);
    if (rc)
        return rc;
    if (v < min || v > max)
        return mp_err_set(e, MP_INVALID_PARAMS, key, "Parameter %s must be between %lld and %lld", key, min, max);
    *out = v;
    return 0;
}

int mp_get_bool(json_t *obj, const char *key, int *out, mp_err *e)
{
    json_t *v = mp__lookup(obj, key);
    if (!v)
        return 0;
    if (!json_is_boolean(v))
        return mp_err_set(e, MP_INVALID_PARAMS, key, "Parameter %s must be a boolean", key);
    *out = json_is_true(v);
    return 0;
}

int mp_get_obj(json_t *obj, const char *key, int required, json_t **out, mp_err *e)
{
    json_t *v = mp__lookup(obj, key);
    *out = NULL;
    if (!v) {
        if (required)
            return mp_err_set(e, MP_INVALID_PARAMS, key, "Missing required parameter: %s", key);
        return 0;
    }
    if (!json_is_object(v))
        return mp_err_set(e, MP_INVALID_PARAMS, key, "Parameter %s must be an object", key);
    *out = v;
    return 0;
}

int mp_get_arr(json_t *obj, const char *key, int required, json_t **out, mp_err *e)
{
    json_t *v = mp__lookup(obj, key);
    *out = NULL;
    if (!v) {
        if (required)
            return mp_err_set(e, MP_INVALID_PARAMS, key, "Missing required parameter: %s", key);
        return 0;
    }
    if (!json_is_array(v))
        return mp_err_set(e, MP_INVALID_PARAMS, key, "Parameter %s must be an array", key);
    *out = v;
    return 0;
}

int mp_get_str_arr_p(json_t *obj, const char *key, const char *path, json_t **out, mp_err *e)
{
    json_t *v = mp__lookup(obj, key);
    *out = NULL;
    if (!v)
        return 0;
    if (!json_is_array(v))
        return mp_err_set(e, MP_INVALID_PARAMS, mp__name(key, path), "Parameter %s must be an array of strings",
                          mp__name(key, path));
    size_t i;
    json_t *x;
    json_array_foreach(v, i, x) if (!json_is_string(x)) return mp_err_set(
        e, MP_INVALID_PARAMS, mp__name(key, path), "Parameter %s must be an array of strings", mp__name(key, path));
    *out = v;
    return 0;
}

int mp_get_str_arr(json_t *obj, const char *key, int required, json_t **out, mp_err *e)
{
    int rc = mp_get_str_arr_p(obj, key, NULL, out, e);
    if (!rc && !*out && required)
        return mp_err_set(e, MP_INVALID_PARAMS, key, "Missing required parameter: %s", key);
    return rc;
}

int mp_id_valid(const char *s)
{
    size_t n = 0;
    if (!s || !*s)
        return 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++, n++) {
        unsigned char c = *p;
        if (n >= MP_ID_MAX)
            return 0;
        if (c >= 0x80)
            continue; /* UTF-8 validated by the JSON parser */
        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))
            continue;
        if (strchr("._:@~+=-", c))
            continue;
        return 0;
    }
    return 1;
}

int mp_json_depth(const char *buf, size_t len, int max)
{
    int depth = 0, maxseen = 0, in_str = 0;
    for (size_t i = 0; i < len; i++) {
        char c = buf[i];
        if (in_str) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_str = 0;
            continue;
        }
        switch (c) {
        case '"': in_str = 1; break;
        case '{':
        case '[':
            if (++depth > maxseen) {
                maxseen = depth;
                if (maxseen > max)
                    return max + 1;
            }
            break;
        case '}':
        case ']':
            if (depth > 0)
                depth--;
            break;
        default: break;
        }
    }
    return maxseen;
}

/* ---- serializer ----
 *
 * Byte-for-byte the output of json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY)
 * (jansson 2.14: insertion-ordered keys, "\uXXXX" upper-case for control
 * characters, '/' and non-ASCII bytes written as they are, NULL for invalid
 * UTF-8), without jansson's per-container loop check (an snprintf("%p") and a
 * hashtable insert for every object and array, most of the cost of a dump on
 * the broker's hot paths). A nesting limit stands in for the loop check. */

#define MP__DUMP_MAX_DEPTH 4096

static int mp__grow(mp_buf *b, size_t need)
{
    if (b->failed)
        return -1;
    size_t ncap = b->cap ? b->cap : 256;
    while (ncap < b->len + need + 1) {
        if (ncap > ((size_t)-1) / 2) {
            b->failed = 1;
            return -1;
        }
        ncap *= 2;
    }
    char *np = realloc(b->p, ncap);
    if (!np) {
        b->failed = 1;
        return -1;
    }
    b->p = np;
    b->cap = ncap;
    return 0;
}

static inline int mp__put(mp_buf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap && mp__grow(b, n))
        return -1;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    return 0;
}

static inline int mp__putc(mp_buf *b, char c)
{
    if (b->len + 2 > b->cap && mp__grow(b, 1))
        return -1;
    b->p[b->len++] = c;
    return 0;
}

int mp_buf_put(mp_buf *b, const void *s, size_t n)
{
    if (b->failed || (b->len + n + 1 > b->cap && mp__grow(b, n)))
        return -1;
    if (n)
        memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

/* Length of the valid UTF-8 sequence at s (first byte >= 0x80), 0 if invalid
 * (same acceptance as jansson's utf8_check_full: no overlongs, surrogates or
 * code points above U+10FFFF). */
static size_t mp__utf8_len(const unsigned char *s, const unsigned char *end)
{
    unsigned c = s[0];
    size_t n;
    uint32_t cp;
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2;
        cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if ((size_t)(end - s) < n)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if ((n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return n;
}

/* bytes that end a run of plain ASCII: '"', '\\', controls, non-ASCII */

/* v in decimal, hand-rolled: snprintf is a visible share of a dump */
static int mp__int(mp_buf *b, int64_t v)
{
    char num[24];
    uint64_t u = v < 0 ? 0ULL - (uint64_t)v : (uint64_t)v;
    char *e = num + sizeof num, *q = e;
    do {
        *--q = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0)
        *--q = '-';
    return mp__put(b, q, (size_t)(e - q));
}

static int mp__dump_str(mp_buf *b, const char *str, size_t len)
{
    static const char hex[] = "0123456789ABCDEF";
    const unsigned char *p = (const unsigned char *)str, *end = p + len;
    /* worst case every byte becomes \u00XX */
    if (b->len + len * 6 + 3 > b->cap && mp__grow(b, len * 6 + 2))
        return -1;
    char *o = b->p + b->len;
    *o++ = '"';
    while (p < end) {
        const unsigned char *run = p;
        p += mp_scan_plain(p, (size_t)(end - p));
        memcpy(o, run, (size_t)(p - run));
        o += p - run;
        if (p == end)
            break;
        unsigned c = *p;
        if (c >= 0x80) {
            size_t n = mp__utf8_len(p, end);
            if (!n)
                return -1;
            memcpy(o, p, n);
            o += n;
            p += n;
            continue;
        }
        *o++ = '\\';
        switch (c) {
        case '"': *o++ = '"'; break;
        case '\\': *o++ = '\\'; break;
        case '\b': *o++ = 'b'; break;
        case '\f': *o++ = 'f'; break;
        case '\n': *o++ = 'n'; break;
        case '\r': *o++ = 'r'; break;
        case '\t': *o++ = 't'; break;
        default:
            *o++ = 'u';
            *o++ = '0';
            *o++ = '0';
            *o++ = hex[c >> 4];
            *o++ = hex[c & 15];
        }
        p++;
    }
    *o++ = '"';
    b->len = (size_t)(o - b->p);
    return 0;
}

static int mp__dump_val(mp_buf *b, const json_t *j, int depth)
{
    char num[64];
    switch (json_typeof(j)) {
    case JSON_OBJECT: {
        if (depth >= MP__DUMP_MAX_DEPTH || mp__putc(b, '{'))
            return -1;
        int first = 1;
        for (void *it = json_object_iter((json_t *)j); it; it = json_object_iter_next((json_t *)j, it)) {
            if (!first && mp__putc(b, ','))
                return -1;
            first = 0;
            if (mp__dump_str(b, json_object_iter_key(it), json_object_iter_key_len(it)) || mp__putc(b, ':') ||
                mp__dump_val(b, json_object_iter_value(it), depth + 1))
                return -1;
        }
        return mp__putc(b, '}');
    }
    case JSON_ARRAY: {
        if (depth >= MP__DUMP_MAX_DEPTH || mp__putc(b, '['))
            return -1;
        size_t n = json_array_size(j);
        for (size_t i = 0; i < n; i++)
            if ((i && mp__putc(b, ',')) || mp__dump_val(b, json_array_get(j, i), depth + 1))
                return -1;
        return mp__putc(b, ']');
    }
    case JSON_STRING: return mp__dump_str(b, json_string_value(j), json_string_length(j));
    case JSON_INTEGER: return mp__int(b, json_integer_value(j));
    case JSON_REAL: {
        /* rare on these paths: let jansson format it exactly as it would */
        size_t n = json_dumpb(j, num, sizeof num, JSON_COMPACT | JSON_ENCODE_ANY);
        if (n == 0 || n > sizeof num)
            return -1;
        return mp__put(b, num, n);
    }
    case JSON_TRUE: return mp__put(b, "true", 4);
    case JSON_FALSE: return mp__put(b, "false", 5);
    case JSON_NULL: return mp__put(b, "null", 4);
    }
    return -1;
}

int mp_buf_json(mp_buf *b, const json_t *j)
{
    if (b->failed || !j || mp__dump_val(b, j, 0)) {
        b->failed = 1;
        return -1;
    }
    b->p[b->len] = '\0'; /* dump_val leaves room for it */
    return 0;
}

int mp_buf_int(mp_buf *b, int64_t v)
{
    if (b->failed || mp__int(b, v)) {
        b->failed = 1;
        return -1;
    }
    b->p[b->len] = '\0';
    return 0;
}

int mp_buf_quote(mp_buf *b, const char *s, size_t n)
{
    if (b->failed || mp__dump_str(b, s, n)) {
        b->failed = 1;
        return -1;
    }
    b->p[b->len] = '\0';
    return 0;
}

char *mp_dump(const json_t *j, size_t headroom, size_t *len)
{
    mp_buf b = {.len = headroom, .cap = headroom + 512};
    if (!j || !(b.p = malloc(b.cap)))
        return NULL;
    if (mp_buf_json(&b, j)) {
        free(b.p);
        return NULL;
    }
    *len = b.len - headroom;
    return b.p;
}

char *mp_quote(const char *s, size_t n, size_t *len)
{
    mp_buf b = {.cap = n + 16};
    if (!(b.p = malloc(b.cap)))
        return NULL;
    if (mp_buf_quote(&b, s, n)) {
        free(b.p);
        return NULL;
    }
    *len = b.len;
    return b.p;
}

int mp_glob_list_match(const json_t *list, const char *s)
{
    if (!s)
        return 0;
    size_t i;
    json_t *x;
    json_array_foreach(list, i, x)
    {
        const char *p = json_string_value(x);
        size_t n = json_string_length(x);
        if (!p)
            continue;
        if (n && p[n - 1] == '*' ? !strncmp(p, s, n - 1) : !strcmp(p, s))
            return 1;
    }
    return 0;
}

void mp_set_opt(json_t *obj, const char *key, json_t *val)
{
    if (val)
        json_object_set_new(obj, key, val);
}

void mp_copy_key(json_t *dst, const json_t *src, const char *key)
{
    json_t *v = json_object_get(src, key);
    if (v && !json_is_null(v))
        json_object_set(dst, key, v);
}
