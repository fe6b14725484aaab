"""arnorm: fused all-reduce + residual add + RMSNorm for tensor-parallel inference.

Pure ctypes over libarnorm.so (found through $ARNORM_LIBRARY, next to this package, or in
../../build of a source tree; see arnorm._lib). Importing needs neither torch nor numpy;
the library is loaded on first use.

Any buffers (numpy arrays, array.array, torch tensors, addresses), any backend:

    import arnorm
    uid = arnorm.get_unique_id()                 # on one rank; send the 256 bytes to all
    comm = arnorm.Communicator(nranks, uid, rank, backend="cpu")
    norm_out, residual_out = comm.allreduce_residual_rmsnorm(partial, residual, weight,
                                                             eps=1e-6, weight_bias=1.0)

PyTorch engines (the drop-in helper; imports torch):

    from arnorm.torch_helper import fused_allreduce_gemma_rms_norm, can_fuse, max_token_num
    normed, residual = fused_allreduce_gemma_rms_norm(hidden_states, residual, norm)

Every failure of the library raises an ArnormError subclass (ArnormInvalidArgumentError,
ArnormTimeoutError, ...) whose message carries arnormGetErrorString and
arnormGetLastError of the communicator.
"""

from ._lib import (
    ARNORM_CONFIG_MAGIC,
    ARNORM_CONFIG_UNDEF_INT,
    ARNORM_CONFIG_UNDEF_LL,
    ARNORM_MAX_HIDDEN,
    ARNORM_UNIQUE_ID_BYTES,
    ARNORM_VERSION,
    Algo,
    ArnormCudaError,
    ArnormError,
    ArnormInternalError,
    ArnormInvalidArgumentError,
    ArnormInvalidUsageError,
    ArnormLibraryNotFound,
    ArnormNcclError,
    ArnormNotSupportedError,
    ArnormOutOfMemoryError,
    ArnormRemoteError,
    ArnormSystemError,
    ArnormTimeoutError,
    Backend,
    DataType,
    Reason,
    Result,
    arnormConfig_t,
    arnormFuseInfo_t,
    arnormUniqueId,
    available,
    candidate_paths,
    default_max_tokens,
    error_string,
    library_path,
    load,
    make_config,
    reason_string,
    algo_string,
    version,
)
from .comm import Communicator, FuseInfo, get_unique_id, to_dtype

__version__ = "0.1.0"


def __getattr__(name):
    # The torch helper is imported on demand so that `import arnorm` never needs torch.
    if name in ("fused_allreduce_gemma_rms_norm", "can_fuse", "max_token_num", "TorchCommunicator",
                "init_communicator", "torch_helper"):
        import importlib

        th = importlib.import_module(__name__ + ".torch_helper")
        return th if name == "torch_helper" else getattr(th, name)
    raise AttributeError("module 'arnorm' has no attribute %r" % name)


__all__ = [
    "Communicator",
    "FuseInfo",
    "get_unique_id",
    "to_dtype",
    "make_config",
    "default_max_tokens",
    "version",
    "library_path",
    "available",
    "Result",
    "DataType",
    "Backend",
    "Algo",
    "Reason",
    "ArnormError",
    "ArnormInvalidArgumentError",
    "ArnormInvalidUsageError",
    "ArnormSystemError",
    "ArnormCudaError",
    "ArnormNcclError",
    "ArnormTimeoutError",
    "ArnormRemoteError",
    "ArnormOutOfMemoryError",
    "ArnormNotSupportedError",
    "ArnormInternalError",
    "ArnormLibraryNotFound",
]
