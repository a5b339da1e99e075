/* mp_ulid.h - monotonic ULIDs and millisecond clock.
 *
 * A ULID is 48 bits of Unix milliseconds + 80 random bits, Crockford base32,
 * 26 characters. The generator is monotonic: ids made in the same (or an
 * earlier, if the clock steps back) millisecond increment the random part, so
 * ids sort in creation order as plain strings. Replay pagination relies on it.
 */
#ifndef MP_ULID_H
#define MP_ULID_H

#include <stdint.h>

#define MP_ULID_LEN 26

typedef struct mp_ulid_gen {
    int64_t last_ms;
    uint8_t rnd[10];
    uint64_t prng;                  /* xorshift state, seeded from the OS */
} mp_ulid_gen;

/* Seed from getrandom()/time; seed != 0 makes the sequence reproducible (tests). */
void mp_ulid_init(mp_ulid_gen *g, uint64_t seed);

/* Write the next id (26 chars + NUL) into out. now_ms is the caller's clock. */
void mp_ulid_next(mp_ulid_gen *g, int64_t now_ms, char out[MP_ULID_LEN + 1]);

/* Milliseconds since the epoch (CLOCK_REALTIME). */
int64_t mp_now_ms(void);
/* Monotonic microseconds, for latency measurement. */
int64_t mp_mono_us(void);

/* Decode the time part of a ULID; -1 if s is not a ULID. */
int64_t mp_ulid_time(const char *s);

#endif
