// mdn_tokenize: text files or JSONL ({"text": ...} a line, as SlimPajama ships) -> llm.c token
// shards with the GPT-2 BPE (dataloader/tokenizer.h), an end-of-text token before each document.
//
// Pipeline: the main thread reads the inputs (zlib reads .gz and plain files alike) and cuts them
// into chunks of about 1 MiB: JSONL at line ends, a plain-text document at a line start (a '\n'
// followed by a printable ASCII character, where the pattern always has a piece boundary; the chunk
// keeps that one character as look-ahead). Worker threads tokenize chunks; one writer thread takes
// the results in input order and appends them to the shards. The output is therefore the same
// whatever the number of threads.
//
// Validation split: the first F (--val-fraction) of the input, measured in bytes on disk, goes to
// the val shards, cut at the first chunk boundary after that point (within .gz files the point is
// interpolated between read positions). F=0: everything is train; F=1: everything is val.
// Shards: OUT/NAME_val_000000.bin, OUT/NAME_train_000000.bin, ... each of --shard-size tokens (the
// last one shorter), written to a .tmp file and renamed when complete.
// Bad input (a line that is not JSON, no "text" string, invalid UTF-8, an unreadable .gz) is
// counted, the first few are named on stderr, and tokenizing goes on; invalid UTF-8 is replaced by
// U+FFFD as Python's decode(errors="replace") would.
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "common/json.h"
#include "common/utils.h"
#include "dataloader/dataloader.h"
#include "dataloader/tokenizer.h"

#define CHUNK_BYTES (1 << 20)
#define READ_BYTES (1 << 20)
#define MAX_BAD_PER_JOB 4
#define MAX_BAD_REPORTED 10

enum { BAD_JSON, BAD_NO_TEXT };

typedef struct {
    // filled by the reader
    char *data;
    size_t len;
    size_t stop;            // text: encode the pieces that start before stop (the rest is look-ahead)
    int jsonl;
    int doc_start;          // text: this chunk starts a document, so it begins with EOT
    int is_val;
    int file_index;
    int64_t disk_done;      // input bytes (on disk, all files) read when this chunk was cut
    // filled by a worker
    TokenList tokens;
    int64_t docs, lines, bad_json, no_text, bad_utf8;
    int num_bad;
    int64_t bad_line[MAX_BAD_PER_JOB];  // line number within the chunk, from 1
    int bad_kind[MAX_BAD_PER_JOB];
    int done;
} Job;

typedef struct {
    const char *dir, *name, *split;
    int64_t shard_size;
    int index;              // of the shard being written
    int64_t count;          // tokens in it so far
    int64_t total;
    FILE *f;
    char path[4096], tmp_path[4200];
} ShardWriter;

typedef struct {
    // settings
    const char **files;
    int num_files;
    int64_t total_disk;     // -1: unknown (stdin)
    const Tokenizer *tok;
    ShardWriter train, val;
    // the ring of jobs between reader, workers and writer
    Job *slots;
    int64_t num_slots, filled, taken, written;
    int reader_done;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    // totals (writer thread only)
    int64_t docs, bad_json, no_text, bad_utf8, bad_reported;
    int64_t file_lines;     // lines of the current file before the job being written
    int64_t disk_done;      // input bytes on disk behind the jobs written
    int file_index;
    double start, last_progress;
    int progress_tty;
    int64_t bad_files;      // reader thread only
} Run;

// ---------------------------------------------------------------------------------------------
// shards

static void shard_close(ShardWriter *w) {
    if (w->f == NULL) return;
    int32_t header[SHARD_HEADER_INTS] = {0};
    header[0] = SHARD_MAGIC;
    header[1] = SHARD_VERSION;
    header[2] = (int32_t)w->count;
    if (fseek(w->f, 0, SEEK_SET) != 0 || fwrite(header, sizeof header, 1, w->f) != 1 || fclose(w->f) != 0)
        die("%s: write failed (%s)", w->tmp_path, strerror(errno));
    if (rename(w->tmp_path, w->path) != 0) die("%s: cannot rename to %s (%s)", w->tmp_path, w->path, strerror(errno));
    w->f = NULL;
    w->index++;
    w->count = 0;
}

