// safetensors.c: validated reading and atomic writing of safetensors files (see safetensors.h).
#include "safetensors.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "json.h"
#include "utils.h"

// a header larger than this is certainly not one of ours (and guards against absurd lengths)
#define ST_MAX_HEADER (100u << 20)

static const struct { const char *name; StDtype dtype; size_t size; } DTYPES[] = {
    {"F64", ST_F64, 8}, {"F32", ST_F32, 4}, {"F16", ST_F16, 2}, {"BF16", ST_BF16, 2},
    {"I64", ST_I64, 8}, {"I32", ST_I32, 4}, {"I16", ST_I16, 2}, {"I8", ST_I8, 1},
    {"U8", ST_U8, 1}, {"U16", ST_U16, 2}, {"BOOL", ST_BOOL, 1},
};
#define NUM_DTYPES ((int)(sizeof(DTYPES) / sizeof(DTYPES[0])))

size_t st_dtype_size(StDtype dtype) {
    for (int i = 0; i < NUM_DTYPES; i++) if (DTYPES[i].dtype == dtype) return DTYPES[i].size;
    return 0;
}

const char *st_dtype_name(StDtype dtype) {
    for (int i = 0; i < NUM_DTYPES; i++) if (DTYPES[i].dtype == dtype) return DTYPES[i].name;
    return "?";
}

