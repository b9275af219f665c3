"""Memory-saving kernels: fused linear + cross-entropy and a fused RMSNorm.

Each has a pure-PyTorch path (any device) and a Triton path (CUDA, or CPU under
TRITON_INTERPRET=1). Triton is optional: it is imported on first use of a Triton path only.
"""

from memgauge.kernels.fused_linear_cross_entropy import (
    FusedLinearCrossEntropyLoss,
    default_chunk_size,
    fused_linear_cross_entropy,
    triton_available,
)
from memgauge.kernels.rmsnorm import fused_rms_norm, patch_rmsnorm_, unpatch_rmsnorm_

__all__ = [
    "FusedLinearCrossEntropyLoss",
    "default_chunk_size",
    "fused_linear_cross_entropy",
    "fused_rms_norm",
    "patch_rmsnorm_",
    "triton_available",
    "unpatch_rmsnorm_",
]
