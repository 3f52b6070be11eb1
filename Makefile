# mdn.c: `make` builds everything this machine can build; `make test` builds and runs the tests.
#
# CPU code (common/, mdn_kernels/*.c, layers/*.c, dataloader/*.c) is written once against
# `real` (common/real.h) and compiled twice: build/f32 (float, the trainer and tools) and build/f64
# (double, -DMDN_DOUBLE, the finite-difference checks). Programs link one of the two libraries.
# CUDA code (*.cu) is built when nvcc is found; CI has nvcc but no GPU, so a CUDA build break fails CI.
# OpenMPI (mpicc) is used when found: the CPU trainer's multi-process back end.
# NCCL (nccl.h next to nvcc's CUDA, or in /usr/local/include, /usr/include) is used when found: the
# GPU trainer's multi-GPU back end (common/collectives_nccl.cu), bootstrapped over MPI.

CC ?= gcc
# -march=native: the CPU matmuls (layers/linear.c) run ~3x faster with AVX2/FMA than with the
# x86-64 baseline (SSE2), but such binaries may not run on older CPUs than the build machine's.
# For portable binaries: `make CFLAGS="-O3 -g"` (or `-O3 -g -march=x86-64-v3` for any AVX2 CPU).
CFLAGS ?= -O3 -g -march=native
CFLAGS += -std=gnu11 -Wall -Wextra -Wno-unused-parameter -fopenmp
LDLIBS = -lm -fopenmp
NVCC ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
MPICC ?= $(shell command -v mpicc 2>/dev/null)
# the GPUs to build for: sm_90a (H100/H200, wgmma) by default; e.g. `make CUDA_ARCH="-gencode=arch=compute_80,code=sm_80"`
CUDA_ARCH ?= -gencode=arch=compute_90a,code=sm_90a
NVCCFLAGS ?= -O3 -std=c++17 $(CUDA_ARCH) -lineinfo -Xcompiler -fopenmp
CUDA_LDLIBS = -lcublasLt -lcublas -lm -lgomp

