"""Triton building blocks shared by the interpolated-weight kernels (device functions only).

``interpolated_tile`` forms W0 + Σ_j c_kj·D_j for one tile in fp32 registers (the K weight points
never exist in memory); ``operand`` casts a tile to the dot's operand dtype and ``dot`` multiplies
with an fp32 accumulator in the precision the ``DOT`` constexpr names (see kernels/launch.py);
``grouped_pids`` orders GEMM programs in groups of GROUP_M row tiles.
"""
from __future__ import annotations

from .dispatch import HAS_TRITON

if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def interpolated_tile(w0_ptr, dw_ptr, w_off, d_off, mask, c_base, s_cj, s_dj, D):
        """(W0 + Σ_j c_kj·D_j) at the given (int32) offsets, in fp32: formed in registers, never
        stored. Only scalar pointers advance per direction (64-bit scalar arithmetic, no i32
        j·stride product), so no tile of pointers stays live across the loop."""
        wt = tl.load(w0_ptr + w_off, mask=mask, other=0.0).to(tl.float32)
        c_j = c_base
        d_j = dw_ptr
        for j in range(0, D):
            wt += tl.load(c_j).to(tl.float32) * tl.load(d_j + d_off, mask=mask, other=0.0).to(tl.float32)
            c_j += s_cj
            d_j += s_dj
        return wt

    @triton.jit
    def interpolated_bias(b0_ptr, db_ptr, offs, mask, c_base, s_b, s_bo, s_bj, s_cj, D,
                          HAS_B0: tl.constexpr, HAS_DB: tl.constexpr, BLOCK_N: tl.constexpr):
        """b0 + Σ_j c_kj·e_j for one tile of outputs, fp32 (zeros where there is no bias)."""
        if HAS_B0:
            bias = tl.load(b0_ptr + offs * s_b, mask=mask, other=0.0).to(tl.float32)
        else:
            bias = tl.zeros((BLOCK_N,), dtype=tl.float32)
        if HAS_DB:
            c_j = c_base
            e_j = db_ptr
            for j in range(0, D):
                bias += tl.load(c_j).to(tl.float32) * tl.load(e_j + offs * s_bo, mask=mask, other=0.0).to(tl.float32)
                c_j += s_cj
                e_j += s_bj
        return bias

    @triton.jit
    def grouped_pids(pid, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
        """(pid_m, pid_n) of program `pid` when programs run GROUP_M row tiles at a time down
        each column of tiles (the last group may be shorter)."""
        in_group = GROUP_M * num_pid_n
        first_m = (pid // in_group) * GROUP_M
        group_size = tl.minimum(num_pid_m - first_m, GROUP_M)
        local = pid % in_group
        return first_m + local % group_size, local // group_size

    @triton.jit
    def round_to_bf16(t):
        """fp32 rounded to the nearest bf16 (ties to even), kept in fp32 (finite inputs)."""
        bits = t.to(tl.uint32, bitcast=True)
        bits = bits + 0x7FFF + ((bits >> 16) & 1)
        bits = (bits >> 16) << 16
        return bits.to(tl.float32, bitcast=True)

    @triton.jit
    def operand(t, DOT: tl.constexpr):
        """A tile cast to the operand dtype of `dot` in mode DOT."""
        if DOT == "bf16":
            out = t.to(tl.bfloat16)
        elif DOT == "fp16":
            out = t.to(tl.float16)
        elif DOT == "bf16_rounded":
            out = round_to_bf16(t.to(tl.float32))
        else:
            out = t.to(tl.float32)
        return out

    @triton.jit
    def dot(a, b, acc, DOT: tl.constexpr):
        """acc + a·b with an fp32 accumulator: tensor cores on fp16/bf16 operands, TF32 for
        "tf32", exact fp32 products for "ieee" and "bf16_rounded"."""
        if DOT == "tf32":
            acc = tl.dot(a, b, acc, input_precision="tf32")
        elif DOT == "ieee":
            acc = tl.dot(a, b, acc, input_precision="ieee")
        elif DOT == "bf16_rounded":
            acc = tl.dot(a, b, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc, out_dtype=tl.float32)
        return acc
