#include "mb_log.h"

#include <libwebsockets.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

int mb_log_level = MB_LOG_INFO;

static const char *const names[] = {"debug", "info", "warn", "error"};

void mb_log_write(int level, const char *ctx, const char *fmt, ...)
{
    char ts[32];
    struct timespec now;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &now);
    gmtime_r(&now.tv_sec, &tm);
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    /* one fprintf per line so concurrent writers (lws, sanitizers) do not interleave mid-line */
    fprintf(stderr, "%s.%03ldZ %-5s %s%s%s%s\n", ts, now.tv_nsec / 1000000, names[level < 0 || level > 3 ? 3 : level],
            ctx ? "[" : "", ctx ? ctx : "", ctx ? "] " : "", line);
}

int mb_log_parse_level(const char *s)
{
    for (int i = 0; i < 4; i++)
        if (!strcmp(s, names[i]))
            return i;
    if (!strcmp(s, "off"))
        return MB_LOG_OFF;
    return -1;
}

static void mb__lws_emit(int level, const char *line)
{
    size_t n = strlen(line);
    while (n && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        n--;
    mb_log(level == LLL_ERR ? MB_LOG_ERROR : level == LLL_WARN ? MB_LOG_WARN : MB_LOG_DEBUG, "lws", "%.*s", (int)n,
           line);
}

void mb_log_hook_lws(void)
{
    int mask = LLL_ERR | LLL_WARN;
    if (mb_log_level <= MB_LOG_DEBUG)
        mask |= LLL_NOTICE;
    lws_set_log_level(mask, mb__lws_emit);
}