CPU_SRCS := $(sort $(wildcard common/*.c mdn_kernels/*.c layers/*.c dataloader/*.c))
F32_OBJS := $(patsubst %.c,build/f32/%.o,$(CPU_SRCS))
F64_OBJS := $(patsubst %.c,build/f64/%.o,$(CPU_SRCS))
NCCL_H := $(firstword $(realpath $(wildcard $(dir $(NVCC))../include/nccl.h /usr/local/include/nccl.h /usr/include/nccl.h)))
NCCL_LDLIBS := $(if $(NCCL_H),$(addprefix -L,$(realpath $(dir $(NCCL_H))../lib $(dir $(NCCL_H))../lib64)) -lnccl)
CUDA_SRCS := $(sort $(filter-out $(if $(NCCL_H),,common/collectives_nccl.cu),$(wildcard mdn_kernels/*.cu layers/*.cu common/*.cu)))
CUDA_OBJS := $(patsubst %.cu,build/cuda/%.o,$(CUDA_SRCS))
HEADERS := $(wildcard common/*.h common/*.cuh mdn_kernels/*.h mdn_kernels/*.cuh layers/*.h layers/*.cuh dataloader/*.h)

# main programs (design.md's contract); each is built if its source exists
CPU_PROGRAMS := $(if $(wildcard train_mdn.c),train_mdn_cpu) $(if $(wildcard test_mdn.c),test_mdn) \
                $(if $(wildcard mdn_tokenize.c),mdn_tokenize) $(if $(wildcard dev/mdn_op.c),dev/mdn_op) \
                dev/bench_mdn_cpu dev/bench_linear_cpu dev/bench_model_cpu
# train_mdn needs NCCL (one binary for 1..N GPUs); without nccl.h it is not built
CUDA_PROGRAMS := $(if $(and $(wildcard train_mdn.cu),$(NCCL_H)),train_mdn) \
                 $(patsubst %.cu,%,$(wildcard dev/*.cu))
# tests: test/test_X.c links the float build, test/test_X_f64.c the double build, test/test_X.cu CUDA
TEST_F32 := $(patsubst test/%.c,build/test/%,$(filter-out %_f64.c,$(wildcard test/test_*.c)))
TEST_F64 := $(patsubst test/%.c,build/test/%,$(wildcard test/test_*_f64.c))
TEST_CUDA := $(patsubst test/%.cu,build/test/%,$(filter-out $(if $(NCCL_H),,test/test_collectives_nccl.cu),$(wildcard test/test_*.cu)))

ifneq ($(NVCC),)
ALL := $(CPU_PROGRAMS) $(CUDA_PROGRAMS) $(TEST_F32) $(TEST_F64) $(TEST_CUDA)
CUDA_DEFS := -DMDN_CUDA
else
ALL := $(CPU_PROGRAMS) $(TEST_F32) $(TEST_F64)
$(info nvcc not found: building the CPU programs only)
endif
ifneq ($(MPICC),)
MPI_CFLAGS := -DMDN_MPI $(shell $(MPICC) --showme:compile 2>/dev/null)
MPI_LDLIBS := $(shell $(MPICC) --showme:link 2>/dev/null)
endif

.PHONY: all test clean
all: $(ALL)

build/f32/%.o: %.c $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(MPI_CFLAGS) -c $< -o $@
build/f64/%.o: %.c $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(MPI_CFLAGS) -DMDN_DOUBLE -c $< -o $@
build/cuda/%.o: %.cu $(HEADERS)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c $< -o $@

build/libmdn_f32.a: $(F32_OBJS)
	@mkdir -p build && rm -f $@ && ar rcs $@ $^
build/libmdn_f64.a: $(F64_OBJS)
	@mkdir -p build && rm -f $@ && ar rcs $@ $^
build/libmdn_cuda.a: $(CUDA_OBJS)
	@mkdir -p build && rm -f $@ && ar rcs $@ $^

# the CPU trainer: float build, MPI when available
train_mdn_cpu: train_mdn.c build/libmdn_f32.a $(HEADERS)
	$(CC) $(CFLAGS) $(MPI_CFLAGS) $< build/libmdn_f32.a -o $@ $(LDLIBS) $(MPI_LDLIBS)
# with nvcc, test_mdn.c and dev/mdn_op.c are compiled as CUDA C++ first and linked separately:
# nvcc's -x cu would apply to the libraries too, and nvcc rejects -fopenmp (CUDA_LDLIBS has -lgomp)
test_mdn: test_mdn.c build/libmdn_f32.a $(if $(NVCC),build/libmdn_cuda.a) $(HEADERS)
ifneq ($(NVCC),)
	@mkdir -p build/cuda
	$(NVCC) $(NVCCFLAGS) -x cu $(CUDA_DEFS) -c $< -o build/cuda/test_mdn.o
	$(NVCC) $(NVCCFLAGS) build/cuda/test_mdn.o build/libmdn_cuda.a build/libmdn_f32.a -o $@ $(CUDA_LDLIBS)
else
	$(CC) $(CFLAGS) $< build/libmdn_f32.a -o $@ $(LDLIBS)
endif
mdn_tokenize: mdn_tokenize.c build/libmdn_f32.a $(HEADERS)
	$(CC) $(CFLAGS) $< build/libmdn_f32.a -o $@ $(LDLIBS) -lpthread -lz
# the op checker computes the CPU forms in double: it is the reference
dev/mdn_op: dev/mdn_op.c build/libmdn_f64.a $(if $(NVCC),build/libmdn_cuda.a) $(HEADERS)
ifneq ($(NVCC),)
	@mkdir -p build/cuda/dev
	$(NVCC) $(NVCCFLAGS) -x cu $(CUDA_DEFS) -DMDN_DOUBLE -c $< -o build/cuda/dev/mdn_op.o
	$(NVCC) $(NVCCFLAGS) build/cuda/dev/mdn_op.o build/libmdn_f64.a build/libmdn_cuda.a -o $@ $(CUDA_LDLIBS)
else
	$(CC) $(CFLAGS) -DMDN_DOUBLE $< build/libmdn_f64.a -o $@ $(LDLIBS)
endif
# speed of the CPU op, the matmuls, a training micro-step (float build)
dev/bench_%_cpu: dev/bench_%_cpu.c build/libmdn_f32.a $(HEADERS)
	$(CC) $(CFLAGS) $< build/libmdn_f32.a -o $@ $(LDLIBS)

# the GPU trainer: NCCL for the gradients and parameters, MPI (when found) to start the ranks
train_mdn: train_mdn.cu build/libmdn_cuda.a build/libmdn_f32.a $(HEADERS)
	$(NVCC) $(NVCCFLAGS) $(MPI_CFLAGS) $< build/libmdn_cuda.a build/libmdn_f32.a -o $@ $(CUDA_LDLIBS) $(NCCL_LDLIBS) $(MPI_LDLIBS)
dev/%: dev/%.cu build/libmdn_cuda.a build/libmdn_f32.a $(HEADERS)
	$(NVCC) $(NVCCFLAGS) $< build/libmdn_cuda.a build/libmdn_f32.a -o $@ $(CUDA_LDLIBS)

build/test/%_f64: test/%_f64.c build/libmdn_f64.a $(HEADERS)
	@mkdir -p build/test
	$(CC) $(CFLAGS) -DMDN_DOUBLE $< build/libmdn_f64.a -o $@ $(LDLIBS)
build/test/%: test/%.c build/libmdn_f32.a $(HEADERS)
	@mkdir -p build/test
	$(CC) $(CFLAGS) $(MPI_CFLAGS) $< build/libmdn_f32.a -o $@ $(LDLIBS) $(MPI_LDLIBS)
build/test/%: test/%.cu build/libmdn_cuda.a build/libmdn_f32.a $(HEADERS)
	@mkdir -p build/test
	$(NVCC) $(NVCCFLAGS) $< build/libmdn_cuda.a build/libmdn_f32.a -o $@ $(CUDA_LDLIBS)
# the NCCL back end's test: NCCL, and MPI for `mpirun -np 2` (collectives.c is built with it)
build/test/test_collectives_nccl: test/test_collectives_nccl.cu build/libmdn_cuda.a build/libmdn_f32.a $(HEADERS)
	@mkdir -p build/test
	$(NVCC) $(NVCCFLAGS) $< build/libmdn_cuda.a build/libmdn_f32.a -o $@ $(CUDA_LDLIBS) $(NCCL_LDLIBS) $(MPI_LDLIBS)

# the test list is test/tests.txt; test/run_tests.sh runs it and ends with "N passed, N failed"
test: all
	@bash test/run_tests.sh

clean:
	rm -rf build $(CPU_PROGRAMS) $(CUDA_PROGRAMS)
