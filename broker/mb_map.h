/* mb_map.h - string-keyed hash map that iterates in insertion order.
 *
 * Keys are copied (owned by the map); values are borrowed pointers whose
 * lifetime the caller manages. Insertion order matters to us: agent lists,
 * `delivered` arrays and broadcast fan-out come out in registration order,
 * which makes the broker's answers deterministic.
 */
#ifndef MB_MAP_H
#define MB_MAP_H

#include <stddef.h>

typedef struct mb_map mb_map;
typedef struct mb_map_ent mb_map_ent;

mb_map *mb_map_new(void);
/* Frees the map; free_val (may be NULL) is called on every value. NULL-safe. */
void mb_map_free(mb_map *m, void (*free_val)(void *));
void *mb_map_get(const mb_map *m, const char *key);
/* Insert or replace. Returns the previous value (or NULL). On OOM returns NULL and sets *oom if given. */
void *mb_map_put(mb_map *m, const char *key, void *val);
/* Remove; returns the value or NULL. */
void *mb_map_del(mb_map *m, const char *key);
size_t mb_map_size(const mb_map *m);

/* Iteration in insertion order. Deleting the current entry during iteration is
 * allowed if you fetched the next one first (mb_map_next before mb_map_del). */
mb_map_ent *mb_map_first(const mb_map *m);
mb_map_ent *mb_map_next(const mb_map_ent *e);
const char *mb_map_key(const mb_map_ent *e);
void *mb_map_val(const mb_map_ent *e);

#define MB_MAP_FOREACH(m, ent) for (mb_map_ent *ent = mb_map_first(m); ent; ent = mb_map_next(ent))

#endif