float bf16_to_float(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t float_to_bf16(float f) {
    uint32_t bits;
    memcpy(&bits, &f, 4);
    if ((bits & 0x7F800000u) == 0x7F800000u && (bits & 0x007FFFFFu)) return (uint16_t)((bits >> 16) | 0x40); // NaN stays NaN
    bits += 0x7FFFu + ((bits >> 16) & 1u); // round to nearest even
    return (uint16_t)(bits >> 16);
}

float f16_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31, exponent = (h >> 10) & 0x1F, mantissa = h & 0x3FF;
    float magnitude;
    if (exponent == 0) magnitude = ldexpf((float)mantissa, -24);
    else if (exponent == 31) magnitude = mantissa ? NAN : INFINITY;
    else magnitude = ldexpf((float)(mantissa | 0x400), (int)exponent - 25);
    uint32_t bits;
    memcpy(&bits, &magnitude, 4);
    bits |= sign;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static int parse_tensor_entry(SafeTensors *st, const char *name, const JsonValue *entry, StTensor *t, char *err, size_t errlen) {
    const char *path = st->path;
    if (entry->type != JSON_OBJECT) return set_error(err, errlen, "%s: tensor %s: header entry is not an object", path, name);
    const JsonValue *dtype = json_get(entry, "dtype");
    const JsonValue *shape = json_get(entry, "shape");
    const JsonValue *offsets = json_get(entry, "data_offsets");
    if (dtype == NULL || dtype->type != JSON_STRING) return set_error(err, errlen, "%s: tensor %s: missing dtype", path, name);
    if (shape == NULL || shape->type != JSON_ARRAY) return set_error(err, errlen, "%s: tensor %s: missing shape", path, name);
    if (offsets == NULL || offsets->type != JSON_ARRAY || offsets->count != 2)
        return set_error(err, errlen, "%s: tensor %s: missing or malformed data_offsets", path, name);
    int found = 0;
    for (int i = 0; i < NUM_DTYPES; i++)
        if (strcmp(dtype->string, DTYPES[i].name) == 0) { t->dtype = DTYPES[i].dtype; found = 1; }
    if (!found) return set_error(err, errlen, "%s: tensor %s: unknown dtype \"%s\"", path, name, dtype->string);
    if (shape->count > ST_MAX_DIMS) return set_error(err, errlen, "%s: tensor %s: more than %d dims", path, name, ST_MAX_DIMS);
    t->ndim = shape->count;
    t->numel = 1;
    for (int d = 0; d < shape->count; d++) {
        double v = shape->items[d].number;
        if (shape->items[d].type != JSON_NUMBER || v < 0 || v != floor(v) || v > 1e15)
            return set_error(err, errlen, "%s: tensor %s: bad shape", path, name);
        t->shape[d] = (int64_t)v;
        t->numel *= t->shape[d];
        if (t->numel > (int64_t)1 << 50) return set_error(err, errlen, "%s: tensor %s: shape too large", path, name);
    }
    double begin = offsets->items[0].number, end = offsets->items[1].number;
    if (offsets->items[0].type != JSON_NUMBER || offsets->items[1].type != JSON_NUMBER || begin < 0 ||
        end < begin || begin != floor(begin) || end != floor(end))
        return set_error(err, errlen, "%s: tensor %s: bad data_offsets", path, name);
    if (end > (double)st->data_size)
        return set_error(err, errlen, "%s: tensor %s: data_offsets [%.0f, %.0f] outside the data (%zu bytes; truncated file?)",
                         path, name, begin, end, st->data_size);
    t->begin = (size_t)begin;
    t->end = (size_t)end;
    if ((size_t)t->numel * st_dtype_size(t->dtype) != t->end - t->begin)
        return set_error(err, errlen, "%s: tensor %s: shape needs %zu bytes but data_offsets span %zu", path, name,
                         (size_t)t->numel * st_dtype_size(t->dtype), t->end - t->begin);
    t->name = xstrdup(name);
    return 0;
}

static int compare_begin(const void *a, const void *b) {
    const StTensor *x = *(const StTensor *const *)a, *y = *(const StTensor *const *)b;
    return (x->begin > y->begin) - (x->begin < y->begin);
}

int st_read(SafeTensors *st, const char *path, char *err, size_t errlen) {
    memset(st, 0, sizeof(*st));
    st->path = xstrdup(path);
    size_t size;
    char *file = read_file(path, &size, err, errlen);
    if (file == NULL) { st_free(st); return -1; }
    st->file = (unsigned char *)file;
    st->file_size = size;
    if (size < 8) { set_error(err, errlen, "%s: too short for a safetensors header (%zu bytes)", path, size); st_free(st); return -1; }
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; i--) header_len = (header_len << 8) | st->file[i];
    if (header_len > ST_MAX_HEADER || header_len > size - 8) {
        set_error(err, errlen, "%s: header length %llu does not fit the file (%zu bytes)", path, (unsigned long long)header_len, size);
        st_free(st);
        return -1;
    }
    st->data = st->file + 8 + header_len;
    st->data_size = size - 8 - header_len;
    char jerr[128];
    JsonValue *header = json_parse(file + 8, header_len, jerr, sizeof(jerr));
    if (header == NULL || header->type != JSON_OBJECT) {
        set_error(err, errlen, "%s: header is not a JSON object (%s)", path, header ? "wrong type" : jerr);
        json_free(header);
        st_free(st);
        return -1;
    }
    st->tensors = (StTensor *)xcalloc((size_t)header->count, sizeof(StTensor));
    int ok = 0;
    for (int i = 0; i < header->count; i++) {
        const JsonValue *entry = &header->items[i];
        if (strcmp(header->keys[i], "__metadata__") == 0) {
            if (entry->type != JSON_OBJECT) { set_error(err, errlen, "%s: __metadata__ is not an object", path); ok = -1; break; }
            st->metadata_keys = (char **)xcalloc((size_t)entry->count, sizeof(char *));
            st->metadata_values = (char **)xcalloc((size_t)entry->count, sizeof(char *));
            for (int m = 0; m < entry->count; m++) {
                if (entry->items[m].type != JSON_STRING) { set_error(err, errlen, "%s: __metadata__ value is not a string", path); ok = -1; break; }
                st->metadata_keys[m] = xstrdup(entry->keys[m]);
                st->metadata_values[m] = xstrdup(entry->items[m].string);
                st->metadata_count++;
            }
            if (ok != 0) break;
            continue;
        }
        if (st_find(st, header->keys[i]) != NULL) { set_error(err, errlen, "%s: tensor %s appears twice", path, header->keys[i]); ok = -1; break; }
        if (parse_tensor_entry(st, header->keys[i], entry, &st->tensors[st->count], err, errlen) != 0) { ok = -1; break; }
        st->count++;
    }
    json_free(header);
    if (ok == 0 && st->count > 1) {
        // overlapping tensors would alias each other's bytes: sort by offset and check neighbours
        StTensor **sorted = (StTensor **)xmalloc((size_t)st->count * sizeof(StTensor *));
        for (int i = 0; i < st->count; i++) sorted[i] = &st->tensors[i];
        qsort(sorted, (size_t)st->count, sizeof(StTensor *), compare_begin);
        for (int i = 1; i < st->count && ok == 0; i++)
            if (sorted[i]->begin < sorted[i - 1]->end && sorted[i]->end > sorted[i]->begin)
                ok = set_error(err, errlen, "%s: tensors %s and %s overlap", path, sorted[i - 1]->name, sorted[i]->name);
        free(sorted);
    }
    if (ok != 0) { st_free(st); return -1; }
    return 0;
}

