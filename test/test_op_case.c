// test_op_case.c: compares the outputs of dev/mdn_op with an expected file (an op case written by
// another implementation, e.g. test/data/op_case.safetensors from the float64 reference).
//   build/test/test_op_case EXPECTED.safetensors OURS.safetensors
// o, S_final, M_final within 1e-5 and every gradient (dq dk dv dlog_alpha dlog_mu dbeta deta, and
// dS0 dM0 when EXPECTED has them) within 1e-4, as relative errors of norms ||ours-ref||/||ref||.
// (The expected values are float32; 1e-5 and 1e-4 are the float32 op's tolerances.)
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "../common/safetensors.h"
#include "../common/utils.h"

int main(int argc, char **argv) {
    if (argc != 3) die("usage: %s EXPECTED.safetensors OURS.safetensors", argv[0]);
    SafeTensors ref, ours;
    char err[512];
    if (st_read(&ref, argv[1], err, sizeof err) != 0) die("%s", err);
    if (st_read(&ours, argv[2], err, sizeof err) != 0) die("%s", err);
    const char *names[] = {"o", "S_final", "M_final", "dq", "dk", "dv", "dlog_alpha", "dlog_mu", "dbeta", "deta", "dS0", "dM0"};
    int failures = 0, compared = 0;
    for (int i = 0; i < 12; i++) {
        const StTensor *t = st_find(&ref, names[i]);
        if (t == NULL) {
            if (i < 10) die("%s: missing tensor %s", argv[1], names[i]);
            continue;   // dS0, dM0 only when the case has initial states
        }
        double tol = i < 3 ? 1e-5 : 1e-4;
        double *a = (double *)xmalloc((size_t)t->numel * sizeof(double));
        double *b = (double *)xmalloc((size_t)t->numel * sizeof(double));
        if (st_get_f64(&ref, names[i], t->ndim, t->shape, a, err, sizeof err) != 0) die("%s", err);
        if (st_get_f64(&ours, names[i], t->ndim, t->shape, b, err, sizeof err) != 0) die("%s", err);
        double d = 0, n = 0;
        for (int64_t e = 0; e < t->numel; e++) {
            d += (b[e] - a[e]) * (b[e] - a[e]);
            n += a[e] * a[e];
        }
        double rel = n > 0 ? sqrt(d / n) : sqrt(d);
        int ok = rel <= tol;   // NaN fails
        printf("%s %-10s rel.err %.2e (tolerance %.0e)\n", ok ? "ok  " : "FAIL", names[i], rel, tol);
        failures += !ok;
        compared++;
        free(a);
        free(b);
    }
    st_free(&ref);
    st_free(&ours);
    printf("%s: %d tensors compared, %d failure(s)\n", failures ? "FAILED" : "PASSED", compared, failures);
    return failures ? 1 : 0;
}
