// schedule.c: warmup + cosine learning rate (see schedule.h).
#include "schedule.h"

#include <math.h>

double lr_at_step(int64_t s, double lr, int64_t warmup_steps, int64_t total_steps, double min_lr_ratio) {
    if (s < warmup_steps) return lr * (double)(s + 1) / (double)warmup_steps;
    if (s == warmup_steps || total_steps <= warmup_steps) return lr;
    double progress = (double)(s - warmup_steps) / (double)(total_steps - warmup_steps);
    if (progress > 1.0) progress = 1.0;
    return lr * (min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + cos(M_PI * progress)));
}
