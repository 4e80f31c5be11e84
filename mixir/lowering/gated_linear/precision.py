"""The gated-linear core's precisions: the dot operands of its kernels (``dot_mode``), the dtype
of its stored chunk states (``state_dtype``) and of a gradient (``grad_dtype_of``). Shared by the
chunked and fused strategies (``core``, ``fused``)."""
import torch

from ..common.launch import targets_gpu


def dot_mode(x, cfg, backward=False):
    """(DOT_F32, PREC) of the chunked kernels' tl.dot's for inputs like x.

    fp32 inputs: fp32 operands, "ieee". 16-bit inputs: operands rounded to the input dtype
    (tensor cores, fla-like), unless the config asks for fp32 operands with "dot_fp32" (everywhere,
    "tf32x3" on NVIDIA GPUs: about fp32 accuracy) or "bwd_dot_fp32" (backward only, "tf32": one
    tensor-core pass with a 10-bit operand mantissa). Off CUDA, bf16 always takes fp32 operands:
    Triton's interpreter mishandles bf16 dots (fp16 dots are fine there, so CPU tests of fp16
    exercise the 16-bit path, whose 10-bit mantissa is tf32's).
    """
    if x.dtype == torch.float32:
        return True, "ieee"
    want = bool(cfg.get("dot_fp32", 0)) or (backward and bool(cfg.get("bwd_dot_fp32", 0)))
    if x.device.type != "cuda" and not targets_gpu(x.device):
        return want or x.dtype == torch.bfloat16, "ieee"
    if want:   # on a GPU, and recording on CPU for the AOT build (the kernel a GPU runs)
        # "dot_fp32" asks for fp32 accuracy (tf32x3); the backward's "bwd_dot_fp32" for operands
        # finer than bf16: tf32 (10-bit mantissa, one tensor-core pass) - the inputs' own 16-bit
        # values are exact in it, the computed operands (decayed q/k, scores, states) keep the
        # 10 bits that fp16 operands keep on CPU, where the error bounds are tested
        if cfg.get("dot_fp32", 0):
            return True, "ieee" if torch.version.hip else "tf32x3"
        return True, "ieee" if torch.version.hip else "tf32"
    return False, "tf32"


def state_dtype(x, dot):
    """The dtype of the stored chunk-boundary states: that of the dot operands that read them.
    With 16-bit operands (16-bit inputs, the forward by default) the states are stored in the input
    dtype, as fla does - the dot rounds them to it anyway, so this costs no accuracy and halves
    their traffic; with fp32 operands (fp32 inputs, "dot_fp32", the backward's "bwd_dot_fp32")
    they stay fp32: rounding them would lose what those dots keep (mLSTM's bf16 gate gradients
    exceed their bound with 16-bit states read by fp32 dots)."""
    return torch.float32 if dot[0] else x.dtype


def grad_dtype_of(x, grad_dtype):
    """The dtype of x's gradient: fp32 for an fp32 x (a per-token scalar v beside 16-bit q, k),
    else ``grad_dtype``."""
    return torch.float32 if x.dtype == torch.float32 else grad_dtype
