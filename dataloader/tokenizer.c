// tokenizer.c: GPT-2 byte-level BPE (see tokenizer.h for what it does and why this way).
#include "tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/json.h"
#include "../common/utils.h"
#include "unicode_classes.h"

enum { CLASS_OTHER = 0, CLASS_LETTER = 1, CLASS_NUMBER = 2, CLASS_SPACE = 3 };
#define UNICODE_CODE_POINTS 0x110000

// ---------------------------------------------------------------------------------------------
// GPT-2's files spell each byte as a printable code point: bytes that are printable Latin-1
// (other than space and soft hyphen) stand for themselves, the other 68 bytes, in byte order,
// for U+0100, U+0101, ... This returns the byte a code point stands for, or -1.

static int gpt2_unicode_to_byte(uint32_t cp) {
    if ((cp >= 33 && cp <= 126) || (cp >= 161 && cp <= 172) || (cp >= 174 && cp <= 255)) return (int)cp;
    if (cp < 256 || cp >= 256 + 68) return -1;
    int n = 0;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
        if (!printable && 256 + n++ == (int)cp) return b;
    }
    return -1;
}

// decodes one UTF-8 sequence of valid text at p; *n gets its length in bytes
static inline uint32_t utf8_decode(const uint8_t *p, int *n) {
    uint8_t c = p[0];
    if (c < 0x80) { *n = 1; return c; }
    if (c < 0xE0) { *n = 2; return ((uint32_t)(c & 0x1F) << 6) | (p[1] & 0x3F); }
    if (c < 0xF0) { *n = 3; return ((uint32_t)(c & 0x0F) << 12) | ((uint32_t)(p[1] & 0x3F) << 6) | (p[2] & 0x3F); }
    *n = 4;
    return ((uint32_t)(c & 0x07) << 18) | ((uint32_t)(p[1] & 0x3F) << 12) | ((uint32_t)(p[2] & 0x3F) << 6) | (p[3] & 0x3F);
}

// a GPT-2-spelled token (UTF-8 of printable code points) to its bytes; -1 if a code point is not one
static int gpt2_spelling_to_bytes(const char *s, size_t len, char *out, size_t *out_len) {
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        int k;
        int b = gpt2_unicode_to_byte(utf8_decode((const uint8_t *)s + i, &k));
        if (b < 0) return -1;
        out[n++] = (char)b;
        i += (size_t)k;
    }
    *out_len = n;
    return 0;
}

// ---------------------------------------------------------------------------------------------
// token bytes -> id: open addressing over a power-of-two table, probed linearly

static inline uint64_t hash_bytes(const uint8_t *p, size_t n) {
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (uint64_t)n;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = (h ^ w) * 0xFF51AFD7ED558CCDull;
        h ^= h >> 32;
        p += 8;
        n -= 8;
    }
    uint64_t w = 0;
    for (size_t i = 0; i < n; i++) w |= (uint64_t)p[i] << (8 * i);
    h = (h ^ w) * 0xC4CEB9FE1A85EC53ull;
    return h ^ (h >> 29);
}

// tokens are short: an inline loop beats a call to memcmp
static inline int bytes_equal(const char *a, const uint8_t *b, size_t n) {
    for (size_t i = 0; i < n; i++)
        if ((uint8_t)a[i] != b[i]) return 0;
    return 1;
}

static inline int vocab_lookup_hashed(const Tokenizer *tok, const uint8_t *p, size_t n, uint64_t hash) {
    if (n > (size_t)tok->max_token_bytes) return -1;
    for (uint64_t slot = hash & tok->table_mask;; slot = (slot + 1) & tok->table_mask) {
        int32_t id = tok->table[slot];
        if (id < 0) return -1;
        int64_t off = tok->token_offset[id];
        if ((size_t)(tok->token_offset[id + 1] - off) == n && bytes_equal(tok->token_bytes + off, p, n)) return id;
    }
}

static inline int vocab_lookup(const Tokenizer *tok, const uint8_t *p, size_t n) {
    return vocab_lookup_hashed(tok, p, n, hash_bytes(p, n));
}

static void vocab_insert(Tokenizer *tok, int id) {
    const uint8_t *p = (const uint8_t *)tok->token_bytes + tok->token_offset[id];
    size_t n = (size_t)(tok->token_offset[id + 1] - tok->token_offset[id]);
    uint64_t slot = hash_bytes(p, n) & tok->table_mask;
    while (tok->table[slot] >= 0) slot = (slot + 1) & tok->table_mask;
    tok->table[slot] = id;
}

