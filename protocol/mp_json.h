/* mp_json.h - parameter access with precise errors, id checks, compact encoding.
 *
 * Every getter treats an absent key and JSON null alike ("absent"). On a type
 * mismatch or a missing required key it fills *e with -32602 (INVALID_PARAMS)
 * and names the field (`path` if given, else `key`). Returned pointers are
 * borrowed from `obj` and live as long as it does.
 */
#ifndef MP_JSON_H
#define MP_JSON_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "mp_err.h"

#define MP_REQUIRED 1
#define MP_OPTIONAL 0

/* Max length of any client-chosen id (agentId, scopeId, ...). */
#define MP_ID_MAX 256

int mp_get_str(json_t *obj, const char *key, int required, const char **out, mp_err *e);
/* Like mp_get_str but also checks the id charset (mp_id_valid). */
int mp_get_id(json_t *obj, const char *key, int required, const char **out, mp_err *e);
int mp_get_int(json_t *obj, const char *key, int required, long long *out, mp_err *e);
/* Bounded integer: out of [min,max] is an error naming the field. *out keeps its value when absent. */
int mp_get_int_range(json_t *obj, const char *key, long long min, long long max, long long *out, mp_err *e);
int mp_get_bool(json_t *obj, const char *key, int *out, mp_err *e); /* *out unchanged if absent */
int mp_get_obj(json_t *obj, const char *key, int required, json_t **out, mp_err *e);
int mp_get_arr(json_t *obj, const char *key, int required, json_t **out, mp_err *e);
/* An optional array whose elements must all be strings. */
int mp_get_str_arr(json_t *obj, const char *key, int required, json_t **out, mp_err *e);

/* Same getters with an explicit field path for nested objects ("filter.states"). */
int mp_get_str_p(json_t *obj, const char *key, const char *path, int required, const char **out, mp_err *e);
int mp_get_str_arr_p(json_t *obj, const char *key, const char *path, json_t **out, mp_err *e);

/* Ids: 1..MP_ID_MAX bytes of [A-Za-z0-9._:@~+=-] or UTF-8 non-ASCII; no controls,
 * spaces, '/', '#', '*', '%', '?', quotes or backslashes. Returns 1 if valid. */
int mp_id_valid(const char *s);

/* Nesting depth of the JSON text (objects + arrays), scanning past strings.
 * Returns the depth, or stops early and returns max+1 once max is exceeded. */
int mp_json_depth(const char *buf, size_t len, int max);

/* Parse JSON text into a jansson tree: accepts exactly what
 * json_loadb(buf, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY) accepts and
 * builds an equal tree (types, values, key order), several times faster.
 * Nesting deeper than max_depth (or jansson's 2048) is refused. NULL on any
 * refusal or OOM, without a reason: re-parse with json_loadb for its message.
 * One known difference: jansson's lexer drops a NUL byte that directly follows
 * a number or literal ("[1\0]" loads as [1]); this parser refuses it, and a
 * caller that falls back to json_loadb keeps jansson's verdict.
 * (protocol/mp_parse.c) */
json_t *mp_json_parse(const char *buf, size_t len, int max_depth);

/* A growable text buffer. Start from {0}; p is malloc'd (free it), always
 * NUL-terminated past len once anything was put. On OOM, or on a value that
 * cannot be encoded, `failed` is set and sticks: later puts do nothing, so a
 * builder can check once at the end. The appenders return 0 or -1 (failed). */
typedef struct mp_buf {
    char *p;
    size_t len, cap;
    int failed;
} mp_buf;

int mp_buf_put(mp_buf *b, const void *s, size_t n);
static inline int mp_buf_lit(mp_buf *b, const char *s) { return mp_buf_put(b, s, strlen(s)); }
/* j compactly, the bytes mp_dump writes. */
int mp_buf_json(mp_buf *b, const json_t *j);
/* s (n bytes of UTF-8) as a JSON string literal, the bytes mp_quote writes. */
int mp_buf_quote(mp_buf *b, const char *s, size_t n);
/* v in decimal, the bytes mp_dump writes for an integer. */
int mp_buf_int(mp_buf *b, int64_t v);

/* Serialize compactly into a fresh malloc block with `headroom` spare bytes in
 * front (for LWS_PRE). Text starts at block + headroom, *len excludes headroom,
 * and a NUL follows the text. Returns NULL on OOM or unencodable input. */
char *mp_dump(const json_t *j, size_t headroom, size_t *len);

/* s (n bytes of UTF-8) as a JSON string literal, quotes included, escaped as
 * mp_dump escapes; a fresh malloc block, NUL-terminated, *len = its length.
 * NULL on OOM or invalid UTF-8. */
char *mp_quote(const char *s, size_t n, size_t *len);

/* 1 if s equals an entry of `list` (an array of strings), where an entry ending in
 * '*' matches by prefix ("worker-*"). Non-string entries never match; s NULL -> 0. */
int mp_glob_list_match(const json_t *list, const char *s);

/* json_object_set_new that ignores NULL values (convenient for optional fields). */
void mp_set_opt(json_t *obj, const char *key, json_t *val_stolen);
/* Copy obj[key] from src to dst if present and not null. */
void mp_copy_key(json_t *dst, const json_t *src, const char *key);

#endif
