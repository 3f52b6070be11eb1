// sample.h: the text samples both trainers print every --sample-interval steps: tokens drawn one at
// a time from the CPU model's recurrent form (model_step, carrying the conv and S/M states), after
// an end-of-text token, decoded with the GPT-2 tokenizer. The RNG state is part of the training
// state (checkpoint.h: sample_rng), so a resumed run prints the same samples.
#ifndef MDN_SAMPLE_H
#define MDN_SAMPLE_H

#include <stdint.h>
#include <stdio.h>

#include "../dataloader/tokenizer.h"
#include "../layers/model.h"

// the sampler's RNG state at the start of a run (before any sample) for --seed
uint64_t sample_rng_init(int64_t seed);

// draws num_tokens tokens from softmax(logits) and prints "sample: <text>\n---\n" to out (token ids
// as [id] where the tokenizer is NULL or does not know them); the model's recurrent state is reset
// before and after, its parameters are read only
void sample_print(Model *model, const Tokenizer *tokenizer, int num_tokens, uint64_t *rng, FILE *out);

#endif // MDN_SAMPLE_H
