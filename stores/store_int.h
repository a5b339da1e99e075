/* store_int.h - helpers shared by the backends in stores/ (not a public API).
 *
 * Both backends must agree on argument validation so that the contract suite
 * (tests/stores) sees the same return codes whatever the backend; the checks
 * live here once instead of being re-typed per backend.
 */
#ifndef MST_STORE_INT_H
#define MST_STORE_INT_H

#include "store.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* Event ids are copied into the caller's char[32] by event_last, so an
 * id that does not fit would be silently truncated later; refuse it at append. */
#define MST__EVENT_ID_MAX 31

/* A record/turn/event/audit json with len == 0 is taken as NUL-terminated:
 * an empty document is never valid JSON, so 0 cannot be meant literally. */
static inline size_t mst__jlen(const char *json, size_t len) { return len ? len : strlen(json); }

/* Records with no owner are stored under "" so that (kind, owner, key) is a
 * plain unique key in every backend (SQL NULLs are never equal to each other). */
static inline const char *mst__owner(const char *owner) { return owner ? owner : ""; }

static inline int mst__kind_ok(enum mst_kind k) { return (int)k >= 1 && (int)k <= MST_KIND_MAX; }

/* seq values are stored as SQLite INTEGER (int64), so the usable range is 1..INT64_MAX
 * in every backend; keeping memory identical avoids surprises when switching. */
static inline int mst__seq_ok(uint64_t seq) { return seq >= 1 && seq <= (uint64_t)INT64_MAX; }

static inline int mst__record_ok(const struct mst_record *r)
{
    return r && mst__kind_ok(r->kind) && r->key && r->json;
}
static inline int mst__turn_ok(const struct mst_turn *t)
{
    return t && t->id && t->conv_id && mst__seq_ok(t->seq) && t->json;
}
static inline int mst__event_ok(const struct mst_event *e)
{
    return e && e->id && strlen(e->id) <= MST__EVENT_ID_MAX && e->type && mst__seq_ok(e->seq) && e->json;
}
static inline int mst__audit_ok(const struct mst_audit *a)
{
    return a && a->id && a->json;
}

/* printf into a fixed buffer, tolerating errbuf == NULL / errlen == 0. */
#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static inline void mst__fmt(char *buf, size_t len, const char *fmt, ...)
{
    if (!buf || !len)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, len, fmt, ap);
    va_end(ap);
}

#endif
