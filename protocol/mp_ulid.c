#include "mp_ulid.h"

#include <string.h>
#include <sys/random.h>
#include <time.h>

static const char B32[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

static uint64_t mp__xorshift(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

void mp_ulid_init(mp_ulid_gen *g, uint64_t seed)
{
    memset(g, 0, sizeof *g);
    if (!seed) {
        if (getrandom(&seed, sizeof seed, 0) != (ssize_t)sizeof seed)
            seed = (uint64_t)mp_mono_us() ^ ((uint64_t)mp_now_ms() << 20);
    }
    g->prng = seed ? seed : 0x9E3779B97F4A7C15ull;
    g->last_ms = -1;
}

static void mp__fill_random(mp_ulid_gen *g)
{
    uint64_t a = mp__xorshift(&g->prng), b = mp__xorshift(&g->prng);
    memcpy(g->rnd, &a, 8);
    memcpy(g->rnd + 8, &b, 2);
    g->rnd[0] &= 0x7F; /* leave headroom so increments within one ms never overflow in practice */
}

static void mp__increment(mp_ulid_gen *g)
{
    for (int i = 9; i >= 0; i--)
        if (++g->rnd[i] != 0)
            return;
}

void mp_ulid_next(mp_ulid_gen *g, int64_t now_ms, char out[MP_ULID_LEN + 1])
{
    if (now_ms < 0)
        now_ms = 0; /* the time part is unsigned; a negative clock would encode as ZZZZZZZZZZ */
    if (now_ms > g->last_ms) {
        g->last_ms = now_ms;
        mp__fill_random(g);
    } else {
        mp__increment(g); /* same ms or clock went back: stay monotonic */
    }
    uint64_t t = (uint64_t)g->last_ms;
    for (int i = 9; i >= 0; i--) {
        out[i] = B32[t & 31];
        t >>= 5;
    }
    /* 80 bits -> 16 chars, most significant first */
    const uint8_t *r = g->rnd;
    uint64_t hi = ((uint64_t)r[0] << 32) | ((uint64_t)r[1] << 24) | ((uint64_t)r[2] << 16) |
                  ((uint64_t)r[3] << 8) | r[4];
    uint64_t lo = ((uint64_t)r[5] << 32) | ((uint64_t)r[6] << 24) | ((uint64_t)r[7] << 16) |
                  ((uint64_t)r[8] << 8) | r[9];
    for (int i = 7; i >= 0; i--) {
        out[10 + i] = B32[hi & 31];
        hi >>= 5;
        out[18 + i] = B32[lo & 31];
        lo >>= 5;
    }
    out[MP_ULID_LEN] = '\0';
}

int64_t mp_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t mp_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Strict: exactly 26 characters of the (uppercase) alphabet this generator emits,
 * and a first character <= '7' (the time part is 48 bits, 10 chars hold 50). */
int64_t mp_ulid_time(const char *s)
{
    if (!s || strlen(s) != MP_ULID_LEN || s[0] > '7')
        return -1;
    int64_t t = 0;
    for (int i = 0; i < MP_ULID_LEN; i++) {
        const char *p = strchr(B32, s[i]);
        if (!p)
            return -1;
        if (i < 10)
            t = (t << 5) | (p - B32);
    }
    return t;
}
