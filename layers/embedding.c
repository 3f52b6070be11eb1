// embedding.c: see embedding.h.
#include "embedding.h"

#include <stddef.h>

void embedding_forward(real *out, const int *ids, const real *table, int n, int dim) {
    #pragma omp parallel for
    for (int i = 0; i < n; i++) {
        const real *row = table + (size_t)ids[i] * dim;
        real *o = out + (size_t)i * dim;
        for (int d = 0; d < dim; d++) o[d] = row[d];
    }
}

void embedding_backward(real *dtable, const real *dout, const int *ids, int n, int dim) {
    // tokens repeat, so threads split the channels (not the tokens): no two threads touch one value,
    // and the sum over tokens runs in a fixed order (deterministic).
    #pragma omp parallel for
    for (int d = 0; d < dim; d++)
        for (int i = 0; i < n; i++) dtable[(size_t)ids[i] * dim + d] += dout[(size_t)i * dim + d];
}
