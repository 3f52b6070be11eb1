// test_safetensors.c: round trip of the writer/reader, and every malformed-file error (each must be
// reported naming the file, never read out of bounds; run under valgrind/ASan to be sure).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/json.h"
#include "../common/safetensors.h"
#include "../common/utils.h"

static int failures = 0;
#define EXPECT(cond, ...) do { if (!(cond)) { failures++; printf("FAIL %s:%d: ", __FILE__, __LINE__); printf(__VA_ARGS__); printf("\n"); } } while (0)

static char dir[256];

#define EXACT_LEN UINT64_MAX

// writes an 8-byte length (EXACT_LEN: the header's true length; anything else: a lie), the header
// text, then `data_len` bytes of data
static void write_raw(const char *path, uint64_t claimed_len, const char *header, size_t data_len) {
    FILE *f = xfopen(path, "wb");
    if (claimed_len == EXACT_LEN) claimed_len = strlen(header);
    unsigned char len_bytes[8];
    for (int i = 0; i < 8; i++) len_bytes[i] = (unsigned char)((claimed_len >> (8 * i)) & 0xFF);
    fwrite(len_bytes, 1, 8, f);
    fwrite(header, 1, strlen(header), f);
    for (size_t i = 0; i < data_len; i++) fputc((int)(i & 0xFF), f);
    fclose(f);
}

// expects st_read to fail with a message that names the file and contains `fragment`
static void expect_error(const char *label, const char *header, uint64_t claimed_len, size_t data_len, const char *fragment) {
    char path[512], err[512] = "";
    snprintf(path, sizeof(path), "%s/%s.safetensors", dir, label);
    write_raw(path, claimed_len, header, data_len);
    SafeTensors st;
    int rc = st_read(&st, path, err, sizeof(err));
    EXPECT(rc != 0, "%s: malformed file was accepted", label);
    EXPECT(strstr(err, path) != NULL, "%s: error does not name the file: %s", label, err);
    EXPECT(strstr(err, fragment) != NULL, "%s: error '%s' lacks '%s'", label, err, fragment);
    if (rc == 0) st_free(&st);
    printf("  %-22s -> %s\n", label, err);
}

