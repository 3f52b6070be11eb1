// sample.c: text samples from the recurrent form (see sample.h).
#include "sample.h"

#include <math.h>
#include <stdlib.h>

#include "utils.h"

// xorshift64*
static uint64_t rng_next(uint64_t *state) {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    return *state * 0x2545F4914F6CDD1DULL;
}

static double rng_uniform(uint64_t *state) { return (double)(rng_next(state) >> 11) * (1.0 / 9007199254740992.0); }

// the golden-ratio multiplier spreads small seeds over the state; +1 keeps seed 0 off xorshift's
// fixed point 0
uint64_t sample_rng_init(int64_t seed) { return (uint64_t)seed * 0x9E3779B97F4A7C15ULL + 1; }

void sample_print(Model *model, const Tokenizer *tokenizer, int num_tokens, uint64_t *rng, FILE *out) {
    int vocab = model->config.vocab_size;
    real *logits = (real *)xmalloc((size_t)vocab * sizeof(real));
    double *probs = (double *)xmalloc((size_t)vocab * sizeof(double));
    model_reset_state(model);
    int token = GPT2_EOT < vocab ? GPT2_EOT : vocab - 1;
    fprintf(out, "sample: ");
    for (int i = 0; i < num_tokens; i++) {
        model_step(model, &token, 1, logits);
        double max = logits[0], total = 0.0;
        for (int v = 1; v < vocab; v++) if (logits[v] > max) max = logits[v];
        for (int v = 0; v < vocab; v++) { probs[v] = exp((double)logits[v] - max); total += probs[v]; }
        double u = rng_uniform(rng) * total, cumulative = 0.0;
        token = vocab - 1;
        for (int v = 0; v < vocab; v++) {
            cumulative += probs[v];
            if (u < cumulative) { token = v; break; }
        }
        size_t len = 0;
        const char *bytes = tokenizer != NULL && token < tokenizer->vocab_size ? tokenizer_decode(tokenizer, token, &len) : NULL;
        if (bytes != NULL) fwrite(bytes, 1, len, out);
        else fprintf(out, "[%d]", token);
    }
    fprintf(out, "\n---\n");
    model_reset_state(model);
    free(logits);
    free(probs);
}