// ---------------------------------------------------------------------------------------------
// loading

static int load_encoder(Tokenizer *tok, const char *path, char *err, size_t errlen) {
    size_t size;
    char *text = read_file(path, &size, err, errlen);
    if (text == NULL) return -1;
    char jerr[200];
    JsonValue *root = json_parse(text, size, jerr, sizeof jerr);
    free(text);
    if (root == NULL) return set_error(err, errlen, "%s: %s", path, jerr);
    if (root->type != JSON_OBJECT || root->count != GPT2_VOCAB_SIZE) {
        json_free(root);
        return set_error(err, errlen, "%s: expected an object of %d tokens", path, GPT2_VOCAB_SIZE);
    }
    tok->vocab_size = GPT2_VOCAB_SIZE;
    tok->eot = GPT2_EOT;
    size_t total = 0;
    for (int i = 0; i < root->count; i++) total += strlen(root->keys[i]);
    tok->token_bytes = (char *)xmalloc(total + 1);
    tok->token_offset = (int64_t *)xmalloc((GPT2_VOCAB_SIZE + 1) * sizeof(int64_t));
    // tokens are stored in id order; first collect each id's key
    const char **key_of_id = (const char **)xcalloc(GPT2_VOCAB_SIZE, sizeof(char *));
    for (int i = 0; i < root->count; i++) {
        const JsonValue *v = &root->items[i];
        int id = v->type == JSON_NUMBER ? (int)v->number : -1;
        if (id < 0 || id >= GPT2_VOCAB_SIZE || (double)id != v->number || key_of_id[id] != NULL) {
            set_error(err, errlen, "%s: token \"%s\" has a bad or repeated id", path, root->keys[i]);
            free(key_of_id); json_free(root);
            return -1;
        }
        key_of_id[id] = root->keys[i];
    }
    if (strcmp(key_of_id[GPT2_EOT], "<|endoftext|>") != 0) {
        free(key_of_id); json_free(root);
        return set_error(err, errlen, "%s: id %d is not <|endoftext|>", path, GPT2_EOT);
    }
    int64_t off = 0;
    tok->max_token_bytes = 0;
    for (int id = 0; id < GPT2_VOCAB_SIZE; id++) {
        tok->token_offset[id] = off;
        const char *key = key_of_id[id];
        size_t n;
        if (id == GPT2_EOT) {  // the special token is spelled literally and never produced by BPE
            n = strlen(key);
            memcpy(tok->token_bytes + off, key, n);
        } else if (gpt2_spelling_to_bytes(key, strlen(key), tok->token_bytes + off, &n) != 0) {
            set_error(err, errlen, "%s: token %d \"%s\" is not in GPT-2's byte spelling", path, id, key);
            free(key_of_id); json_free(root);
            return -1;
        }
        if (id != GPT2_EOT && (int)n > tok->max_token_bytes) tok->max_token_bytes = (int)n;
        off += (int64_t)n;
    }
    tok->token_offset[GPT2_VOCAB_SIZE] = off;
    free(key_of_id);
    json_free(root);

    uint64_t table_size = 1;
    while (table_size < 2 * GPT2_VOCAB_SIZE) table_size <<= 1;
    tok->table_mask = table_size - 1;
    tok->table = (int32_t *)xmalloc(table_size * sizeof(int32_t));
    for (uint64_t i = 0; i < table_size; i++) tok->table[i] = -1;
    for (int id = 0; id < GPT2_VOCAB_SIZE; id++) {
        if (id == GPT2_EOT) continue;
        const uint8_t *p = (const uint8_t *)tok->token_bytes + tok->token_offset[id];
        size_t n = (size_t)(tok->token_offset[id + 1] - tok->token_offset[id]);
        if (vocab_lookup(tok, p, n) >= 0) return set_error(err, errlen, "%s: token %d appears twice", path, id);
        vocab_insert(tok, id);
    }
    // ids 0..255 must be the 256 single bytes: every text is then encodable
    for (int b = 0; b < 256; b++) {
        uint8_t byte = (uint8_t)b;
        int id = vocab_lookup(tok, &byte, 1);
        if (id < 0 || id > 255) return set_error(err, errlen, "%s: byte %d is not a token below 256", path, b);
    }
    return 0;
}

