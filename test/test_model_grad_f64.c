// test_model_grad_f64.c: the whole model's backward (layers/model.c) against central finite
// differences of its forward, in float64, for every parameter tensor.
// Two tiny models: the paper's layer (short convs, gate, output correction, p = α·k̂, min_log_mu
// clamp with one head held on the clamp, T = 70 so the op runs two chunks, some positions without
// a target), and the same with every switch off (no conv, no gate, no correction, p = k̂, no
// clamp, tied embeddings). For each tensor a few elements (all of the per-head [H] ones) are
// perturbed (4-point central differences); the error of a tensor is ||fd - analytic|| / ||analytic|| over those elements.
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/config.h"
#include "../layers/model.h"

#define TOLERANCE 1e-6
#define SAMPLES_PER_TENSOR 6

static double run_config(const char *label, const char *json, int B, int T) {
    MdnConfig c;
    char err[512];
    if (config_parse(&c, json, strlen(json), label, 0, err, sizeof err) != 0) {
        fprintf(stderr, "error: %s\n", err);
        exit(1);
    }
    Model *m = model_build(&c, B, T);
    model_init_weights(m, 1234);
    // move the norm weights and per-head parameters off their init values so that no gradient is
    // trivially symmetric, and put head 1 of layer 0 on the log μ clamp (when there is one)
    unsigned s = 7;
    for (int i = 0; i < m->num_tensors; i++) {
        const ParamTensor *t = &m->tensors[i];
        if (strstr(t->name, "norm.weight") != NULL)
            for (size_t j = 0; j < t->numel; j++) {
                s = s * 1103515245u + 12345u;
                m->params[t->offset + j] = 1 + 0.3 * ((s >> 8) % 1000 / 1000.0 - 0.5);
            }
    }
    if (c.has_min_log_mu) m->p.layers[0].Mu_log[1] = log(500.0);
    m->p.layers[0].log_factor[0] = 0.5;
    int *inputs = (int *)malloc(sizeof(int) * B * T), *targets = (int *)malloc(sizeof(int) * B * T);
    for (int i = 0; i < B * T; i++) {
        s = s * 1103515245u + 12345u;
        inputs[i] = (int)((s >> 8) % (unsigned)c.vocab_size);
        s = s * 1103515245u + 12345u;
        targets[i] = (i % 11 == 3) ? -100 : (int)((s >> 8) % (unsigned)c.vocab_size);
    }

    model_zero_grad(m);
    model_forward(m, inputs, targets, B, T);
    model_backward(m, 1);
    double worst = 0;
    const char *worst_name = "";
    for (int i = 0; i < m->num_tensors; i++) {
        const ParamTensor *t = &m->tensors[i];
        int count = t->numel <= 8 ? (int)t->numel : SAMPLES_PER_TENSOR;
        double diff2 = 0, norm2 = 0;
        for (int k = 0; k < count; k++) {
            size_t j = t->numel <= 8 ? (size_t)k : (size_t)((k * 2654435761u + 17u * i) % t->numel);
            real *w = m->params + t->offset + j;
            // 4-point central stencil: truncation O(h^4), so h can be large enough that the
            // rounding of the loss (1e-16 relative) stays far below the small gradients
            real saved = *w, h = 1e-4 * (fabs(saved) > 1 ? fabs(saved) : 1);
            double f[4];
            const double steps[4] = {2, 1, -1, -2};
            for (int q = 0; q < 4; q++) {
                *w = saved + steps[q] * h;
                f[q] = model_forward(m, inputs, targets, B, T);
            }
            *w = saved;
            double fd = (8 * (f[1] - f[2]) - (f[0] - f[3])) / (12 * h), an = m->grads[t->offset + j];
            diff2 += (fd - an) * (fd - an);
            norm2 += an * an;
        }
        double e = norm2 > 0 ? sqrt(diff2 / norm2) : sqrt(diff2);
        printf("  %-45s %.2e\n", t->name, e);
        if (e > worst) { worst = e; worst_name = t->name; }
    }
    printf("%s: worst rel. error %.2e (%s)\n", label, worst, worst_name);
    free(inputs); free(targets);
    model_free(m);
    return worst;
}

int main(void) {
    const char *paper = "{\"hidden_size\": 16, \"num_hidden_layers\": 2, \"num_heads\": 2, \"head_dim\": 8, \"expand_v\": 2,"
                        " \"intermediate_size\": 24, \"initializer_range\": 0.3, \"vocab_size\": 37, \"tau_factor\": 2, \"min_log_mu\": -1.0,"
                        " \"model_type\": \"momentum_deltanet\"}";
    const char *off = "{\"hidden_size\": 16, \"num_hidden_layers\": 2, \"num_heads\": 2, \"head_dim\": 8, \"expand_v\": 1,"
                      " \"hidden_ratio\": 2, \"initializer_range\": 0.3, \"vocab_size\": 37, \"min_log_mu\": null, \"use_short_conv\": false,"
                      " \"use_gate\": false, \"use_output_correction\": false, \"use_p_times_alpha\": false,"
                      " \"tie_word_embeddings\": true, \"conv_size\": 3}";
    // models this small gain nothing from threads, and lose a lot on a busy machine (barriers)
    omp_set_num_threads(1);
    double e1 = run_config("paper layer", paper, 2, 70);
    double e2 = run_config("switches off", off, 2, 33);
    double worst = e1 > e2 ? e1 : e2;
    printf("gradient check (float64, central differences): worst rel. error %.2e, tolerance %.0e: %s\n", worst,
           TOLERANCE, worst <= TOLERANCE ? "ok" : "FAILED");
    return worst <= TOLERANCE ? 0 : 1;
}