static void shard_append(ShardWriter *w, const uint16_t *ids, int64_t n) {
    while (n > 0) {
        if (w->f == NULL) {
            snprintf(w->path, sizeof w->path, "%s/%s_%s_%06d.bin", w->dir, w->name, w->split, w->index);
            snprintf(w->tmp_path, sizeof w->tmp_path, "%s.tmp", w->path);
            w->f = fopen(w->tmp_path, "wb");
            if (w->f == NULL) die("%s: cannot create (%s)", w->tmp_path, strerror(errno));
            int32_t header[SHARD_HEADER_INTS] = {0};  // rewritten with the count at close
            if (fwrite(header, sizeof header, 1, w->f) != 1) die("%s: write failed (%s)", w->tmp_path, strerror(errno));
        }
        int64_t k = w->shard_size - w->count < n ? w->shard_size - w->count : n;
        if (fwrite(ids, sizeof(uint16_t), (size_t)k, w->f) != (size_t)k)
            die("%s: write failed (%s)", w->tmp_path, strerror(errno));
        w->count += k;
        w->total += k;
        ids += k;
        n -= k;
        if (w->count == w->shard_size) shard_close(w);
    }
}

// ---------------------------------------------------------------------------------------------
// workers

static void encode_text(const Tokenizer *tok, BpeScratch *scratch, const char *text, size_t len, size_t stop, Job *job) {
    char *fixed;
    size_t fixed_len;
    size_t bad = utf8_sanitize(text, len, &fixed, &fixed_len);
    if (bad > 0) {
        job->bad_utf8 += (int64_t)bad;
        // the look-ahead after stop is ASCII, so it is unchanged at the end of the fixed copy
        stop = fixed_len - (len - stop);
        text = fixed;
        len = fixed_len;
    }
    tokenizer_encode(tok, scratch, text, len, stop, &job->tokens);
    free(fixed);
}

static void note_bad(Job *job, int64_t line, int kind) {
    if (job->num_bad < MAX_BAD_PER_JOB) {
        job->bad_line[job->num_bad] = line;
        job->bad_kind[job->num_bad++] = kind;
    }
}

static void process_job(const Tokenizer *tok, BpeScratch *scratch, Job *job) {
    if (!job->jsonl) {
        if (job->doc_start) {
            token_list_push(&job->tokens, (uint16_t)tok->eot);
            job->docs++;
        }
        encode_text(tok, scratch, job->data, job->len, job->stop, job);
        return;
    }
    for (size_t pos = 0; pos < job->len;) {
        const char *line = job->data + pos;
        const char *eol = memchr(line, '\n', job->len - pos);
        size_t n = eol != NULL ? (size_t)(eol - line) : job->len - pos;
        pos += n + 1;
        job->lines++;
        size_t i = 0;
        while (i < n && (line[i] == ' ' || line[i] == '\t' || line[i] == '\r')) i++;
        if (i == n) continue;  // blank lines are not documents
        char err[200];
        JsonValue *root = json_parse(line, n, err, sizeof err);
        if (root == NULL) {
            job->bad_json++;
            note_bad(job, job->lines, BAD_JSON);
            continue;
        }
        const JsonValue *text = json_get(root, "text");
        if (text == NULL || text->type != JSON_STRING) {
            job->no_text++;
            note_bad(job, job->lines, BAD_NO_TEXT);
        } else {
            token_list_push(&job->tokens, (uint16_t)tok->eot);
            job->docs++;
            encode_text(tok, scratch, text->string, text->string_len, text->string_len, job);
        }
        json_free(root);
    }
}

static void *worker_main(void *arg) {
    Run *run = (Run *)arg;
    BpeScratch scratch = {0};
    for (;;) {
        pthread_mutex_lock(&run->mu);
        while (run->taken == run->filled && !run->reader_done) pthread_cond_wait(&run->cv, &run->mu);
        if (run->taken == run->filled) { pthread_mutex_unlock(&run->mu); break; }
        Job *job = &run->slots[run->taken++ % run->num_slots];
        pthread_mutex_unlock(&run->mu);
        process_job(run->tok, &scratch, job);
        pthread_mutex_lock(&run->mu);
        job->done = 1;
        pthread_cond_broadcast(&run->cv);
        pthread_mutex_unlock(&run->mu);
    }
    bpe_scratch_free(&scratch);
    return NULL;
}

// ---------------------------------------------------------------------------------------------
// writer