void st_free(SafeTensors *st) {
    for (int i = 0; i < st->count; i++) free(st->tensors[i].name);
    for (int i = 0; i < st->metadata_count; i++) { free(st->metadata_keys[i]); free(st->metadata_values[i]); }
    free(st->metadata_keys);
    free(st->metadata_values);
    free(st->tensors);
    free(st->file);
    free(st->path);
    memset(st, 0, sizeof(*st));
}

const StTensor *st_find(const SafeTensors *st, const char *name) {
    for (int i = 0; i < st->count; i++) if (strcmp(st->tensors[i].name, name) == 0) return &st->tensors[i];
    return NULL;
}

const char *st_metadata(const SafeTensors *st, const char *key) {
    for (int i = 0; i < st->metadata_count; i++) if (strcmp(st->metadata_keys[i], key) == 0) return st->metadata_values[i];
    return NULL;
}

static void shape_string(int ndim, const int64_t *shape, char *buf, size_t len) {
    size_t n = (size_t)snprintf(buf, len, "[");
    for (int d = 0; d < ndim && n < len; d++) n += (size_t)snprintf(buf + n, len - n, d ? ", %lld" : "%lld", (long long)shape[d]);
    if (n < len) snprintf(buf + n, len - n, "]");
}

// finds NAME and checks its shape against the expected one
static const StTensor *find_checked(const SafeTensors *st, const char *name, int ndim, const int64_t *shape, char *err, size_t errlen) {
    const StTensor *t = st_find(st, name);
    if (t == NULL) { set_error(err, errlen, "%s: tensor %s is missing", st->path, name); return NULL; }
    int same = (t->ndim == ndim);
    for (int d = 0; same && d < ndim; d++) same = (t->shape[d] == shape[d]);
    if (!same) {
        char want[128], have[128];
        shape_string(ndim, shape, want, sizeof(want));
        shape_string(t->ndim, t->shape, have, sizeof(have));
        set_error(err, errlen, "%s: tensor %s has shape %s, expected %s", st->path, name, have, want);
        return NULL;
    }
    return t;
}

// element i of a floating tensor as double (the data section is not aligned: memcpy)
static double load_float(const StTensor *t, const unsigned char *data, int64_t i) {
    const unsigned char *src = data + t->begin + (size_t)i * st_dtype_size(t->dtype);
    switch (t->dtype) {
        case ST_F64: { double v; memcpy(&v, src, 8); return v; }
        case ST_F32: { float v; memcpy(&v, src, 4); return v; }
        case ST_BF16: { uint16_t v; memcpy(&v, src, 2); return bf16_to_float(v); }
        case ST_F16: { uint16_t v; memcpy(&v, src, 2); return f16_to_float(v); }
        default: return 0.0;
    }
}

static int is_float_dtype(StDtype d) { return d == ST_F64 || d == ST_F32 || d == ST_BF16 || d == ST_F16; }

int st_get_f32(const SafeTensors *st, const char *name, int ndim, const int64_t *shape, float *out, char *err, size_t errlen) {
    const StTensor *t = find_checked(st, name, ndim, shape, err, errlen);
    if (t == NULL) return -1;
    if (!is_float_dtype(t->dtype)) return set_error(err, errlen, "%s: tensor %s has dtype %s, expected a float type", st->path, name, st_dtype_name(t->dtype));
    if (t->dtype == ST_F32) { memcpy(out, st->data + t->begin, (size_t)t->numel * 4); return 0; }
    for (int64_t i = 0; i < t->numel; i++) out[i] = (float)load_float(t, st->data, i);
    return 0;
}