// tiktoken derives the ranks from vocab.bpe (byte tokens, then merge n has rank 256+n) and asserts
// they equal encoder.json's ids; we check the same, so a mismatched pair of files is an error.
static int check_merges(const Tokenizer *tok, const char *path, char *err, size_t errlen) {
    size_t size;
    char *text = read_file(path, &size, err, errlen);
    if (text == NULL) return -1;
    int line_no = 0, merges = 0;
    char *buf = (char *)xmalloc(2 * (size_t)tok->max_token_bytes + 16);
    for (char *line = text; line < text + size;) {
        char *eol = memchr(line, '\n', (size_t)(text + size - line));
        if (eol == NULL) eol = text + size;
        line_no++;
        size_t len = (size_t)(eol - line);
        if (len > 0 && line[len - 1] == '\r') len--;
        if (line_no > 1 && len > 0) {
            char *space = memchr(line, ' ', len);
            size_t n1, n2;
            int id = -1;
            if (space != NULL && (size_t)(space - line) <= 4 * (size_t)tok->max_token_bytes &&
                len - (size_t)(space - line) - 1 <= 4 * (size_t)tok->max_token_bytes &&
                gpt2_spelling_to_bytes(line, (size_t)(space - line), buf, &n1) == 0 &&
                gpt2_spelling_to_bytes(space + 1, len - (size_t)(space - line) - 1, buf + n1, &n2) == 0)
                id = vocab_lookup(tok, (const uint8_t *)buf, n1 + n2);
            if (id != 256 + merges) {
                free(buf); free(text);
                return set_error(err, errlen, "%s:%d: merge does not give token %d of encoder.json", path, line_no,
                                 256 + merges);
            }
            merges++;
        }
        line = eol + 1;
    }
    free(buf);
    free(text);
    if (merges != GPT2_VOCAB_SIZE - 257)
        return set_error(err, errlen, "%s: %d merges, expected %d", path, merges, GPT2_VOCAB_SIZE - 257);
    return 0;
}

int tokenizer_init(Tokenizer *tok, const char *gpt2_dir, char *err, size_t errlen) {
    memset(tok, 0, sizeof *tok);
    size_t dir_len = strlen(gpt2_dir);
    char *path = (char *)xmalloc(dir_len + 32);
    snprintf(path, dir_len + 32, "%s/encoder.json", gpt2_dir);
    int rc = load_encoder(tok, path, err, errlen);
    if (rc == 0) {
        snprintf(path, dir_len + 32, "%s/vocab.bpe", gpt2_dir);
        rc = check_merges(tok, path, err, errlen);
    }
    free(path);
    if (rc != 0) { tokenizer_free(tok); return -1; }
    tok->char_class = (uint8_t *)xcalloc(UNICODE_CODE_POINTS, 1);
    for (size_t i = 0; i < sizeof unicode_letter_ranges / sizeof unicode_letter_ranges[0]; i++)
        memset(tok->char_class + unicode_letter_ranges[i][0], CLASS_LETTER,
               unicode_letter_ranges[i][1] - unicode_letter_ranges[i][0] + 1);
    for (size_t i = 0; i < sizeof unicode_number_ranges / sizeof unicode_number_ranges[0]; i++)
        memset(tok->char_class + unicode_number_ranges[i][0], CLASS_NUMBER,
               unicode_number_ranges[i][1] - unicode_number_ranges[i][0] + 1);
    for (size_t i = 0; i < sizeof unicode_space_ranges / sizeof unicode_space_ranges[0]; i++)
        memset(tok->char_class + unicode_space_ranges[i][0], CLASS_SPACE,
               unicode_space_ranges[i][1] - unicode_space_ranges[i][0] + 1);
    return 0;
}

void tokenizer_free(Tokenizer *tok) {
    free(tok->token_bytes);
    free(tok->token_offset);
    free(tok->table);
    free(tok->char_class);
    memset(tok, 0, sizeof *tok);
}

const char *tokenizer_decode(const Tokenizer *tok, int id, size_t *len) {
    if (id < 0 || id >= tok->vocab_size) { *len = 0; return ""; }
    *len = (size_t)(tok->token_offset[id + 1] - tok->token_offset[id]);
    return tok->token_bytes + tok->token_offset[id];
}

