"""Every kernel test's tolerance, in one place.

Each kernel is compared with an eager float64 reference computed from the same inputs. The
error we accept is about what the dtype itself costs: storing a result in fp16 rounds it by
up to 2^-11 relative (~4.9e-4), bf16 by 2^-8 (~3.9e-3); gradients pass through one or two
more roundings and reductions, so they get a little more room. fp32 results differ from the
float64 reference only by accumulation order (and, for attention on a GPU, by tf32 in the
matrix products, so CUDA fp32 attention uses the looser "tf32" row).

    TOL[op][dtype] = (atol, rtol)   used as torch.testing.assert_close(..., atol=atol, rtol=rtol)

Attention follows flash-attention's rule as well: in low precision its error against float64
must be within 2x of eager PyTorch's own error in that dtype (plus the atol below).
"""

import torch

TOL = {
    # LayerNorm's output is O(1) (normalized); its statistics are fp32 in every dtype.
    "layer_norm": {
        torch.float32: (1e-5, 1e-5),
        torch.float16: (2e-3, 2e-3),
        torch.bfloat16: (1.6e-2, 1.6e-2),
    },
    "layer_norm_bwd": {
        torch.float32: (1e-4, 1e-4),
        torch.float16: (5e-3, 5e-3),
        torch.bfloat16: (4e-2, 4e-2),
    },
    # GELU is elementwise: one rounding of the output (and of dx) on top of fp32 math.
    "gelu": {
        torch.float32: (1e-6, 1e-5),
        torch.float16: (1e-3, 1e-3),
        torch.bfloat16: (8e-3, 8e-3),
    },
    "gelu_bwd": {
        torch.float32: (1e-5, 1e-5),
        torch.float16: (2e-3, 2e-3),
        torch.bfloat16: (1.6e-2, 1.6e-2),
    },
    # Attention: outputs are convex combinations of V rows; dq/dk/dv sum over the sequence.
    "attention": {
        torch.float32: (1e-5, 1e-5),
        "tf32": (5e-3, 5e-3),
        torch.float16: (2e-3, 2e-3),
        torch.bfloat16: (1.6e-2, 1.6e-2),
    },
    "attention_bwd": {
        torch.float32: (1e-4, 1e-4),
        "tf32": (2e-2, 2e-2),
        torch.float16: (5e-3, 5e-3),
        torch.bfloat16: (4e-2, 4e-2),
    },
    # The whole tiny model, float32: logits and parameter gradients after a dozen kernels.
    "model": {
        torch.float32: (1e-4, 1e-4),
    },
    # Training runs of a tiny model, float32, a few AdamW steps at lr 3e-3: the loss of every
    # step, and every weight at the end. Two processes vs one (DDP, FSDP): the same sums in
    # another order. Losses agree to fp32 rounding. Weights mostly do too, but AdamW divides
    # each gradient element by its own running RMS, so an element whose gradient is a nearly
    # cancelling sum carries its rounding, relatively, into its update: a handful of the 1.6M
    # weights then differ by up to ~1e-2 of one step (3e-5). Liger-Kernel's convergence tests
    # allow 5e-3 on weights in fp32; 1e-4 here is 1/30 of one step.
    "train_distributed": {
        torch.float32: (1e-5, 1e-5),
    },
    "train_distributed_weights": {
        torch.float32: (1e-4, 1e-5),
    },
    # Convergence (Liger-Kernel's test): every Triton kernel on vs every eager op, 5 steps.
    # Each step adds the kernels' own fp32 error (the rows above), which AdamW carries on. On a
    # GPU attention's products are tf32 (its row above allows 5e-3), so the losses get that
    # much room and the weights Liger-Kernel's own fp32 bound (atol 5e-3). Not yet run on a GPU.
    "convergence": {
        torch.float32: (1e-5, 1e-5),
        "tf32": (5e-3, 5e-3),
    },
    "convergence_weights": {
        torch.float32: (1e-4, 1e-5),
        "tf32": (5e-3, 1e-5),
    },
}


def tol(op, dtype):
    """(atol, rtol) for an op's result in a dtype, as keyword arguments for assert_close."""
    atol, rtol = TOL[op][dtype]
    return {"atol": atol, "rtol": rtol}
