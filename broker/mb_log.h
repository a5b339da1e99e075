/* mb_log.h - one logging entry point. Level checked before formatting. */
#ifndef MB_LOG_H
#define MB_LOG_H

enum mb_log_level { MB_LOG_DEBUG = 0, MB_LOG_INFO, MB_LOG_WARN, MB_LOG_ERROR, MB_LOG_OFF };

extern int mb_log_level;

/* ctx: a short context tag (session id, "store", ...) or NULL. */
void mb_log_write(int level, const char *ctx, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int mb_log_parse_level(const char *s); /* -1 if unknown */
/* Route libwebsockets' own log lines through mb_log (warn+ only unless debug). */
void mb_log_hook_lws(void);

#define mb_log(level, ctx, ...)                                                                                        \
    do {                                                                                                               \
        if ((level) >= mb_log_level)                                                                                   \
            mb_log_write((level), (ctx), __VA_ARGS__);                                                                 \
    } while (0)
#define mb_debug(ctx, ...) mb_log(MB_LOG_DEBUG, ctx, __VA_ARGS__)
#define mb_info(ctx, ...) mb_log(MB_LOG_INFO, ctx, __VA_ARGS__)
#define mb_warn(ctx, ...) mb_log(MB_LOG_WARN, ctx, __VA_ARGS__)
#define mb_error(ctx, ...) mb_log(MB_LOG_ERROR, ctx, __VA_ARGS__)

#endif
