/* test_mp_ulid.c - monotonic ULIDs (MAP.md 2, 16.5). */
#include "test_util.h"

#include <stdio.h>

#include "mp_ulid.h"

static const char B32[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

static void assert_ulid_shape(const char *id)
{
    assert_int_equal(strlen(id), MP_ULID_LEN);
    for (int i = 0; i < MP_ULID_LEN; i++)
        if (!strchr(B32, id[i]) || id[i] == '\0')
            fail_msg("char %d of %s is not Crockford base32", i, id);
    assert_true(id[0] <= '7');
}

/* The 80-bit random part as two 40-bit halves. */
static void random_part(const char *id, uint64_t *hi, uint64_t *lo)
{
    *hi = *lo = 0;
    for (int i = 0; i < 8; i++) {
        *hi = (*hi << 5) | (uint64_t)(strchr(B32, id[10 + i]) - B32);
        *lo = (*lo << 5) | (uint64_t)(strchr(B32, id[18 + i]) - B32);
    }
}

static void shape_and_time(void **state)
{
    (void)state;
    mp_ulid_gen g;
    mp_ulid_init(&g, 42);
    char id[MP_ULID_LEN + 1];
    const int64_t t = 1795276113889LL; /* a capture timestamp */
    mp_ulid_next(&g, t, id);
    assert_ulid_shape(id);
    assert_true(mp_ulid_time(id) == t);
    /* the first random char carries the cleared top bit: 0..F */
    assert_non_null(strchr("0123456789ABCDEF", id[10]));

    mp_ulid_next(&g, 0, id); /* clock far in the past: time part stays at t */
    assert_true(mp_ulid_time(id) == t);

    mp_ulid_gen g2;
    mp_ulid_init(&g2, 7);
    mp_ulid_next(&g2, 0, id);
    assert_memory_equal(id, "0000000000", 10);
    mp_ulid_next(&g2, 1, id);
    assert_memory_equal(id, "0000000001", 10);
    mp_ulid_next(&g2, 32, id);
    assert_memory_equal(id, "0000000010", 10);
    mp_ulid_next(&g2, (1LL << 48) - 1, id);
    assert_memory_equal(id, "7ZZZZZZZZZ", 10);
    assert_true(mp_ulid_time(id) == (1LL << 48) - 1);

    mp_ulid_gen g3;
    mp_ulid_init(&g3, 7);
    mp_ulid_next(&g3, -5, id); /* negative clock clamps to 0 instead of encoding garbage */
    assert_memory_equal(id, "0000000000", 10);
    assert_ulid_shape(id);
}

static void reproducible_with_seed(void **state)
{
    (void)state;
    mp_ulid_gen a, b, c;
    mp_ulid_init(&a, 123);
    mp_ulid_init(&b, 123);
    mp_ulid_init(&c, 124);
    char x[MP_ULID_LEN + 1], y[MP_ULID_LEN + 1], z[MP_ULID_LEN + 1];
    for (int i = 0; i < 10; i++) {
        mp_ulid_next(&a, 1000 + i, x);
        mp_ulid_next(&b, 1000 + i, y);
        mp_ulid_next(&c, 1000 + i, z);
        assert_string_equal(x, y);
        assert_string_not_equal(x, z);
    }
}

static void same_ms_increments_by_one(void **state)
{
    (void)state;
    mp_ulid_gen g;
    mp_ulid_init(&g, 99);
    char prev[MP_ULID_LEN + 1], cur[MP_ULID_LEN + 1];
    mp_ulid_next(&g, 5000, prev);
    for (int i = 0; i < 1000; i++) {
        mp_ulid_next(&g, 5000, cur);
        assert_memory_equal(cur, prev, 10);
        uint64_t ph, pl, ch, cl;
        random_part(prev, &ph, &pl);
        random_part(cur, &ch, &cl);
        uint64_t mask = (1ULL << 40) - 1;
        assert_true(cl == ((pl + 1) & mask));
        assert_true(ch == ph + (cl == 0 ? 1 : 0));
        memcpy(prev, cur, sizeof cur);
    }
}

static void strictly_increasing_100k(void **state)
{
    (void)state;
    mp_ulid_gen g;
    mp_ulid_init(&g, 2024);
    char prev[MP_ULID_LEN + 1], cur[MP_ULID_LEN + 1];
    int64_t clock = 1700000000000LL, max_ms = clock;
    uint64_t x = 88172645463325252ULL;
    mp_ulid_next(&g, clock, prev);
    for (int i = 0; i < 100000; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        switch (x % 8) {
        case 0: case 1: case 2: break;       /* same millisecond */
        case 3: case 4: case 5: clock += 1; break;
        case 6: clock += (int64_t)(x >> 40) % 5000; break;
        case 7: clock -= (int64_t)(x >> 40) % 3000; break; /* clock steps back */
        }
        mp_ulid_next(&g, clock, cur);
        if (strcmp(prev, cur) >= 0)
            fail_msg("id %d not increasing: %s then %s (clock %lld)", i, prev, cur, (long long)clock);
        if (clock > max_ms)
            max_ms = clock;
        assert_true(mp_ulid_time(cur) == max_ms);
        memcpy(prev, cur, sizeof cur);
    }
}

static void time_round_trip_and_rejects(void **state)
{
    (void)state;
    char id[MP_ULID_LEN + 1];
    int64_t samples[] = {0, 1, 31, 32, 1000, 1795276113889LL, (1LL << 40) + 12345, (1LL << 48) - 1};
    for (size_t i = 0; i < sizeof samples / sizeof samples[0]; i++) {
        mp_ulid_gen h;
        mp_ulid_init(&h, 5);
        mp_ulid_next(&h, samples[i], id);
        assert_true(mp_ulid_time(id) == samples[i]);
    }
    assert_true(mp_ulid_time("01M7ZCQXJA7J291RG2K8E4WFPP") > 0); /* MAP.md example id */
    assert_true(mp_ulid_time("0000000000ZZZZZZZZZZZZZZZZ") == 0);
    assert_true(mp_ulid_time("0000000001ZZZZZZZZZZZZZZZZ") == 1);
    assert_true(mp_ulid_time(NULL) == -1);
    assert_true(mp_ulid_time("") == -1);
    assert_true(mp_ulid_time("01M7ZCQXJA7J291RG2K8E4WFP") == -1);   /* 25 */
    assert_true(mp_ulid_time("01M7ZCQXJA7J291RG2K8E4WFPPX") == -1); /* 27 */
    assert_true(mp_ulid_time("01m7zcqxja7j291rg2k8e4wfpp") == -1);  /* lowercase is not what we emit */
    assert_true(mp_ulid_time("01M7ZCQXJI7J291RG2K8E4WFPP") == -1);  /* I in the time part */
    assert_true(mp_ulid_time("01M7ZCQXJA7J291RG2K8E4WFPU") == -1);  /* U in the random part */
    assert_true(mp_ulid_time("01M7ZCQXJA7J291RG2K8E4-FPP") == -1);
    assert_true(mp_ulid_time("81M7ZCQXJA7J291RG2K8E4WFPP") == -1);  /* > 48 bits */
    assert_true(mp_ulid_time("conv-01M7ZCQXJA7J291RG2K8") == -1);
}

static void os_seed_and_clocks(void **state)
{
    (void)state;
    mp_ulid_gen a, b;
    mp_ulid_init(&a, 0);
    mp_ulid_init(&b, 0);
    char x[MP_ULID_LEN + 1], y[MP_ULID_LEN + 1];
    int64_t now = mp_now_ms();
    assert_true(now > 1600000000000LL); /* after 2020: milliseconds, not seconds */
    mp_ulid_next(&a, now, x);
    mp_ulid_next(&b, now, y);
    assert_ulid_shape(x);
    assert_true(mp_ulid_time(x) == now);
    assert_string_not_equal(x + 10, y + 10); /* 79 random bits from the OS: equal only by accident */
    int64_t m1 = mp_mono_us(), m2 = mp_mono_us();
    assert_true(m2 >= m1);
}

int main(void)
{
    tu_init();
    const struct CMUnitTest tests[] = {
        T(shape_and_time),
        T(reproducible_with_seed),
        T(same_ms_increments_by_one),
        T(strictly_increasing_100k),
        T(time_round_trip_and_rejects),
        T(os_seed_and_clocks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