static void print_progress(Run *run, int64_t disk_done, int final) {
    double now = wall_seconds();
    if (!final && now - run->last_progress < (run->progress_tty ? 1.0 : 30.0)) return;
    run->last_progress = now;
    double elapsed = now - run->start, mb = (double)disk_done / 1e6;
    double rate = elapsed > 0 ? mb / elapsed : 0;
    char eta[64] = "";
    if (run->total_disk > 0 && rate > 0 && !final) {
        int s = (int)(((double)run->total_disk / 1e6 - mb) / rate);
        snprintf(eta, sizeof eta, "  ETA %dh%02dm%02ds", s / 3600, s / 60 % 60, s % 60);
    }
    char total[64] = "";
    if (run->total_disk > 0) snprintf(total, sizeof total, " / %.1f MB (%.0f%%)", (double)run->total_disk / 1e6,
                                      100.0 * (double)disk_done / (double)run->total_disk);
    fprintf(stderr, "%s%.1f MB%s  %.1f MB/s  %lld tokens%s%s", run->progress_tty ? "\r" : "", mb, total, rate,
            (long long)(run->train.total + run->val.total), eta, run->progress_tty && !final ? "   " : "\n");
    fflush(stderr);
}

static void write_job(Run *run, Job *job) {
    if (job->file_index != run->file_index) {
        run->file_index = job->file_index;
        run->file_lines = 0;
    }
    for (int i = 0; i < job->num_bad && run->bad_reported < MAX_BAD_REPORTED; i++, run->bad_reported++)
        fprintf(stderr, "%swarning: %s:%lld: %s (skipped)\n", run->progress_tty ? "\n" : "", run->files[job->file_index],
                (long long)(run->file_lines + job->bad_line[i]),
                job->bad_kind[i] == BAD_JSON ? "not a JSON line" : "no \"text\" string");
    run->file_lines += job->lines;
    shard_append(job->is_val ? &run->val : &run->train, job->tokens.ids, (int64_t)job->tokens.len);
    run->docs += job->docs;
    run->bad_json += job->bad_json;
    run->no_text += job->no_text;
    run->bad_utf8 += job->bad_utf8;
    run->disk_done = job->disk_done;
    print_progress(run, job->disk_done, 0);
}

static void *writer_main(void *arg) {
    Run *run = (Run *)arg;
    for (int64_t seq = 0;; seq++) {
        pthread_mutex_lock(&run->mu);
        Job *job = &run->slots[seq % run->num_slots];
        while (!(seq < run->filled && job->done) && !(run->reader_done && seq == run->filled))
            pthread_cond_wait(&run->cv, &run->mu);
        int finished = run->reader_done && seq == run->filled;
        pthread_mutex_unlock(&run->mu);
        if (finished) break;
        write_job(run, job);
        free(job->data);
        token_list_free(&job->tokens);
        pthread_mutex_lock(&run->mu);
        memset(job, 0, sizeof *job);
        run->written++;
        pthread_cond_broadcast(&run->cv);
        pthread_mutex_unlock(&run->mu);
    }
    return NULL;
}

// ---------------------------------------------------------------------------------------------
// reader

static void submit_job(Run *run, const char *data, size_t len, size_t stop, int jsonl, int doc_start, int is_val,
                       int file_index, int64_t disk_done) {
    pthread_mutex_lock(&run->mu);
    while (run->filled - run->written >= run->num_slots) pthread_cond_wait(&run->cv, &run->mu);
    Job *job = &run->slots[run->filled % run->num_slots];
    pthread_mutex_unlock(&run->mu);
    memset(job, 0, sizeof *job);
    job->data = (char *)xmalloc(len + 1);
    memcpy(job->data, data, len);
    job->len = len;
    job->stop = stop;
    job->jsonl = jsonl;
    job->doc_start = doc_start;
    job->is_val = is_val;
    job->file_index = file_index;
    job->disk_done = disk_done;
    pthread_mutex_lock(&run->mu);
    run->filled++;
    pthread_cond_broadcast(&run->cv);
    pthread_mutex_unlock(&run->mu);
}

// The first chunk boundary at or after `from`: JSONL after a '\n'; text after a '\n' that is followed
// by printable ASCII (then a new piece begins there, and the character is the chunk's look-ahead).
// Position 0 always is one (a chunk starts at a boundary). *scanned remembers how far earlier calls
// looked, so data without a boundary is scanned once. SIZE_MAX if there is none in buf[0..len).
static size_t find_cut(const char *buf, size_t len, size_t from, int jsonl, size_t *scanned) {
    if (from == 0) return 0;
    size_t i = from - 1 > *scanned ? from - 1 : *scanned;
    while (i < len) {
        const char *nl = memchr(buf + i, '\n', len - i);
        if (nl == NULL) break;
        size_t p = (size_t)(nl - buf) + 1;
        if (jsonl) return p;
        if (p == len) { i = p - 1; *scanned = i; return SIZE_MAX; }  // need the next byte
        unsigned char next = (unsigned char)buf[p];
        if (next > ' ' && next < 0x7F) return p;
        i = p;
    }
    *scanned = len;
    return SIZE_MAX;
}

