// json.h: a small DOM JSON parser (RFC 8259) for model configs, safetensors headers and JSONL.
// Strings are unescaped to UTF-8 (\uXXXX surrogate pairs included) and may contain NUL bytes
// (string_len is authoritative). Numbers are doubles. Objects keep key order and duplicates.
#ifndef MDN_JSON_H
#define MDN_JSON_H

#include <stddef.h>

typedef enum { JSON_NULL, JSON_BOOL, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT } JsonType;

typedef struct JsonValue {
    JsonType type;
    int boolean;              // JSON_BOOL
    double number;            // JSON_NUMBER
    char *string;             // JSON_STRING (NUL-terminated, string_len bytes before the NUL)
    size_t string_len;
    int count;                // JSON_ARRAY, JSON_OBJECT: number of items
    struct JsonValue *items;  // the values
    char **keys;              // JSON_OBJECT: the keys (NUL-terminated UTF-8)
} JsonValue;

// parse exactly one JSON value (surrounding whitespace allowed). NULL on error, with err set to
// "offset N: what went wrong". Nesting deeper than 64 levels is an error.
JsonValue *json_parse(const char *text, size_t len, char *err, size_t errlen);
void json_free(JsonValue *value);

// object lookup (the first key that matches); NULL if absent or if obj is not an object.
const JsonValue *json_get(const JsonValue *obj, const char *key);
const char *json_type_name(JsonType type);

#endif // MDN_JSON_H