void token_list_push(TokenList *list, uint16_t id) {
    if (list->len == list->capacity) {
        list->capacity = list->capacity < 1024 ? 1024 : 2 * list->capacity;
        list->ids = (uint16_t *)xrealloc(list->ids, list->capacity * sizeof(uint16_t));
    }
    list->ids[list->len++] = id;
}

void token_list_free(TokenList *list) {
    free(list->ids);
    memset(list, 0, sizeof *list);
}

void bpe_scratch_free(BpeScratch *scratch) {
    free(scratch->next); free(scratch->prev); free(scratch->pair_rank); free(scratch->heap);
    free(scratch->cache); free(scratch->cache_bytes); free(scratch->cache_ids);
    memset(scratch, 0, sizeof *scratch);
}

// ---------------------------------------------------------------------------------------------
// BPE of one piece. Parts are byte ranges [i, next[i]); pair_rank[i] is the rank of part i joined
// with the part after it (-1: not a token, or no part after it). The heap holds (rank << 32 | i)
// so the minimum is the lowest rank, leftmost on ties, as in tiktoken's scan. An entry is stale
// when pair_rank[i] no longer equals its rank: a pair's byte span only grows, so equal rank means
// the very same pair.

static void heap_push(uint64_t *heap, size_t *n, uint64_t v) {
    size_t i = (*n)++;
    while (i > 0 && heap[(i - 1) / 2] > v) { heap[i] = heap[(i - 1) / 2]; i = (i - 1) / 2; }
    heap[i] = v;
}

static uint64_t heap_pop(uint64_t *heap, size_t *n) {
    uint64_t top = heap[0], last = heap[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && heap[c + 1] < heap[c]) c++;
        if (heap[c] >= last) break;
        heap[i] = heap[c];
        i = c;
    }
    heap[i] = last;
    return top;
}

// The merge of pieces that are not tokens is cached per thread: words repeat, and a hit costs one
// hash probe instead of a merge. The cache is emptied when half full.
static int cache_find(const BpeScratch *s, const uint8_t *p, size_t n, uint64_t hash, TokenList *out) {
    for (uint64_t slot = hash & (BPE_CACHE_SLOTS - 1);; slot = (slot + 1) & (BPE_CACHE_SLOTS - 1)) {
        const BpeCacheEntry *e = &s->cache[slot];
        if (e->nids == 0) return 0;
        if (e->hash == hash && e->len == n && bytes_equal(s->cache_bytes + e->bytes_at, p, n)) {
            for (int i = 0; i < e->nids; i++) token_list_push(out, s->cache_ids[e->ids_at + (uint32_t)i]);
            return 1;
        }
    }
}

static void cache_insert(BpeScratch *s, const uint8_t *p, size_t n, uint64_t hash, const uint16_t *ids, size_t nids) {
    if (s->cache == NULL) {
        s->cache = (BpeCacheEntry *)xcalloc(BPE_CACHE_SLOTS, sizeof(BpeCacheEntry));
        s->cache_bytes = (char *)xmalloc(BPE_CACHE_SLOTS / 2 * BPE_CACHE_MAX_BYTES);
        s->cache_ids = (uint16_t *)xmalloc(BPE_CACHE_SLOTS / 2 * BPE_CACHE_MAX_BYTES * sizeof(uint16_t));
    }
    if (s->cache_used >= BPE_CACHE_SLOTS / 2) {
        memset(s->cache, 0, BPE_CACHE_SLOTS * sizeof(BpeCacheEntry));
        s->cache_used = s->cache_bytes_used = s->cache_ids_used = 0;
    }
    uint64_t slot = hash & (BPE_CACHE_SLOTS - 1);
    while (s->cache[slot].nids != 0) slot = (slot + 1) & (BPE_CACHE_SLOTS - 1);
    BpeCacheEntry *e = &s->cache[slot];
    e->hash = hash;
    e->len = (uint16_t)n;
    e->nids = (uint16_t)nids;
    e->bytes_at = s->cache_bytes_used;
    e->ids_at = s->cache_ids_used;
    memcpy(s->cache_bytes + e->bytes_at, p, n);
    memcpy(s->cache_ids + e->ids_at, ids, nids * sizeof(uint16_t));
    s->cache_bytes_used += (uint32_t)n;
    s->cache_ids_used += (uint32_t)nids;
    s->cache_used++;
}

