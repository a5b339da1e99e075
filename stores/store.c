/* store.c - backend registry, URI parsing and error strings.
 *
 * The registry is a small fixed array: a broker has two or three backends, so
 * a linear search by name is both the simplest and the fastest option. The
 * built-ins are added lazily (pthread_once) so that a program linking only
 * mapstore never needs an explicit init call, and so that mst_find() works
 * even before anybody called mst_register().
 */
#include "store.h"
#include "store_int.h"

#include <pthread.h>
#include <string.h>

#define MST__MAX_BACKENDS 16

static const struct mst_ops *mst__backends[MST__MAX_BACKENDS];
static size_t mst__nbackends;
static pthread_once_t mst__once = PTHREAD_ONCE_INIT;

static int mst__add(const struct mst_ops *ops)
{
    if (!ops || !ops->name || !*ops->name || ops->version < MST_OPS_V1 || !ops->open || !ops->close)
        return MST_EINVAL;
    for (size_t i = 0; i < mst__nbackends; i++)
        if (strcmp(mst__backends[i]->name, ops->name) == 0)
            return mst__backends[i] == ops ? MST_OK : MST_EEXIST;
    if (mst__nbackends == MST__MAX_BACKENDS)
        return MST_ENOMEM;
    mst__backends[mst__nbackends++] = ops;
    return MST_OK;
}

static void mst__builtins(void)
{
    (void)mst__add(&mst_memory_ops);
    (void)mst__add(&mst_sqlite_ops);
}

/* Registration is meant for start-up (before the loop runs); it is not
 * synchronised beyond the one-time built-in setup. Re-registering the same
 * table is a no-op; another table under a taken name is MST_EEXIST. */
int mst_register(const struct mst_ops *ops)
{
    pthread_once(&mst__once, mst__builtins);
    return mst__add(ops);
}

const struct mst_ops *mst_find(const char *name)
{
    pthread_once(&mst__once, mst__builtins);
    if (!name)
        return NULL;
    for (size_t i = 0; i < mst__nbackends; i++)
        if (strcmp(mst__backends[i]->name, name) == 0)
            return mst__backends[i];
    return NULL;
}

/* Scheme detection follows RFC 3986 letters ([A-Za-z][A-Za-z0-9+.-]*) so that
 * ordinary paths ("./x.db", "/var/lib/x.db", "data/x.db") are never taken for
 * a scheme: they contain '/' or '.'-led parts before any ':'. A file name that
 * really contains a colon can be given as "sqlite:name:with:colons" or "./name:x". */
static size_t mst__scheme_len(const char *uri)
{
    size_t i = 0;
    if (!((uri[0] >= 'a' && uri[0] <= 'z') || (uri[0] >= 'A' && uri[0] <= 'Z')))
        return 0;
    for (i = 1; uri[i] && uri[i] != ':'; i++) {
        char c = uri[i];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '+' ||
                 c == '-' || c == '.';
        if (!ok)
            return 0;
    }
    return uri[i] == ':' ? i : 0;
}

static void mst__known(char *buf, size_t len)
{
    size_t off = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < mst__nbackends && off < len; i++) {
        int n = snprintf(buf + off, len - off, "%s%s", i ? ", " : "", mst__backends[i]->name);
        if (n < 0)
            break;
        off += (size_t)n;
    }
}

int mst_open_uri(const char *uri, enum mst_durability dur, struct mst_store **out, char *errbuf, size_t errlen)
{
    const struct mst_ops *ops = NULL;
    const char *path = NULL;
    char name[64];

    if (errbuf && errlen)
        errbuf[0] = '\0';
    if (!out) {
        mst__fmt(errbuf, errlen, "mst_open_uri: out is NULL");
        return MST_EINVAL;
    }
    *out = NULL;
    if (!uri || !*uri) {
        mst__fmt(errbuf, errlen, "empty store URI (use \"memory:\" or \"sqlite:PATH\")");
        return MST_EINVAL;
    }
    pthread_once(&mst__once, mst__builtins);

    size_t sl = mst__scheme_len(uri);
    if (sl) {
        if (sl >= sizeof name) {
            mst__fmt(errbuf, errlen, "store URI scheme too long in \"%s\"", uri);
            return MST_ENOBACKEND;
        }
        memcpy(name, uri, sl);
        name[sl] = '\0';
        ops = mst_find(name);
        if (!ops) {
            char known[256];
            mst__known(known, sizeof known);
            mst__fmt(errbuf, errlen, "unknown store \"%s\" in URI \"%s\" (known: %s)", name, uri, known);
            return MST_ENOBACKEND;
        }
        path = uri + sl + 1;
        if (!*path)
            path = NULL;
    } else if ((ops = mst_find(uri)) != NULL) {
        /* a bare backend name ("memory") selects it with no path */
        path = NULL;
    } else {
        ops = &mst_sqlite_ops; /* a bare path is the default, durable store */
        path = uri;
    }

    struct mst_config cfg = {.path = path, .durability = dur, .event_retention = 0};
    return ops->open(&cfg, out, errbuf, errlen);
}

const char *mst_strerror(int rc)
{
    switch (rc) {
    case MST_OK: return "success";
    case MST_ENOTFOUND: return "not found";
    case MST_EEXIST: return "already exists";
    case MST_EINVAL: return "invalid argument";
    case MST_ENOMEM: return "out of memory";
    case MST_EIO: return "store I/O error";
    case MST_EBUSY: return "store is in use by another process";
    case MST_ESCHEMA: return "unsupported or corrupt store schema";
    case MST_ERANGE: return "position out of range (trimmed or other epoch)";
    case MST_ENOBACKEND: return "unknown store backend";
    default: return "unknown store error";
    }
}