int st_get_f64(const SafeTensors *st, const char *name, int ndim, const int64_t *shape, double *out, char *err, size_t errlen) {
    const StTensor *t = find_checked(st, name, ndim, shape, err, errlen);
    if (t == NULL) return -1;
    if (!is_float_dtype(t->dtype)) return set_error(err, errlen, "%s: tensor %s has dtype %s, expected a float type", st->path, name, st_dtype_name(t->dtype));
    for (int64_t i = 0; i < t->numel; i++) out[i] = load_float(t, st->data, i);
    return 0;
}

int st_get_i32(const SafeTensors *st, const char *name, int ndim, const int64_t *shape, int32_t *out, char *err, size_t errlen) {
    const StTensor *t = find_checked(st, name, ndim, shape, err, errlen);
    if (t == NULL) return -1;
    for (int64_t i = 0; i < t->numel; i++) {
        const unsigned char *src = st->data + t->begin + (size_t)i * st_dtype_size(t->dtype);
        int64_t v;
        switch (t->dtype) {
            case ST_I64: { int64_t x; memcpy(&x, src, 8); v = x; break; }
            case ST_I32: { int32_t x; memcpy(&x, src, 4); v = x; break; }
            case ST_I16: { int16_t x; memcpy(&x, src, 2); v = x; break; }
            case ST_U16: { uint16_t x; memcpy(&x, src, 2); v = x; break; }
            case ST_I8: { int8_t x; memcpy(&x, src, 1); v = x; break; }
            case ST_U8: case ST_BOOL: v = *src; break;
            default: return set_error(err, errlen, "%s: tensor %s has dtype %s, expected an integer type", st->path, name, st_dtype_name(t->dtype));
        }
        if (v < INT32_MIN || v > INT32_MAX) return set_error(err, errlen, "%s: tensor %s: value %lld does not fit int32", st->path, name, (long long)v);
        out[i] = (int32_t)v;
    }
    return 0;
}

void st_writer_init(StWriter *w) { memset(w, 0, sizeof(*w)); }

void st_writer_add(StWriter *w, const char *name, StDtype dtype, int ndim, const int64_t *shape, const void *data) {
    if (ndim > ST_MAX_DIMS) die("safetensors writer: tensor %s has more than %d dims", name, ST_MAX_DIMS);
    if (w->count == w->capacity) {
        w->capacity = w->capacity ? 2 * w->capacity : 16;
        w->tensors = (StTensor *)xrealloc(w->tensors, (size_t)w->capacity * sizeof(StTensor));
        w->datas = (const void **)xrealloc(w->datas, (size_t)w->capacity * sizeof(void *));
    }
    StTensor *t = &w->tensors[w->count];
    memset(t, 0, sizeof(*t));
    t->name = xstrdup(name);
    t->dtype = dtype;
    t->ndim = ndim;
    t->numel = 1;
    for (int d = 0; d < ndim; d++) { t->shape[d] = shape[d]; t->numel *= shape[d]; }
    w->datas[w->count] = data;
    w->count++;
}

void st_writer_add_metadata(StWriter *w, const char *key, const char *value) {
    w->metadata_keys = (char **)xrealloc(w->metadata_keys, (size_t)(w->metadata_count + 1) * sizeof(char *));
    w->metadata_values = (char **)xrealloc(w->metadata_values, (size_t)(w->metadata_count + 1) * sizeof(char *));
    w->metadata_keys[w->metadata_count] = xstrdup(key);
    w->metadata_values[w->metadata_count] = xstrdup(value);
    w->metadata_count++;
}

// appends a JSON string literal (names and metadata may hold quotes, backslashes, control chars)
static void append_json_string(char **buf, size_t *len, size_t *cap, const char *s) {
    size_t need = *len + 6 * strlen(s) + 3;
    if (need > *cap) { *cap = 2 * need; *buf = (char *)xrealloc(*buf, *cap); }
    char *out = *buf + *len;
    *out++ = '"';
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        if (*c == '"' || *c == '\\') { *out++ = '\\'; *out++ = (char)*c; }
        else if (*c < 0x20) out += sprintf(out, "\\u%04x", *c);
        else *out++ = (char)*c;
    }
    *out++ = '"';
    *len = (size_t)(out - *buf);
}