static int is_jsonl_name(const char *path, const char *format) {
    if (strcmp(format, "jsonl") == 0) return 1;
    if (strcmp(format, "text") == 0) return 0;
    if (strcmp(path, "-") == 0) return 1;
    size_t n = strlen(path);
    if (n > 3 && strcmp(path + n - 3, ".gz") == 0) n -= 3;
    return (n > 6 && strncmp(path + n - 6, ".jsonl", 6) == 0) || (n > 5 && strncmp(path + n - 5, ".json", 5) == 0);
}

static void read_inputs(Run *run, const char *format, double val_fraction) {
    double val_threshold = run->total_disk > 0 ? val_fraction * (double)run->total_disk : 0;
    int in_val = val_fraction >= 1.0 || val_threshold > 0;
    char *buf = (char *)xmalloc(CHUNK_BYTES + READ_BYTES + 1);
    size_t cap = CHUNK_BYTES + READ_BYTES;
    int64_t file_disk_start = 0;
    for (int fi = 0; fi < run->num_files; fi++) {
        const char *path = run->files[fi];
        int jsonl = is_jsonl_name(path, format);
        gzFile gz = strcmp(path, "-") == 0 ? gzdopen(dup(0), "rb") : gzopen(path, "rb");
        if (gz == NULL) die("%s: cannot open (missing or unreadable)", path);
        gzbuffer(gz, 1 << 17);
        size_t len = 0, scanned = 0;
        int64_t u_base = 0;         // uncompressed offset in this file of buf[0]
        int64_t u_read = 0;         // uncompressed bytes read from this file
        int64_t d_read = 0;         // disk bytes read from this file
        int64_t val_cut = -1;       // uncompressed offset in this file where val ends, once known
        int doc_start = !jsonl, eof = 0;
        if (val_fraction < 1.0 && in_val && val_threshold <= (double)file_disk_start) in_val = 0;
        for (;;) {
            if (!eof) {
                if (len + READ_BYTES > cap) {
                    cap = 2 * (len + READ_BYTES);
                    buf = (char *)xrealloc(buf, cap + 1);
                }
                int n = gzread(gz, buf + len, READ_BYTES);
                if (n < 0) {
                    int errnum;
                    fprintf(stderr, "warning: %s; the rest of the file is skipped\n", gzerror(gz, &errnum));  // names the file
                    run->bad_files++;
                }
                if (n <= 0) eof = 1;
                else {
                    int64_t u_prev = u_read, d_prev = d_read;
                    len += (size_t)n;
                    u_read += n;
                    // a pipe has no file offset: count the bytes that came out of it instead
                    int64_t offset = (int64_t)gzoffset(gz);
                    d_read = offset > 0 ? offset : u_read;
                    double thr_here = val_threshold - (double)file_disk_start;
                    if (in_val && val_fraction < 1.0 && val_cut < 0 && thr_here < (double)d_read) {
                        double frac = d_read > d_prev ? (thr_here - (double)d_prev) / (double)(d_read - d_prev) : 1.0;
                        if (frac < 0) frac = 0;
                        val_cut = u_prev + (int64_t)(frac * (double)(u_read - u_prev));
                    }
                }
            }
            // cut as many chunks as the buffer holds
            for (;;) {
                size_t target = CHUNK_BYTES;
                int at_val_cut = 0;
                // a chunk may overshoot the val cut (to its first boundary): then it is cut at once
                if (in_val && val_cut >= 0 && val_cut - u_base <= (int64_t)target) {
                    target = val_cut > u_base ? (size_t)(val_cut - u_base) : 0;
                    at_val_cut = 1;
                }
                if (!eof && len <= target) break;
                size_t p = find_cut(buf, len, target, jsonl, &scanned);
                if (p == SIZE_MAX) {
                    if (!eof) break;
                    p = len;
                }
                if (p > 0) {
                    size_t lookahead = (!jsonl && p < len) ? 1 : 0;
                    submit_job(run, buf, p + lookahead, p, jsonl, doc_start, in_val, fi, file_disk_start + d_read);
                    doc_start = 0;
                    memmove(buf, buf + p, len - p);
                    len -= p;
                    u_base += (int64_t)p;
                    scanned = scanned > p ? scanned - p : 0;
                }
                if (at_val_cut) in_val = 0;
                if (len == 0 || p == 0) break;
            }
            if (eof && len == 0) break;
        }
        gzclose(gz);
        file_disk_start += d_read;
    }
    free(buf);
}

