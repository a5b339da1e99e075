/* gen_corpus.c - build-time helper: turn capture files into a libFuzzer seed corpus.
 *
 * usage: gen_corpus <outdir> <capture.jsonl>...
 * Every line of a capture that is a JSON object with a string "frame" becomes one
 * file <outdir>/<capture-basename>-<line>.json holding the frame's raw text.
 * Other lines (notes) are skipped. Exit status 0 unless a file cannot be read or written.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

static const char *base_name(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

static int one_file(const char *outdir, const char *path, int *written)
{
    FILE *in = fopen(path, "r");
    if (!in) {
        fprintf(stderr, "gen_corpus: %s: %s\n", path, strerror(errno));
        return 1;
    }
    char stem[256];
    snprintf(stem, sizeof stem, "%s", base_name(path));
    char *dot = strrchr(stem, '.');
    if (dot)
        *dot = '\0';

    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int lineno = 0, rc = 0;
    while ((n = getline(&line, &cap, in)) >= 0) {
        lineno++;
        json_t *o = json_loadb(line, (size_t)n, JSON_DISABLE_EOF_CHECK, NULL);
        json_t *frame = json_object_get(o, "frame");
        if (json_is_string(frame)) {
            char out[4096];
            snprintf(out, sizeof out, "%s/%s-%03d.json", outdir, stem, lineno);
            FILE *f = fopen(out, "wb");
            if (!f || fwrite(json_string_value(frame), 1, json_string_length(frame), f) != json_string_length(frame)) {
                fprintf(stderr, "gen_corpus: cannot write %s\n", out);
                rc = 1;
            } else {
                (*written)++;
            }
            if (f)
                fclose(f);
        }
        json_decref(o);
    }
    free(line);
    fclose(in);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: gen_corpus <outdir> <capture.jsonl>...\n");
        return 2;
    }
    int rc = 0, written = 0;
    for (int i = 2; i < argc; i++)
        rc |= one_file(argv[1], argv[i], &written);
    printf("gen_corpus: %d frames from %d capture file(s) into %s\n", written, argc - 2, argv[1]);
    return rc;
}
