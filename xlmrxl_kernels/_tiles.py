"""Triton device helpers shared by the kernels: the GEMM tile order (linear_gelu, int4), attention's dynamic args."""

import triton
import triton.language as tl


@triton.jit
def grouped_tile(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Map a 1-D program id to a (row tile, column tile) in super-grouped order: GROUP_M row tiles walk one band of
    BLOCK_N weight rows before moving on, so that band stays in L2 while it is reused."""
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_in_group = GROUP_M * num_pid_n
    first_m = (pid // num_in_group) * GROUP_M
    group_rows = min(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % num_in_group) % group_rows
    pid_n = (pid % num_in_group) // group_rows
    return pid_m, pid_n


# the attention kernels' arguments that follow the batch (not specialised on their values: one binary for every batch)
_DYNAMIC = ("max_seqlen_q", "S_q", "S_k", "T_q", "T_k", "stride_lb", "SEQ_Q_KEY", "SEQ_K_KEY")
