// schedule.h: the learning rate at each optimizer step (mdn-spec.md §9, the paper's flame runs).
#ifndef MDN_SCHEDULE_H
#define MDN_SCHEDULE_H

#include <stdint.h>

// lr at optimizer step s (0-based) of S total, W warmup steps, peak lr, floor ratio r:
//   s < W:  lr * (s+1) / W                                   (linear warmup, never 0)
//   s == W: lr
//   s > W:  lr * (r + (1-r) * (1 + cos(pi * (s-W) / (S-W))) / 2)   (cosine to the floor lr*r)
// The last step S-1 stays just above the floor, as in the release. Steps past S (a run extended on
// resume) stay at the floor.
double lr_at_step(int64_t s, double lr, int64_t warmup_steps, int64_t total_steps, double min_lr_ratio);

#endif // MDN_SCHEDULE_H
