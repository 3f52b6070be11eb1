// tokenizer.h: the GPT-2 byte-level BPE, giving exactly the ids of tiktoken's `gpt2` encoding.
//
// Encoding is two steps, both as tiktoken does them:
//   1. Pre-tokenisation splits the text into pieces by GPT-2's pattern
//        's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//      (leftmost alternative first, case-sensitive contractions). It is matched by hand over
//      Unicode classes (dataloader/unicode_classes.h, generated from the Unicode version tiktoken's
//      regex engine uses), not by a regex library: the pattern is fixed, the hand matcher has no
//      dependency and is several times faster than a general engine.
//   2. Each piece that is not itself a token is split into bytes and the adjacent pair whose
//      concatenation has the lowest rank (= token id) is merged, leftmost first, until no pair is a
//      token. A heap keeps this O(n log n) in the piece length (tiktoken's loop is O(n^2)).
// The ranks come from dataloader/gpt2/encoder.json, checked against vocab.bpe's merge order.
// Text must be valid UTF-8: utf8_sanitize() first replaces ill-formed sequences by U+FFFD the way
// Python's bytes.decode("utf-8", "replace") does, so ids match tiktoken on the decoded string.
#ifndef MDN_TOKENIZER_H
#define MDN_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#define GPT2_VOCAB_SIZE 50257
#define GPT2_EOT 50256  // <|endoftext|>

typedef struct {
    int vocab_size;
    int eot;
    int max_token_bytes;        // the longest token, in bytes
    char *token_bytes;          // every token's bytes back to back
    int64_t *token_offset;      // [vocab_size + 1]: token i is token_bytes[offset[i] .. offset[i+1])
    int32_t *table;             // open-addressing hash table: token id or -1
    uint64_t table_mask;
    uint8_t *char_class;        // [0x110000]: the pattern's class of each code point
} Tokenizer;

#define BPE_CACHE_SLOTS (1 << 16)
#define BPE_CACHE_MAX_BYTES 32  // longer pieces are merged every time

typedef struct {
    uint64_t hash;
    uint32_t bytes_at, ids_at;  // into cache_bytes, cache_ids
    uint16_t len, nids;         // nids == 0: an empty slot
} BpeCacheEntry;

// Per-thread working memory of the BPE merge (grows to the longest piece seen) and the cache of
// merged pieces; zero-initialise, free with bpe_scratch_free.
typedef struct {
    int32_t *next, *prev, *pair_rank;
    uint64_t *heap;
    size_t capacity;
    BpeCacheEntry *cache;
    char *cache_bytes;
    uint16_t *cache_ids;
    uint32_t cache_used, cache_bytes_used, cache_ids_used;
} BpeScratch;

// a growable list of token ids; zero-initialise
typedef struct {
    uint16_t *ids;
    size_t len, capacity;
} TokenList;

// Loads GPT2_DIR/encoder.json and GPT2_DIR/vocab.bpe; -1 with err naming the file on any problem.
int tokenizer_init(Tokenizer *tok, const char *gpt2_dir, char *err, size_t errlen);
void tokenizer_free(Tokenizer *tok);

// Appends the ids of text[0..len) to out. Only pieces that start before `stop` are encoded; the
// bytes from stop to len are context the pattern may look at (its `(?!\S)`), which lets a caller
// split one long document at a line start and encode the parts independently (see mdn_tokenize.c).
// Pass stop = len to encode all of it. text must be valid UTF-8.
void tokenizer_encode(const Tokenizer *tok, BpeScratch *scratch, const char *text, size_t len, size_t stop,
                      TokenList *out);
// the bytes of token id (not NUL-terminated); *len gets their count
const char *tokenizer_decode(const Tokenizer *tok, int id, size_t *len);

void token_list_push(TokenList *list, uint16_t id);
void token_list_free(TokenList *list);
void bpe_scratch_free(BpeScratch *scratch);

// Returns the number of ill-formed UTF-8 sequences in text[0..len). If there are any, *fixed gets a
// malloc'd copy with each replaced by U+FFFD (one per maximal ill-formed subpart, as Python and the
// Unicode standard's recommended practice do) and *fixed_len its length; otherwise *fixed is NULL.
size_t utf8_sanitize(const char *text, size_t len, char **fixed, size_t *fixed_len);

#endif // MDN_TOKENIZER_H
