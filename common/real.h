// real.h: the floating-point type of the CPU code.
// Every CPU source (the op, the layers, the model) is written once in terms of `real` and built
// twice by the Makefile: float (build/f32, used by train_mdn_cpu and dev tools) and double
// (build/f64, -DMDN_DOUBLE, used by the finite-difference gradient checks). A binary links one of
// the two builds, so no function needs a precision suffix.
#ifndef MDN_REAL_H
#define MDN_REAL_H

#include <math.h>

#ifdef MDN_DOUBLE
typedef double real;
#define REAL_NAME "float64"
#else
typedef float real;
#define REAL_NAME "float32"
#endif

#endif // MDN_REAL_H
