# launch_common.sh: sourced by train_mdn_400M.sh and train_mdn_1B.sh. Given GPUS, HOSTFILE,
# MICRO_BATCH and GLOBAL_BATCH, it derives the gradient accumulation and starts the trainer with
# the paper's recipe: directly for one GPU, under mpirun for several (one process per GPU; MPI
# hands out the NCCL id; each node's processes take its GPUs in order).
# Multi-node networking is NCCL's and OpenMPI's business; the usual knobs (export them before
# running): NCCL_SOCKET_IFNAME / OMPI_MCA_btl_tcp_if_include (the interface to use),
# NCCL_IB_DISABLE=0 and NCCL_NET_GDR_LEVEL (InfiniBand / GPUDirect), NCCL_DEBUG=INFO (diagnosis).
DATA=${DATA:-data/slimpajama}
VAL_DATA=${VAL_DATA-$DATA/*val*.bin}   # VAL_DATA= (empty): no validation (a corpus too small for its batch)
OUT=${OUT:-out/mdn_400M}
TRAINER=${TRAINER:-./train_mdn}
EXTRA=${EXTRA:-}

launch() {
    if (( GLOBAL_BATCH % (MICRO_BATCH * GPUS) != 0 )); then
        echo "error: $GPUS GPUs x $MICRO_BATCH rows do not divide the global batch of $GLOBAL_BATCH rows" >&2
        exit 1
    fi
    local accum=$(( GLOBAL_BATCH / (MICRO_BATCH * GPUS) ))
    [ -x "$TRAINER" ] || make "${TRAINER#./}"
    local flags=("$@" --train-data "$DATA/*train*.bin" --val-data "$VAL_DATA"
        --batch-size "$MICRO_BATCH" --seq-len 4096 --grad-accum "$accum"
        --lr 3e-4 --min-lr-ratio 0.1 --warmup-steps 1024 --weight-decay 0.1 --beta1 0.9 --beta2 0.95
        --eps 1e-15 --max-norm 1.0 --seed 42 --checkpoint-interval 2048 --keep-latest-k 2
        --val-interval 1000 --val-batches 20 --sample-interval 2048 --out "$OUT" --resume)
    # shellcheck disable=SC2086
    if (( GPUS == 1 )) && [ -z "$HOSTFILE" ]; then
        exec "$TRAINER" "${flags[@]}" $EXTRA
    fi
    local mpi=(mpirun -np "$GPUS" --bind-to none -x PATH -x LD_LIBRARY_PATH)
    local var
    for var in NCCL_SOCKET_IFNAME NCCL_IB_DISABLE NCCL_NET_GDR_LEVEL NCCL_DEBUG MDN_NCCL_TIMEOUT_S; do
        [ -n "${!var:-}" ] && mpi+=(-x "$var")
    done
    [ -n "$HOSTFILE" ] && mpi+=(--hostfile "$HOSTFILE")
    # shellcheck disable=SC2086
    exec "${mpi[@]}" "$TRAINER" "${flags[@]}" $EXTRA
}