// ---------------------------------------------------------------------------------------------

static void usage(FILE *out) {
    fprintf(out,
            "usage: mdn_tokenize [options] --out DIR FILE...\n"
            "Tokenizes text files (one document each) or JSONL ({\"text\": ...} a line) with the GPT-2 BPE\n"
            "(ids identical to tiktoken's gpt2) into llm.c token shards, EOT (50256) before each document.\n"
            "FILE may be gzip-compressed; '-' reads standard input (e.g. zstd -dc x.jsonl.zst | ... -).\n"
            "  --out DIR            where the shards go (created if missing)\n"
            "  --name NAME          shard names NAME_train_000000.bin, NAME_val_000000.bin\n"
            "                       (default: the first file's name without extensions)\n"
            "  --val-fraction F     the first F of the input (by bytes on disk) goes to val (default 0)\n"
            "  --shard-size N       tokens per shard, K/M/G suffixes allowed (default 100M)\n"
            "  --threads N          tokenizing threads (default: the number of cores)\n"
            "  --format FMT         auto (default: .jsonl/.json[.gz] and '-' are JSONL), text or jsonl\n"
            "  --bpe-dir DIR        encoder.json and vocab.bpe (default: dataloader/gpt2 beside the binary)\n"
            "  --help               this text\n");
}

static int64_t parse_count(const char *flag, const char *s) {
    char *end;
    double v = strtod(s, &end);
    if (*end == 'K' || *end == 'k') { v *= 1e3; end++; }
    else if (*end == 'M' || *end == 'm') { v *= 1e6; end++; }
    else if (*end == 'G' || *end == 'g') { v *= 1e9; end++; }
    if (end == s || *end != '\0' || v < 1 || v != (double)(int64_t)v) die("%s: '%s' is not a positive count", flag, s);
    return (int64_t)v;
}

static void make_dirs(const char *dir) {
    char *path = xstrdup(dir);
    for (char *p = path + 1;; p++) {
        if (*p == '/' || *p == '\0') {
            char saved = *p;
            *p = '\0';
            if (mkdir(path, 0755) != 0 && errno != EEXIST) die("%s: cannot create directory (%s)", path, strerror(errno));
            *p = saved;
            if (saved == '\0') break;
        }
    }
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) die("%s: not a directory", dir);
    free(path);
}

static char *default_name(const char *path) {
    if (strcmp(path, "-") == 0) return xstrdup("data");
    const char *base = strrchr(path, '/');
    char *name = xstrdup(base != NULL ? base + 1 : path);
    size_t n = strlen(name);
    if (n > 3 && strcmp(name + n - 3, ".gz") == 0) name[n -= 3] = '\0';
    char *dot = strrchr(name, '.');
    if (dot != NULL && dot != name) *dot = '\0';
    return name;
}

static char *default_bpe_dir(void) {
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 64);
    if (n > 0) {
        exe[n] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash != NULL) {
            strcpy(slash, "/dataloader/gpt2");
            struct stat st;
            if (stat(exe, &st) == 0) return xstrdup(exe);
        }
    }
    return xstrdup("dataloader/gpt2");
}

