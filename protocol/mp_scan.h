/* mp_scan.h - private to protocol/: the byte scan shared by the JSON writer
 * (mp_json.c) and the parser (mp_parse.c). */
#ifndef MP_SCAN_H
#define MP_SCAN_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Is c a byte a JSON string cannot carry as it is: a control character, '"'
 * or '\\', or the start of a multi-byte UTF-8 sequence (which needs checking)? */
static inline int mp_scan_special(unsigned c)
{
    return c < 0x20 || c == '"' || c == '\\' || c >= 0x80;
}

/* The length of the run of plain bytes at p (at most n): the index of the
 * first mp_scan_special byte, or n. Eight bytes at a time: in each word the
 * lowest flagged byte of the has-less / has-zero tricks is exact (a false
 * flag can only sit above a true one, where a borrow ran), and on a
 * little-endian machine the lowest byte is the first in memory. */
static inline size_t mp_scan_plain(const unsigned char *p, size_t n)
{
    size_t i = 0;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    const uint64_t ones = 0x0101010101010101ull, high = 0x8080808080808080ull;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        uint64_t quote = w ^ (ones * '"'), bslash = w ^ (ones * '\\');
        uint64_t m = (((w - ones * 0x20) & ~w) | ((quote - ones) & ~quote) | ((bslash - ones) & ~bslash) | w) & high;
        if (m)
            return i + ((size_t)__builtin_ctzll(m) >> 3);
    }
#endif
    while (i < n && !mp_scan_special(p[i]))
        i++;
    return i;
}

#endif
