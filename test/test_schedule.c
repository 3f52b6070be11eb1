// test_schedule.c: the learning rate at chosen steps against mdn-spec.md §9's formula, worked out
// by hand here (not by calling the code under test twice).
#include <math.h>
#include <stdio.h>

#include "../common/schedule.h"

static int failures = 0;

static void expect_lr(const char *label, double got, double want) {
    if (fabs(got - want) > 1e-15 * fabs(want) + 1e-300) {
        failures++;
        printf("FAIL %s: lr %.17g, expected %.17g\n", label, got, want);
    }
}

int main(void) {
    const double lr = 3e-4, r = 0.1;
    const int W = 1024, S = 30720;
    // warmup: lr * (s+1) / W, so step 0 already trains
    expect_lr("s=0", lr_at_step(0, lr, W, S, r), 3e-4 / 1024);
    expect_lr("s=1", lr_at_step(1, lr, W, S, r), 3e-4 * 2 / 1024);
    expect_lr("s=511", lr_at_step(511, lr, W, S, r), 3e-4 * 0.5);
    expect_lr("s=W-1", lr_at_step(W - 1, lr, W, S, r), 3e-4);
    expect_lr("s=W", lr_at_step(W, lr, W, S, r), 3e-4);
    // halfway through the cosine: cos(pi/2) = 0, so lr * (r + (1-r)/2) = 0.55 lr
    expect_lr("s=mid", lr_at_step(W + (S - W) / 2, lr, W, S, r), 3e-4 * 0.55);
    // a quarter: cos(pi/4) = sqrt(2)/2
    expect_lr("s=quarter", lr_at_step(W + (S - W) / 4, lr, W, S, r), 3e-4 * (0.1 + 0.9 * 0.5 * (1 + sqrt(0.5))));
    // the last step stays just above the floor: progress (S-1-W)/(S-W) < 1
    double last = lr_at_step(S - 1, lr, W, S, r);
    expect_lr("s=S-1", last, 3e-4 * (0.1 + 0.9 * 0.5 * (1 + cos(M_PI * (double)(S - 1 - W) / (S - W)))));
    if (!(last > 3e-5 && last < 3e-5 * 1.000001)) { failures++; printf("FAIL s=S-1: %.17g not just above the floor\n", last); }
    // past the end (a run extended on resume) it stays at the floor
    expect_lr("s=S+5", lr_at_step(S + 5, lr, W, S, r), 3e-5);
    // no warmup: step 0 is already the peak
    expect_lr("W=0 s=0", lr_at_step(0, lr, 0, 100, r), 3e-4);
    expect_lr("W=0 s=50", lr_at_step(50, lr, 0, 100, r), 3e-4 * 0.55);
    // warmup longer than the run: the schedule never leaves the ramp/peak, no division by zero
    expect_lr("W>S", lr_at_step(9, lr, 20, 10, r), 3e-4 * 10 / 20);
    expect_lr("W=S", lr_at_step(10, lr, 10, 10, r), 3e-4);
    // monotone: up during warmup, down after
    for (int s = 1; s < S; s++) {
        double prev = lr_at_step(s - 1, lr, W, S, r), cur = lr_at_step(s, lr, W, S, r);
        if ((s < W && !(cur > prev)) || (s > W && !(cur < prev))) {
            failures++;
            printf("FAIL monotone at s=%d: %.17g after %.17g\n", s, cur, prev);
            break;
        }
    }
    printf("%s: %d failures\n", failures ? "FAIL" : "OK", failures);
    return failures ? 1 : 0;
}
