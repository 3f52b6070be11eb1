// test_mdn_op_f64.c: test_mdn_op.c built against the double library (adds the finite-difference checks).
#include "test_mdn_op.c"