static void bpe_merge(const Tokenizer *tok, BpeScratch *s, const uint8_t *p, size_t n, TokenList *out);

static void bpe_piece(const Tokenizer *tok, BpeScratch *s, const uint8_t *p, size_t n, TokenList *out) {
    uint64_t hash = hash_bytes(p, n);
    int whole = vocab_lookup_hashed(tok, p, n, hash);
    if (whole >= 0) { token_list_push(out, (uint16_t)whole); return; }
    if (n > BPE_CACHE_MAX_BYTES) { bpe_merge(tok, s, p, n, out); return; }
    if (s->cache != NULL && cache_find(s, p, n, hash, out)) return;
    size_t first = out->len;
    bpe_merge(tok, s, p, n, out);
    cache_insert(s, p, n, hash, out->ids + first, out->len - first);
}

static void bpe_merge(const Tokenizer *tok, BpeScratch *s, const uint8_t *p, size_t n, TokenList *out) {
    if (n > s->capacity) {
        s->capacity = n < 256 ? 256 : 2 * n;
        s->next = (int32_t *)xrealloc(s->next, s->capacity * sizeof(int32_t));
        s->prev = (int32_t *)xrealloc(s->prev, s->capacity * sizeof(int32_t));
        s->pair_rank = (int32_t *)xrealloc(s->pair_rank, s->capacity * sizeof(int32_t));
        // each merge pushes at most two entries, on top of the n - 1 initial pairs
        s->heap = (uint64_t *)xrealloc(s->heap, 3 * s->capacity * sizeof(uint64_t));
    }
    int32_t *next = s->next, *prev = s->prev, *rank = s->pair_rank;
    uint64_t *heap = s->heap;
    size_t heap_n = 0;
    int32_t len = (int32_t)n;
    for (int32_t i = 0; i < len; i++) {
        next[i] = i + 1;
        prev[i] = i - 1;
        rank[i] = i + 1 < len ? vocab_lookup(tok, p + i, 2) : -1;
        if (rank[i] >= 0) heap_push(heap, &heap_n, ((uint64_t)rank[i] << 32) | (uint32_t)i);
    }
    while (heap_n > 0) {
        uint64_t top = heap_pop(heap, &heap_n);
        int32_t i = (int32_t)(top & 0xFFFFFFFFu);
        if (rank[i] != (int32_t)(top >> 32)) continue;
        int32_t j = next[i];           // the right part, merged into part i
        int32_t k = next[j];           // where the merged part ends
        next[i] = k;
        rank[j] = -1;
        if (k < len) prev[k] = i;
        rank[i] = k < len ? vocab_lookup(tok, p + i, (size_t)(next[k] - i)) : -1;
        if (rank[i] >= 0) heap_push(heap, &heap_n, ((uint64_t)rank[i] << 32) | (uint32_t)i);
        int32_t h = prev[i];
        if (h >= 0) {
            rank[h] = vocab_lookup(tok, p + h, (size_t)(k - h));
            if (rank[h] >= 0) heap_push(heap, &heap_n, ((uint64_t)rank[h] << 32) | (uint32_t)h);
        }
    }
    for (int32_t i = 0; i < len; i = next[i]) token_list_push(out, (uint16_t)vocab_lookup(tok, p + i, (size_t)(next[i] - i)));
}

// ---------------------------------------------------------------------------------------------
// pre-tokenisation: the end of the pattern's match at pos (text is valid UTF-8, pos < len)

static inline int class_at(const Tokenizer *tok, const uint8_t *t, size_t pos, int *nbytes) {
    if (t[pos] < 0x80) { *nbytes = 1; return tok->char_class[t[pos]]; }
    return tok->char_class[utf8_decode(t + pos, nbytes)];
}

static size_t class_run_end(const Tokenizer *tok, const uint8_t *t, size_t len, size_t pos, int cls) {
    while (pos < len) {
        int n;
        if (class_at(tok, t, pos, &n) != cls) break;
        pos += (size_t)n;
    }
    return pos;
}

