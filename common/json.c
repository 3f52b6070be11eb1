// json.c: a small recursive-descent JSON parser producing a DOM (see json.h).
#include "json.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "utils.h"

#define JSON_MAX_DEPTH 64

typedef struct {
    const char *text;
    size_t len, pos;
    char *err;
    size_t errlen;
    int failed;
} Parser;

static int fail_at(Parser *p, const char *what) {
    if (!p->failed) set_error(p->err, p->errlen, "offset %zu: %s", p->pos, what);
    p->failed = 1;
    return -1;
}

static void skip_space(Parser *p) {
    while (p->pos < p->len) {
        char c = p->text[p->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        p->pos++;
    }
}

static int parse_value(Parser *p, JsonValue *out, int depth);

static int hex4(Parser *p, uint32_t *out) {
    if (p->pos + 4 > p->len) return fail_at(p, "truncated \\u escape");
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p->text[p->pos + i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (uint32_t)(c - 'A' + 10);
        else return fail_at(p, "bad hex digit in \\u escape");
    }
    p->pos += 4;
    *out = v;
    return 0;
}

static size_t put_utf8(char *dst, uint32_t cp) {
    if (cp < 0x80) { dst[0] = (char)cp; return 1; }
    if (cp < 0x800) { dst[0] = (char)(0xC0 | (cp >> 6)); dst[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        dst[0] = (char)(0xE0 | (cp >> 12)); dst[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        dst[2] = (char)(0x80 | (cp & 0x3F)); return 3;
    }
    dst[0] = (char)(0xF0 | (cp >> 18)); dst[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    dst[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); dst[3] = (char)(0x80 | (cp & 0x3F)); return 4;
}

// parses a string starting at the opening quote; the unescaped text is never longer than the source
static int parse_string(Parser *p, char **out, size_t *out_len) {
    p->pos++; // opening quote
    size_t start = p->pos;
    size_t end = start;
    while (end < p->len && p->text[end] != '"') end += (p->text[end] == '\\') ? 2 : 1;
    if (end >= p->len) return fail_at(p, "unterminated string");
    char *buf = (char *)xmalloc(end - start + 1);
    size_t n = 0;
    while (p->pos < end) {
        unsigned char c = (unsigned char)p->text[p->pos];
        if (c < 0x20) { free(buf); return fail_at(p, "control character in string"); }
        if (c != '\\') { buf[n++] = (char)c; p->pos++; continue; }
        p->pos++;
        char e = p->text[p->pos++];
        switch (e) {
            case '"': buf[n++] = '"'; break;
            case '\\': buf[n++] = '\\'; break;
            case '/': buf[n++] = '/'; break;
            case 'b': buf[n++] = '\b'; break;
            case 'f': buf[n++] = '\f'; break;
            case 'n': buf[n++] = '\n'; break;
            case 'r': buf[n++] = '\r'; break;
            case 't': buf[n++] = '\t'; break;
            case 'u': {
                uint32_t cp;
                if (hex4(p, &cp) != 0) { free(buf); return -1; }
                if (cp >= 0xD800 && cp <= 0xDBFF && p->pos + 6 <= p->len && p->text[p->pos] == '\\' &&
                    p->text[p->pos + 1] == 'u') {
                    size_t save = p->pos;
                    uint32_t lo;
                    p->pos += 2;
                    if (hex4(p, &lo) != 0) { free(buf); return -1; }
                    if (lo >= 0xDC00 && lo <= 0xDFFF) cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    else p->pos = save; // a lone high surrogate followed by another escape
                }
                // lone surrogates become U+FFFD, as Python's json + errors='replace' would see them
                if (cp >= 0xD800 && cp <= 0xDFFF) cp = 0xFFFD;
                n += put_utf8(buf + n, cp);
                break;
            }
            default: free(buf); return fail_at(p, "bad escape in string");
        }
    }
    p->pos = end + 1;
    buf[n] = '\0';
    *out = buf;
    *out_len = n;
    return 0;
}

static int parse_number(Parser *p, JsonValue *out) {
    size_t start = p->pos;
    if (p->pos < p->len && p->text[p->pos] == '-') p->pos++;
    if (p->pos >= p->len || p->text[p->pos] < '0' || p->text[p->pos] > '9') return fail_at(p, "bad number");
    while (p->pos < p->len && strchr("0123456789+-.eE", p->text[p->pos]) != NULL) p->pos++;
    char tmp[64];
    size_t n = p->pos - start;
    if (n >= sizeof(tmp)) return fail_at(p, "number too long");
    memcpy(tmp, p->text + start, n);
    tmp[n] = '\0';
    char *end;
    out->type = JSON_NUMBER;
    out->number = strtod(tmp, &end);
    if (*end != '\0') { p->pos = start; return fail_at(p, "bad number"); }
    return 0;
}

static int match_word(Parser *p, const char *word) {
    size_t n = strlen(word);
    if (p->pos + n > p->len || memcmp(p->text + p->pos, word, n) != 0) return 0;
    p->pos += n;
    return 1;
}

// arrays and objects grow their item arrays by doubling
static int parse_container(Parser *p, JsonValue *out, int depth, int is_object) {
    char close = is_object ? '}' : ']';
    out->type = is_object ? JSON_OBJECT : JSON_ARRAY;
    p->pos++;
    int capacity = 0;
    skip_space(p);
    if (p->pos < p->len && p->text[p->pos] == close) { p->pos++; return 0; }
    for (;;) {
        if (out->count == capacity) {
            capacity = capacity ? 2 * capacity : 4;
            out->items = (JsonValue *)xrealloc(out->items, (size_t)capacity * sizeof(JsonValue));
            if (is_object) out->keys = (char **)xrealloc(out->keys, (size_t)capacity * sizeof(char *));
        }
        JsonValue *item = &out->items[out->count];
        memset(item, 0, sizeof(*item));
        skip_space(p);
        if (is_object) {
            if (p->pos >= p->len || p->text[p->pos] != '"') return fail_at(p, "expected a string key");
            size_t key_len;
            if (parse_string(p, &out->keys[out->count], &key_len) != 0) return -1;
            out->count++; // the key is owned from here on, even if the value fails
            skip_space(p);
            if (p->pos >= p->len || p->text[p->pos] != ':') return fail_at(p, "expected ':'");
            p->pos++;
        } else {
            out->count++;
        }
        if (parse_value(p, item, depth + 1) != 0) return -1;
        skip_space(p);
        if (p->pos < p->len && p->text[p->pos] == ',') { p->pos++; continue; }
        if (p->pos < p->len && p->text[p->pos] == close) { p->pos++; return 0; }
        return fail_at(p, is_object ? "expected ',' or '}'" : "expected ',' or ']'");
    }
}

static int parse_value(Parser *p, JsonValue *out, int depth) {
    if (depth > JSON_MAX_DEPTH) return fail_at(p, "nesting too deep");
    skip_space(p);
    if (p->pos >= p->len) return fail_at(p, "unexpected end of input");
    char c = p->text[p->pos];
    if (c == '{') return parse_container(p, out, depth, 1);
    if (c == '[') return parse_container(p, out, depth, 0);
    if (c == '"') { out->type = JSON_STRING; return parse_string(p, &out->string, &out->string_len); }
    if (c == '-' || (c >= '0' && c <= '9')) return parse_number(p, out);
    if (match_word(p, "true")) { out->type = JSON_BOOL; out->boolean = 1; return 0; }
    if (match_word(p, "false")) { out->type = JSON_BOOL; out->boolean = 0; return 0; }
    if (match_word(p, "null")) { out->type = JSON_NULL; return 0; }
    return fail_at(p, "unexpected character");
}

static void free_contents(JsonValue *v) {
    if (v->type == JSON_STRING) free(v->string);
    if (v->type == JSON_ARRAY || v->type == JSON_OBJECT) {
        for (int i = 0; i < v->count; i++) {
            free_contents(&v->items[i]);
            if (v->type == JSON_OBJECT) free(v->keys[i]);
        }
        free(v->items);
        free(v->keys);
    }
}

JsonValue *json_parse(const char *text, size_t len, char *err, size_t errlen) {
    Parser p = {text, len, 0, err, errlen, 0};
    JsonValue *root = (JsonValue *)xcalloc(1, sizeof(JsonValue));
    if (parse_value(&p, root, 0) == 0) {
        skip_space(&p);
        if (p.pos == p.len) return root;
        fail_at(&p, "trailing characters after the JSON value");
    }
    free_contents(root);
    free(root);
    return NULL;
}

void json_free(JsonValue *value) {
    if (value == NULL) return;
    free_contents(value);
    free(value);
}

const JsonValue *json_get(const JsonValue *obj, const char *key) {
    if (obj == NULL || obj->type != JSON_OBJECT) return NULL;
    for (int i = 0; i < obj->count; i++)
        if (strcmp(obj->keys[i], key) == 0) return &obj->items[i];
    return NULL;
}

const char *json_type_name(JsonType type) {
    switch (type) {
        case JSON_NULL: return "null";
        case JSON_BOOL: return "bool";
        case JSON_NUMBER: return "number";
        case JSON_STRING: return "string";
        case JSON_ARRAY: return "array";
        case JSON_OBJECT: return "object";
    }
    return "?";
}
