// model_cuda.cuh: the Momentum DeltaNet causal LM on one GPU (CUDA twin of model.h), built from
// the layers/*.cu kernels and the MDN op (mdn_kernels/mdn_cuda.cuh).
//
// Precision: activations are float (the float32 reference path, for the 1e-4 test against the CPU
// model) or bf16 (training). Master weights, gradients, the AdamW moments, the gate logits and
// gates, the residual stream and its gradient, and the MDN states are float32 in both.
//
// Memory: parameters (float32 masters), their bf16 copy (what the matmuls read; absent in float32
// mode), gradients (float32), AdamW's m and v, and the activations are one allocation each.
// The GPU layout of the parameters is fla's tensors in another order, chosen so that the projections
// that read the same input are one matmul: per layer q|k|v|g_proj, a|b|m|e_proj and gate|up_proj
// are adjacent. Each tensor (each such group) starts on a 64-value boundary, the gaps zero, so the
// flat vectors hold layout_numel >= num_params values (model_cuda.cu, GPU_PARAM_ALIGN).
// gpu_model_set_params / gpu_model_get_vector convert from / to the CPU model's flat order
// (model.h, num_params values, no gaps), which is the checkpoint and export contract (checkpoint.h:
// float32 params, m, v).
// Data parallel (ZeRO-1, train_mdn.cu): the flat vectors are padded with zeros to shard·world_size
// elements (shard = ceil(layout_numel / world_size) rounded up to a multiple of 64), so that rank r
// owns [r·shard, (r+1)·shard) and the reduce-scatter of the gradients and the allgather of the
// masters work in place on equal blocks; m and v hold only the rank's slice. With one rank
// everything is as without ZeRO (shard = layout_numel).
//
// Activations kept between forward and backward, per layer: the residual stream at the block input
// (float32), the fused q|k|v|g projection, the gate logits and gates (float32), the op's output and
// its per-chunk prepare results (T^-1, QKG, gate factors: ~57 MB at 400M B8xT4096, which spares the
// backward a kernel), the MLP's gate|up projection, and the norms' rstd. Everything else (normed inputs, conv outputs,
// gated-norm output, SwiGLU product) is recomputed in the backward: each is one cheap pass over
// memory, and keeping them would cost more than half again as much memory. The residual stream after
// the mixer is recomputed too (gated norm, o_proj matmul, residual add: the forward's kernels on the
// same inputs, so the same bits): one matmul a layer (~2% of a step) for 3 GiB at 1B B4xT4096.
#ifndef MDN_MODEL_CUDA_CUH
#define MDN_MODEL_CUDA_CUH

#include <stddef.h>
#include <stdint.h>

#include "../common/config.h"
#include "../common/cuda_common.cuh"
#include "model.h"

typedef struct {
    char name[MODEL_MAX_NAME];
    size_t offset, numel;       // in the GPU layout
    size_t cpu_offset;          // in the CPU model's layout (model.h)
    int no_decay;
} GpuParamTensor;

typedef struct GpuActs GpuActs;

#define GPU_MODEL_MAX_MARKS 1024

typedef struct {
    MdnConfig config;
    int use_bf16;               // activation type: 1 bf16, 0 float32
    int recompute;              // 2: the backward recomputes each block's mixer output (o_proj's, and
                                // the gated norm's before it); 1: the forward keeps o_proj's output
                                // per layer (B·T·hidden activation values a layer more memory)
    int max_B, T;               // built for up to max_B rows of exactly T tokens
    int num_tensors;
    GpuParamTensor *tensors;
    size_t num_params;          // the parameters (== the CPU model's), what checkpoints hold
    size_t layout_numel;        // values of the GPU layout, the alignment gaps included
    // ZeRO-1 (set by gpu_model_alloc_optimizer): this rank's slice [shard_begin, shard_end) of the
    // flat vectors (GPU layout indices), shard elements per rank; params, params_x and grads hold
    // shard·world_size values
    int rank, world_size;
    size_t shard, shard_begin, shard_end;
    float *params;              // float32 masters, GPU layout
    void *params_x;             // the activation-type copy the kernels read (== params in float32 mode)
    float *grads;
    float *adam_m, *adam_v;     // [shard]: allocated by gpu_model_alloc_optimizer
    size_t *seg_end;            // AdamW decay segments in the GPU layout (device), see adamw.cuh
    unsigned char *seg_decay;
    int num_segments;
    GpuActs *acts;
    size_t acts_bytes;
    int block_rows;             // the classifier's token block
    cudaStream_t stream;
    float *logits_out;          // optional device buffer [B*T, N]: the float32 logits (tests only)
    int num_targets;            // of the last forward
    // per-stage timing (dev/bench_train): when profile is set, every stage of a step records an
    // event after its launches; stage i took the time between event i-1 and event i
    int profile, num_marks;
    cudaEvent_t marks[GPU_MODEL_MAX_MARKS];
    const char *mark_labels[GPU_MODEL_MAX_MARKS];
} GpuModel;