static size_t match_end(const Tokenizer *tok, const uint8_t *t, size_t len, size_t pos) {
    // 's|'t|'re|'ve|'m|'ll|'d
    if (t[pos] == '\'' && pos + 1 < len) {
        uint8_t c = t[pos + 1];
        if (c == 's' || c == 't' || c == 'm' || c == 'd') return pos + 2;
        if (pos + 2 < len) {
            uint8_t c2 = t[pos + 2];
            if ((c == 'r' && c2 == 'e') || (c == 'v' && c2 == 'e') || (c == 'l' && c2 == 'l')) return pos + 3;
        }
    }
    // ' ?\p{L}+', ' ?\p{N}+', ' ?[^\s\p{L}\p{N}]+': the classes are disjoint, so at most one matches;
    // the optional space is taken exactly when a character of that class follows it
    size_t q = (t[pos] == ' ' && pos + 1 < len) ? pos + 1 : pos;
    int n;
    int cls = class_at(tok, t, q, &n);
    if (cls != CLASS_SPACE) return class_run_end(tok, t, len, q + (size_t)n, cls);
    // '\s+(?!\S)' then '\s+': the whitespace run, less its last character when a non-space follows
    // and the run is longer than one character (the lookahead backs off one character)
    size_t last = pos, end = pos;
    int chars = 0;
    while (end < len && class_at(tok, t, end, &n) == CLASS_SPACE) {
        last = end;
        end += (size_t)n;
        chars++;
    }
    if (end < len && chars >= 2) return last;
    return end;
}

void tokenizer_encode(const Tokenizer *tok, BpeScratch *scratch, const char *text, size_t len, size_t stop,
                      TokenList *out) {
    const uint8_t *t = (const uint8_t *)text;
    for (size_t pos = 0; pos < stop;) {
        size_t end = match_end(tok, t, len, pos);
        bpe_piece(tok, scratch, t + pos, end - pos, out);
        pos = end;
    }
}

// ---------------------------------------------------------------------------------------------
// UTF-8 validation: the length of the well-formed sequence at p, or 0 if ill-formed; *bad_len then
// gets the length of its maximal ill-formed subpart (the lead byte and the continuation bytes that
// could still have begun a valid sequence), which becomes one U+FFFD.

static size_t utf8_sequence(const uint8_t *p, size_t avail, size_t *bad_len) {
    uint8_t c = p[0];
    size_t need;
    uint8_t lo = 0x80, hi = 0xBF;  // the range of the second byte
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) need = 2;
    else if (c >= 0xE0 && c <= 0xEF) { need = 3; if (c == 0xE0) lo = 0xA0; if (c == 0xED) hi = 0x9F; }
    else if (c >= 0xF0 && c <= 0xF4) { need = 4; if (c == 0xF0) lo = 0x90; if (c == 0xF4) hi = 0x8F; }
    else { *bad_len = 1; return 0; }
    size_t i = 1;
    for (; i < need && i < avail; i++) {
        uint8_t lo_i = i == 1 ? lo : 0x80, hi_i = i == 1 ? hi : 0xBF;
        if (p[i] < lo_i || p[i] > hi_i) break;
    }
    if (i == need) return need;
    *bad_len = i;
    return 0;
}

size_t utf8_sanitize(const char *text, size_t len, char **fixed, size_t *fixed_len) {
    const uint8_t *t = (const uint8_t *)text;
    size_t pos = 0, bad;
    // fast path: text is usually valid; ASCII is skipped eight bytes at a time
    while (pos < len) {
        if (pos + 8 <= len) {
            uint64_t w;
            memcpy(&w, t + pos, 8);
            if ((w & 0x8080808080808080ull) == 0) { pos += 8; continue; }
        }
        size_t n = utf8_sequence(t + pos, len - pos, &bad);
        if (n == 0) break;
        pos += n;
    }
    *fixed = NULL;
    *fixed_len = len;
    if (pos == len) return 0;
    // at most one 3-byte U+FFFD per input byte
    char *out = (char *)xmalloc(3 * len + 1);
    memcpy(out, text, pos);
    size_t out_len = pos, count = 0;
    while (pos < len) {
        size_t n = utf8_sequence(t + pos, len - pos, &bad);
        if (n > 0) {
            memcpy(out + out_len, t + pos, n);
            out_len += n;
            pos += n;
        } else {
            memcpy(out + out_len, "\xEF\xBF\xBD", 3);
            out_len += 3;
            pos += bad;
            count++;
        }
    }
    *fixed = out;
    *fixed_len = out_len;
    return count;
}