int main(int argc, char **argv) {
    const char *out_dir = NULL, *format = "auto";
    char *name = NULL, *bpe_dir = NULL;
    double val_fraction = 0;
    int64_t shard_size = 100000000;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    int threads = cores > 0 ? (int)cores : 1;
    const char **files = (const char **)xcalloc((size_t)argc, sizeof(char *));
    int num_files = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) { usage(stdout); return 0; }
        if (strncmp(a, "--", 2) == 0) {
            if (i + 1 >= argc) die("%s: missing value (see --help)", a);
            const char *v = argv[++i];
            char *end;
            if (strcmp(a, "--out") == 0) out_dir = v;
            else if (strcmp(a, "--name") == 0) name = xstrdup(v);
            else if (strcmp(a, "--bpe-dir") == 0) bpe_dir = xstrdup(v);
            else if (strcmp(a, "--shard-size") == 0) shard_size = parse_count(a, v);
            else if (strcmp(a, "--threads") == 0) {
                threads = (int)parse_count(a, v);
                if (threads > 1024) die("--threads: %d is too many", threads);
            } else if (strcmp(a, "--val-fraction") == 0) {
                val_fraction = strtod(v, &end);
                if (end == v || *end != '\0' || !(val_fraction >= 0 && val_fraction <= 1))
                    die("--val-fraction: '%s' is not a number in [0, 1]", v);
            } else if (strcmp(a, "--format") == 0) {
                if (strcmp(v, "auto") != 0 && strcmp(v, "text") != 0 && strcmp(v, "jsonl") != 0)
                    die("--format: '%s' is not auto, text or jsonl", v);
                format = v;
            } else die("%s: unknown option (see --help)", a);
        } else files[num_files++] = a;
    }
    if (out_dir == NULL || num_files == 0) { usage(stderr); return 1; }
    if (shard_size >= INT32_MAX) die("--shard-size: %lld tokens do not fit the shard header's int32", (long long)shard_size);

    Run run = {0};
    run.files = files;
    run.num_files = num_files;
    for (int i = 0; i < num_files; i++) {
        struct stat st;
        if (strcmp(files[i], "-") == 0) { run.total_disk = -1; continue; }
        if (stat(files[i], &st) != 0 || !S_ISREG(st.st_mode)) die("%s: cannot open (missing or not a file)", files[i]);
        if (run.total_disk >= 0) run.total_disk += st.st_size;
    }
    if (run.total_disk < 0 && val_fraction > 0 && val_fraction < 1)
        die("--val-fraction: needs inputs of known size; with '-' use 0 or 1 (run once per split)");
    if (name == NULL) name = default_name(files[0]);
    if (bpe_dir == NULL) bpe_dir = default_bpe_dir();
    make_dirs(out_dir);

    Tokenizer tok;
    char err[512];
    if (tokenizer_init(&tok, bpe_dir, err, sizeof err) != 0) die("%s", err);
    run.tok = &tok;
    run.train = (ShardWriter){.dir = out_dir, .name = name, .split = "train", .shard_size = shard_size};
    run.val = (ShardWriter){.dir = out_dir, .name = name, .split = "val", .shard_size = shard_size};
    run.num_slots = 2 * threads + 4;
    run.slots = (Job *)xcalloc((size_t)run.num_slots, sizeof(Job));
    run.file_index = -1;
    run.progress_tty = isatty(2);
    run.start = run.last_progress = wall_seconds();
    pthread_mutex_init(&run.mu, NULL);
    pthread_cond_init(&run.cv, NULL);

    pthread_t *workers = (pthread_t *)xmalloc((size_t)threads * sizeof(pthread_t));
    pthread_t writer;
    for (int i = 0; i < threads; i++)
        if (pthread_create(&workers[i], NULL, worker_main, &run) != 0) die("cannot start thread %d", i);
    if (pthread_create(&writer, NULL, writer_main, &run) != 0) die("cannot start the writer thread");
    read_inputs(&run, format, val_fraction);
    pthread_mutex_lock(&run.mu);
    run.reader_done = 1;
    pthread_cond_broadcast(&run.cv);
    pthread_mutex_unlock(&run.mu);
    for (int i = 0; i < threads; i++) pthread_join(workers[i], NULL);
    pthread_join(writer, NULL);
    shard_close(&run.train);
    shard_close(&run.val);

    double elapsed = wall_seconds() - run.start;
    print_progress(&run, run.disk_done, 1);
    printf("%s: %lld documents -> %lld tokens: train %lld in %d shards, val %lld in %d shards, %s/%s_*.bin "
           "(%.1f s, %d threads)\n",
           num_files == 1 ? files[0] : "inputs", (long long)run.docs, (long long)(run.train.total + run.val.total),
           (long long)run.train.total, run.train.index, (long long)run.val.total, run.val.index, out_dir, name, elapsed,
           threads);
    if (run.bad_json + run.no_text + run.bad_utf8 + run.bad_files > 0)
        printf("bad input: %lld lines not JSON, %lld lines without a \"text\" string (both skipped), %lld invalid "
               "UTF-8 sequences (replaced by U+FFFD), %lld unreadable files\n",
               (long long)run.bad_json, (long long)run.no_text, (long long)run.bad_utf8, (long long)run.bad_files);
    if (run.docs == 0) die("%s: no documents in the input", num_files == 1 ? files[0] : "inputs");
    tokenizer_free(&tok);
    free(workers);
    free(run.slots);
    free(files);
    free(name);
    free(bpe_dir);
    return 0;
}