// Allocates everything but the optimizer state. Dies with a message on an unsupported config
// (the GPU model needs the paper's switches: short conv, gate, output correction, untied head).
// recompute: 1 or 2 (see the field).
GpuModel *gpu_model_build(const MdnConfig *config, int B, int T, int use_bf16, int recompute, cudaStream_t stream);
void gpu_model_free(GpuModel *m);
// The optimizer of rank `rank` of world_size (1: the whole vector): m and v for its slice (zeroed),
// the decay segments (no_decay_set: the six gate tensors and the norms not decayed, as train_mdn_cpu).
// With world_size > 1 it re-allocates params, params_x and grads padded (see above): call it before
// setting parameters.
void gpu_model_alloc_optimizer(GpuModel *m, int no_decay_set, int rank, int world_size);

// the GPU layout of m->config's parameters: fills tensors, num_tensors, num_params, layout_numel
// (gpu_model_build calls it; host code only, for tests that check the layout without a GPU)
void gpu_model_layout(GpuModel *m);
// ZeRO-1's slice arithmetic (host code only: gpu_model_build, gpu_model_alloc_optimizer and the
// layout test call it): sets rank, world_size, shard = ceil(layout_numel / world_size) rounded up to
// a multiple of 64 values (so every rank's block starts on a 256-byte boundary; one rank: shard =
// layout_numel) and [shard_begin, shard_end) = rank's block [rank·shard, (rank+1)·shard) clipped to
// layout_numel (empty for a rank whose block lies past it). Dies on a rank outside [0, world_size).
void gpu_model_shard(GpuModel *m, int rank, int world_size);
// AdamW's decay segments over the GPU layout (adamw.cuh) into host arrays of num_tensors entries:
// segment i ends where tensor i ends and is decayed as model_param_decayed says. Returns the number
// of segments: num_tensors, or 0 (every value decayed, the paper's recipe) without no_decay_set.
int gpu_model_decay_segments(const GpuModel *m, int no_decay_set, size_t *seg_end, unsigned char *seg_decay);

// flat vectors in the CPU model's layout (host, float32, num_params values) <-> the GPU
void gpu_model_set_params(GpuModel *m, const float *cpu_params);   // also refreshes params_x
// into / from any device vector of layout_numel values in the GPU layout (params, grads, or a
// gathered moment vector); the upload writes zeros into the gaps
void gpu_model_upload(const GpuModel *m, float *device_dst, const float *cpu_src);
void gpu_model_download(const GpuModel *m, const float *device_src, float *cpu_dst);
// which: 0 params, 1 grads (2 adam_m, 3 adam_v: only with one rank, where they are whole)
void gpu_model_get_vector(const GpuModel *m, int which, float *cpu_out);
// this rank's slice of a whole device vector (GPU layout) into m (which 2) or v (which 3)
void gpu_model_set_moment_slice(GpuModel *m, int which, const float *device_full);
// params_x = the activation-type copy of the whole of params (after the allgather of the masters)
void gpu_model_refresh_copy(GpuModel *m);

void gpu_model_zero_grad(GpuModel *m);
// profiling: start a new step's marks (records the first event), and mark the end of a stage
void gpu_model_profile_start(GpuModel *m);
void gpu_model_profile_mark(GpuModel *m, const char *label);
// Forward over host inputs, targets [B, T] (B <= max_B) and, when loss_scale != 0, the backward of
// loss_scale·(mean loss), accumulated into m->grads. Returns the mean loss over positions with a
// target (0 if none). Synchronises the stream (the loss is read back).
float gpu_model_forward_backward(GpuModel *m, const int *inputs, const int *targets, int B, float loss_scale);

// sum of the squared gradients of this rank's slice (float64, deterministic); with one rank, the
// squared global norm; with several, after the reduce-scatter, the slice's share of it
double gpu_model_grad_sum_squares(GpuModel *m);
// AdamW over this rank's slice (adamw.cuh) with torch's clip factor for grad_norm; t = update number
// (1-based). With one rank it also writes params_x; with several, gather the masters and call
// gpu_model_refresh_copy.
void gpu_model_adamw(GpuModel *m, float lr, float beta1, float beta2, float eps, float weight_decay,
                     float grad_scale, int64_t t);

// model FLOPs per token of one training step (forward + backward): 6·(non-embedding params) plus
// the MDN op's chunked arithmetic (kernel-design.md's count, ×3 for forward + backward)
double gpu_model_flops_per_token(const MdnConfig *c);

#endif // MDN_MODEL_CUDA_CUH
