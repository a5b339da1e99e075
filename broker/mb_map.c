#include "mb_map.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct mb_map_ent {
    mb_map_ent *chain;            /* bucket chain */
    mb_map_ent *prev, *next;      /* insertion order */
    uint64_t hash;
    void *val;
    char key[];
};

struct mb_map {
    mb_map_ent **buckets;
    size_t nbuckets, size;
    mb_map_ent *head, *tail;
};

static uint64_t mb__hash(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

mb_map *mb_map_new(void)
{
    mb_map *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    m->nbuckets = 16;
    m->buckets = calloc(m->nbuckets, sizeof *m->buckets);
    if (!m->buckets) {
        free(m);
        return NULL;
    }
    return m;
}

void mb_map_free(mb_map *m, void (*free_val)(void *))
{
    if (!m)
        return;
    for (mb_map_ent *e = m->head, *n; e; e = n) {
        n = e->next;
        if (free_val)
            free_val(e->val);
        free(e);
    }
    free(m->buckets);
    free(m);
}

static mb_map_ent *mb__find(const mb_map *m, const char *key, uint64_t h)
{
    for (mb_map_ent *e = m->buckets[h & (m->nbuckets - 1)]; e; e = e->chain)
        if (e->hash == h && !strcmp(e->key, key))
            return e;
    return NULL;
}

void *mb_map_get(const mb_map *m, const char *key)
{
    if (!m || !key)
        return NULL;
    mb_map_ent *e = mb__find(m, key, mb__hash(key));
    return e ? e->val : NULL;
}

static void mb__grow(mb_map *m)
{
    size_t n = m->nbuckets * 2;
    mb_map_ent **b = calloc(n, sizeof *b);
    if (!b)
        return; /* keep working with longer chains */
    for (mb_map_ent *e = m->head; e; e = e->next) {
        size_t i = e->hash & (n - 1);
        e->chain = b[i];
        b[i] = e;
    }
    free(m->buckets);
    m->buckets = b;
    m->nbuckets = n;
}

void *mb_map_put(mb_map *m, const char *key, void *val)
{
    uint64_t h = mb__hash(key);
    mb_map_ent *e = mb__find(m, key, h);
    if (e) {
        void *old = e->val;
        e->val = val;
        return old;
    }
    size_t kl = strlen(key);
    e = malloc(sizeof *e + kl + 1);
    if (!e)
        return NULL;
    memcpy(e->key, key, kl + 1);
    e->hash = h;
    e->val = val;
    size_t i = h & (m->nbuckets - 1);
    e->chain = m->buckets[i];
    m->buckets[i] = e;
    e->next = NULL;
    e->prev = m->tail;
    if (m->tail)
        m->tail->next = e;
    else
        m->head = e;
    m->tail = e;
    if (++m->size > m->nbuckets)
        mb__grow(m);
    return NULL;
}

void *mb_map_del(mb_map *m, const char *key)
{
    if (!m || !key)
        return NULL;
    uint64_t h = mb__hash(key);
    mb_map_ent **pp = &m->buckets[h & (m->nbuckets - 1)];
    for (; *pp; pp = &(*pp)->chain) {
        mb_map_ent *e = *pp;
        if (e->hash != h || strcmp(e->key, key))
            continue;
        *pp = e->chain;
        if (e->prev)
            e->prev->next = e->next;
        else
            m->head = e->next;
        if (e->next)
            e->next->prev = e->prev;
        else
            m->tail = e->prev;
        void *v = e->val;
        free(e);
        m->size--;
        return v;
    }
    return NULL;
}

size_t mb_map_size(const mb_map *m) { return m ? m->size : 0; }
mb_map_ent *mb_map_first(const mb_map *m) { return m ? m->head : NULL; }
mb_map_ent *mb_map_next(const mb_map_ent *e) { return e->next; }
const char *mb_map_key(const mb_map_ent *e) { return e->key; }
void *mb_map_val(const mb_map_ent *e) { return e->val; }
