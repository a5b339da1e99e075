#include "mp_json.h"

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

struct mp__dbuf {
    char *p;
    size_t len, cap;
};

static int mp__dump_cb(const char *chunk, size_t n, void *arg)
{
    struct mp__dbuf *b = arg;
    if (b->len + n + 1 > b->cap) {
        size_t ncap = b->cap * 2;
        while (ncap < b->len + n + 1)
            ncap *= 2;
        char *np = realloc(b->p, ncap);
        if (!np)
            return -1;
        b->p = np;
        b->cap = ncap;
    }
    memcpy(b->p + b->len, chunk, n);
    b->len += n;
    return 0;
}

char *mp_dump(const json_t *j, size_t headroom, size_t *len)
{
    struct mp__dbuf b = {.len = headroom, .cap = headroom + 512};
    b.p = malloc(b.cap);
    if (!b.p)
        return NULL;
    if (json_dump_callback(j, mp__dump_cb, &b, JSON_COMPACT | JSON_ENCODE_ANY) != 0) {
        free(b.p);
        return NULL;
    }
    b.p[b.len] = '\0';
    *len = b.len - headroom;
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
