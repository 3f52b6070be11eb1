// utils.h: error handling, checked allocation and file I/O, timing.
// Every failure path in mdn.c ends in one line on stderr that names the file (or flag) and the
// problem, then a non-zero exit. Library code that tests must be able to probe without exiting
// (safetensors, json, the dataloader) returns an error string instead; callers then die() with it.
#ifndef MDN_UTILS_H
#define MDN_UTILS_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <sys/stat.h>
#include <time.h>

// print "error: <message>" and exit(1). The message should name the file or flag at fault.
static inline void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "error: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(EXIT_FAILURE);
}

// snprintf into an error buffer (may be NULL); returns -1 so that `return set_error(...)` reads well.
static inline int set_error(char *err, size_t errlen, const char *fmt, ...) {
    if (err != NULL && errlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

static inline void *xmalloc(size_t nbytes) {
    void *p = malloc(nbytes > 0 ? nbytes : 1);
    if (p == NULL) die("out of memory allocating %zu bytes", nbytes);
    return p;
}

static inline void *xcalloc(size_t count, size_t size) {
    void *p = calloc(count > 0 ? count : 1, size > 0 ? size : 1);
    if (p == NULL) die("out of memory allocating %zu x %zu bytes", count, size);
    return p;
}

static inline void *xrealloc(void *ptr, size_t nbytes) {
    void *p = realloc(ptr, nbytes > 0 ? nbytes : 1);
    if (p == NULL) die("out of memory reallocating %zu bytes", nbytes);
    return p;
}

static inline char *xstrdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = (char *)xmalloc(n);
    memcpy(p, s, n);
    return p;
}

static inline FILE *xfopen(const char *path, const char *mode) {
    FILE *f = fopen(path, mode);
    if (f == NULL) die("%s: cannot open (%s)", path, mode[0] == 'r' ? "missing or unreadable" : "unwritable");
    return f;
}

// read a whole file into a malloc'd, NUL-terminated buffer; NULL (and err set) on failure.
static inline char *read_file(const char *path, size_t *size_out, char *err, size_t errlen) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) { set_error(err, errlen, "%s: cannot open (missing or unreadable)", path); return NULL; }
    if (fseek(f, 0, SEEK_END) != 0) { fclose(f); set_error(err, errlen, "%s: cannot seek", path); return NULL; }
    long size = ftell(f);
    if (size < 0 || fseek(f, 0, SEEK_SET) != 0) { fclose(f); set_error(err, errlen, "%s: cannot seek", path); return NULL; }
    char *buf = (char *)xmalloc((size_t)size + 1);
    if (size > 0 && fread(buf, 1, (size_t)size, f) != (size_t)size) {
        fclose(f); free(buf); set_error(err, errlen, "%s: read failed", path); return NULL;
    }
    fclose(f);
    buf[size] = '\0';
    if (size_out != NULL) *size_out = (size_t)size;
    return buf;
}

// mkdir -p DIR; 0, or -1 with err = "DIR: problem"
static inline int make_directories(const char *dir, char *err, size_t errlen) {
    char *path = xstrdup(dir);
    for (char *p = path + 1;; p++) {
        if (*p != '/' && *p != '\0') continue;
        char saved = *p;
        *p = '\0';
        if (mkdir(path, 0755) != 0 && errno != EEXIST) {
            set_error(err, errlen, "%s: cannot create directory (%s)", path, strerror(errno));
            free(path);
            return -1;
        }
        *p = saved;
        if (saved == '\0') break;
    }
    struct stat sb;
    int ok = stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
    if (!ok) set_error(err, errlen, "%s: not a directory", path);
    free(path);
    return ok ? 0 : -1;
}

static inline double wall_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#endif // MDN_UTILS_H