static void append_text(char **buf, size_t *len, size_t *cap, const char *s) {
    size_t n = strlen(s);
    if (*len + n + 1 > *cap) { *cap = 2 * (*len + n + 1); *buf = (char *)xrealloc(*buf, *cap); }
    memcpy(*buf + *len, s, n + 1);
    *len += n;
}

int st_writer_save(StWriter *w, const char *path, char *err, size_t errlen) {
    size_t cap = 4096, len = 0;
    char *header = (char *)xmalloc(cap);
    header[0] = '\0';
    char piece[512];
    append_text(&header, &len, &cap, "{");
    if (w->metadata_count > 0) {
        append_text(&header, &len, &cap, "\"__metadata__\":{");
        for (int i = 0; i < w->metadata_count; i++) {
            if (i) append_text(&header, &len, &cap, ",");
            append_json_string(&header, &len, &cap, w->metadata_keys[i]);
            append_text(&header, &len, &cap, ":");
            append_json_string(&header, &len, &cap, w->metadata_values[i]);
        }
        append_text(&header, &len, &cap, "}");
    }
    size_t offset = 0;
    for (int i = 0; i < w->count; i++) {
        StTensor *t = &w->tensors[i];
        if (i || w->metadata_count) append_text(&header, &len, &cap, ",");
        append_json_string(&header, &len, &cap, t->name);
        snprintf(piece, sizeof(piece), ":{\"dtype\":\"%s\",\"shape\":", st_dtype_name(t->dtype));
        append_text(&header, &len, &cap, piece);
        shape_string(t->ndim, t->shape, piece, sizeof(piece));
        append_text(&header, &len, &cap, piece);
        t->begin = offset;
        t->end = offset + (size_t)t->numel * st_dtype_size(t->dtype);
        offset = t->end;
        snprintf(piece, sizeof(piece), ",\"data_offsets\":[%zu,%zu]}", t->begin, t->end);
        append_text(&header, &len, &cap, piece);
    }
    append_text(&header, &len, &cap, "}");
    while (len % 8 != 0) append_text(&header, &len, &cap, " "); // keep the data 8-byte aligned

    size_t tmp_len = strlen(path) + 5;
    char *tmp_path = (char *)xmalloc(tmp_len);
    snprintf(tmp_path, tmp_len, "%s.tmp", path);
    FILE *f = fopen(tmp_path, "wb");
    int status = 0;
    if (f == NULL) {
        status = set_error(err, errlen, "%s: cannot create (%s)", tmp_path, strerror(errno));
    } else {
        unsigned char len_bytes[8];
        for (int i = 0; i < 8; i++) len_bytes[i] = (unsigned char)(((uint64_t)len >> (8 * i)) & 0xFF);
        int ok = fwrite(len_bytes, 1, 8, f) == 8 && fwrite(header, 1, len, f) == len;
        for (int i = 0; ok && i < w->count; i++) {
            size_t n = w->tensors[i].end - w->tensors[i].begin;
            ok = fwrite(w->datas[i], 1, n, f) == n;
        }
        // flush, fsync and close must all succeed before the rename makes the file visible
        ok = ok && fflush(f) == 0 && fsync(fileno(f)) == 0;
        int saved_errno = errno;
        if (fclose(f) != 0) { ok = 0; saved_errno = errno; }
        if (!ok) {
            status = set_error(err, errlen, "%s: write failed (%s)", tmp_path, strerror(saved_errno));
            remove(tmp_path);
        } else if (rename(tmp_path, path) != 0) {
            status = set_error(err, errlen, "%s: cannot rename from %s (%s)", path, tmp_path, strerror(errno));
            remove(tmp_path);
        }
    }
    free(tmp_path);
    free(header);
    return status;
}

void st_writer_free(StWriter *w) {
    for (int i = 0; i < w->count; i++) free(w->tensors[i].name);
    for (int i = 0; i < w->metadata_count; i++) { free(w->metadata_keys[i]); free(w->metadata_values[i]); }
    free(w->tensors);
    free(w->datas);
    free(w->metadata_keys);
    free(w->metadata_values);
    memset(w, 0, sizeof(*w));
}