static void test_malformed(void) {
    const char *good = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]}}";
    {
        char path[512], err[512] = "";
        snprintf(path, sizeof(path), "%s/short_file.safetensors", dir);
        FILE *f = xfopen(path, "wb");
        fwrite("\x03\x00\x00", 1, 3, f);
        fclose(f);
        SafeTensors st;
        EXPECT(st_read(&st, path, err, sizeof(err)) != 0 && strstr(err, "too short") && strstr(err, path), "short file: %s", err);
    }
    // the length field larger than the file
    expect_error("bad_length", good, 1u << 20, 16, "header length");
    expect_error("huge_length", good, 0xFFFFFFFFFFFFull, 16, "header length");
    expect_error("not_json", "{\"a\":", EXACT_LEN, 0, "not a JSON object");
    expect_error("not_object", "[1,2]", EXACT_LEN, 0, "not a JSON object");
    expect_error("unknown_dtype", "{\"a\":{\"dtype\":\"F8\",\"shape\":[2],\"data_offsets\":[0,2]}}", EXACT_LEN, 2, "unknown dtype");
    expect_error("shape_mismatch", "{\"a\":{\"dtype\":\"F32\",\"shape\":[3,2],\"data_offsets\":[0,16]}}", EXACT_LEN, 16, "needs 24 bytes");
    expect_error("outside", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[8,24]}}", EXACT_LEN, 16, "outside the data");
    expect_error("truncated", good, EXACT_LEN, 10, "outside the data");
    expect_error("overlap",
                 "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                 EXACT_LEN, 12, "overlap");
    expect_error("negative_offset", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", EXACT_LEN, 4, "bad data_offsets");
    expect_error("missing_offsets", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", EXACT_LEN, 4, "data_offsets");
    expect_error("duplicate", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}",
                 EXACT_LEN, 2, "twice");

    char err[256] = "";
    SafeTensors st;
    char path[512];
    snprintf(path, sizeof(path), "%s/does_not_exist.safetensors", dir);
    EXPECT(st_read(&st, path, err, sizeof(err)) != 0 && strstr(err, "cannot open") != NULL, "missing file: %s", err);
}

static void test_round_trip(void) {
    float a[6] = {1.5f, -2.0f, 3.25f, 1e-30f, -0.0f, 7.0f};
    double b[3] = {1.0 / 3.0, -1e300, 2.5};
    int32_t c[4] = {-100, 0, 50256, 7};
    uint16_t d[2] = {float_to_bf16(1.5f), float_to_bf16(-3.0f)};
    int64_t shape_a[2] = {2, 3}, shape_b[1] = {3}, shape_c[2] = {2, 2}, shape_d[1] = {2};
    StWriter w;
    st_writer_init(&w);
    st_writer_add(&w, "model.layers.0.attn.q_proj.weight", ST_F32, 2, shape_a, a);
    st_writer_add(&w, "b \"quoted\\\"", ST_F64, 1, shape_b, b);
    st_writer_add(&w, "ids", ST_I32, 2, shape_c, c);
    st_writer_add(&w, "half", ST_BF16, 1, shape_d, d);
    st_writer_add_metadata(&w, "step", "42");
    st_writer_add_metadata(&w, "config", "{\"hidden_size\": 128,\n \"x\": \"y\"}");
    char path[512], err[256] = "";
    snprintf(path, sizeof(path), "%s/round_trip.safetensors", dir);
    EXPECT(st_writer_save(&w, path, err, sizeof(err)) == 0, "save failed: %s", err);
    st_writer_free(&w);
    char tmp[600];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    EXPECT(access(tmp, F_OK) != 0, "temporary file left behind");

    SafeTensors st;
    EXPECT(st_read(&st, path, err, sizeof(err)) == 0, "read failed: %s", err);
    EXPECT(st.count == 4, "count %d", st.count);
    float a2[6];
    EXPECT(st_get_f32(&st, "model.layers.0.attn.q_proj.weight", 2, shape_a, a2, err, sizeof(err)) == 0, "%s", err);
    EXPECT(memcmp(a, a2, sizeof(a)) == 0, "f32 data differs");
    double b2[3];
    EXPECT(st_get_f64(&st, "b \"quoted\\\"", 1, shape_b, b2, err, sizeof(err)) == 0, "%s", err);
    EXPECT(memcmp(b, b2, sizeof(b)) == 0, "f64 data differs");
    int32_t c2[4];
    EXPECT(st_get_i32(&st, "ids", 2, shape_c, c2, err, sizeof(err)) == 0 && memcmp(c, c2, sizeof(c)) == 0, "i32 differs %s", err);
    float d2[2];
    EXPECT(st_get_f32(&st, "half", 1, shape_d, d2, err, sizeof(err)) == 0 && d2[0] == 1.5f && d2[1] == -3.0f, "bf16 differs %s", err);
    EXPECT(st_metadata(&st, "step") && strcmp(st_metadata(&st, "step"), "42") == 0, "metadata step");
    EXPECT(st_metadata(&st, "config") && strstr(st_metadata(&st, "config"), "\"x\": \"y\"") != NULL, "metadata config");
    EXPECT(st_metadata(&st, "absent") == NULL, "absent metadata");
    // wrong shape and missing tensor are errors that name file and tensor
    int64_t wrong[2] = {3, 2};
    EXPECT(st_get_f32(&st, "model.layers.0.attn.q_proj.weight", 2, wrong, a2, err, sizeof(err)) != 0 &&
           strstr(err, "expected [3, 2]") && strstr(err, path), "wrong shape: %s", err);
    EXPECT(st_get_f32(&st, "nope", 1, shape_b, a2, err, sizeof(err)) != 0 && strstr(err, "nope is missing"), "missing: %s", err);
    EXPECT(st_get_f32(&st, "ids", 2, shape_c, a2, err, sizeof(err)) != 0 && strstr(err, "float type"), "int as float: %s", err);
    EXPECT((size_t)(st.data - st.file) % 8 == 0, "data section not 8-byte aligned");
    st_free(&st);

    // an unwritable destination fails cleanly and leaves nothing behind
    st_writer_init(&w);
    st_writer_add(&w, "a", ST_F32, 2, shape_a, a);
    snprintf(path, sizeof(path), "%s/no_such_dir/x.safetensors", dir);
    EXPECT(st_writer_save(&w, path, err, sizeof(err)) != 0 && strstr(err, "cannot create"), "unwritable: %s", err);
    st_writer_free(&w);
}

static void test_bf16(void) {
    EXPECT(float_to_bf16(1.0f) == 0x3F80, "bf16(1)");
    EXPECT(bf16_to_float(float_to_bf16(3.140625f)) == 3.140625f, "exact bf16 value");
    // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: rounds to even (1.0)
    EXPECT(bf16_to_float(float_to_bf16(1.00390625f)) == 1.0f, "round half to even");
    EXPECT(f16_to_float(0x3C00) == 1.0f && f16_to_float(0xC000) == -2.0f && f16_to_float(0x0001) == ldexpf(1.0f, -24), "f16");
}

static void test_json(void) {
    char err[128];
    const char *text = "{\"a\": [1, -2.5e3, true, false, null], \"s\": \"x\\u00e9\\ud83d\\ude00\\n\\\"\", \"o\": {\"k\": {}}}";
    JsonValue *v = json_parse(text, strlen(text), err, sizeof(err));
    EXPECT(v != NULL, "json parse: %s", err);
    if (v) {
        const JsonValue *a = json_get(v, "a");
        EXPECT(a && a->type == JSON_ARRAY && a->count == 5 && a->items[1].number == -2500.0 && a->items[2].boolean == 1 &&
               a->items[4].type == JSON_NULL, "json array");
        const JsonValue *s = json_get(v, "s");
        EXPECT(s && strcmp(s->string, "x\xc3\xa9\xf0\x9f\x98\x80\n\"") == 0, "json unicode escapes");
        EXPECT(json_get(json_get(v, "o"), "k") != NULL && json_get(v, "missing") == NULL, "json nested");
        json_free(v);
    }
    const char *bad[] = {"", "{", "{\"a\" 1}", "[1,]", "{\"a\":1} x", "\"abc", "[01x]", "tru", "{\"a\":\"\\q\"}", "[\"\\u12\"]"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        JsonValue *b = json_parse(bad[i], strlen(bad[i]), err, sizeof(err));
        EXPECT(b == NULL, "json accepted malformed input '%s'", bad[i]);
        json_free(b);
    }
    char deep[200];
    memset(deep, '[', sizeof(deep));
    JsonValue *d = json_parse(deep, sizeof(deep), err, sizeof(err));
    EXPECT(d == NULL && strstr(err, "deep"), "deep nesting: %s", err);
}

int main(void) {
    snprintf(dir, sizeof(dir), "/tmp/mdn_test_safetensors_%d", (int)getpid());
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "mkdir -p %s", dir);
    if (system(cmd) != 0) die("%s: cannot create test directory", dir);
    test_json();
    test_bf16();
    test_round_trip();
    test_malformed();
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", dir);
    printf("%s: %d failures\n", failures ? "FAIL" : "OK", failures);
    return failures ? 1 : 0;
}
