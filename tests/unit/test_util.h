/* test_util.h - shared helpers for the protocol unit tests (header-only).
 *
 * Leak check: every test runs between tu_setup/tu_teardown, which count live
 * jansson allocations (json_set_alloc_funcs) and fail the test if any JSON
 * value it created was not released. ASan's LeakSanitizer covers plain malloc.
 */
#ifndef TEST_UTIL_H
#define TEST_UTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "mp_json.h"

static long tu_live, tu_base;

static inline void *tu_malloc(size_t n)
{
    void *p = malloc(n);
    if (p)
        tu_live++;
    return p;
}

static inline void tu_free(void *p)
{
    if (p) {
        tu_live--;
        free(p);
    }
}

/* Call once at the start of main(), before any jansson allocation. */
static inline void tu_init(void)
{
    json_set_alloc_funcs(tu_malloc, tu_free);
}

static inline int tu_setup(void **state)
{
    (void)state;
    tu_base = tu_live;
    return 0;
}

static inline int tu_teardown(void **state)
{
    (void)state;
    assert_int_equal(tu_live, tu_base);
    return 0;
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, tu_setup, tu_teardown)

/* Parse JSON text (any value) or fail the test. New reference. */
static inline json_t *tu_json(const char *text)
{
    json_error_t je;
    json_t *j = json_loads(text, JSON_DECODE_ANY, &je);
    if (!j)
        fail_msg("bad test JSON (%s): %s", je.text, text);
    return j;
}

/* Assert that j serializes (compactly, via mp_dump) to exactly `expect`. */
static inline void tu_assert_dump(const json_t *j, const char *expect)
{
    size_t len = 0;
    char *s = mp_dump(j, 0, &len);
    assert_non_null(s);
    assert_int_equal(len, strlen(s));
    assert_string_equal(s, expect);
    free(s);
}

/* Same, consuming j. */
static inline void tu_assert_dump_new(json_t *j, const char *expect)
{
    assert_non_null(j);
    tu_assert_dump(j, expect);
    json_decref(j);
}

#endif
