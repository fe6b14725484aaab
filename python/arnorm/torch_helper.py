"""PyTorch side of arnorm: a communicator from a process group and the engine helper.

    import arnorm.torch_helper as ath

    ath.init_communicator(group)        # optional: collective; else made on first use
    normed, residual = ath.fused_allreduce_gemma_rms_norm(hidden_states, residual, norm)

replaces

    hidden_states = tensor_model_parallel_all_reduce(hidden_states)
    normed, residual = norm(hidden_states, residual)

`norm` is any module with `weight` and `variance_epsilon` (or `eps`): a Gemma RMSNorm
(scale 1 + w, weight_bias=1.0, the default) or, with weight_bias=0.0, a Llama RMSNorm.

Routing of a call, the same on every rank (it depends only on shapes, dtypes and
devices, which tensor parallelism keeps equal):
  * CUDA tensor on the communicator's GPU, bf16/fp16/fp32, contiguous, 1 <= hidden <= 65536:
    arnormAllReduceResidualRMSNorm on torch.cuda.current_stream(); inside the library that
    is the fused kernel, or NCCL + the norm kernel when over budget or not fusable.
  * anything else (CPU tensors, other dtypes, non-contiguous, hidden > 65536): the torch
    fallback, torch.distributed.all_reduce + the norm in PyTorch (fp32 math). Never an error.
  * a CUDA tensor on another GPU than the communicator's, mismatched shapes or devices
    between hidden_states, residual and weight: ValueError.

CUDA graphs: create the communicator before capture (init_communicator, or one eager call);
calls inside torch.cuda.graph capture then record the kernel on the capture stream, and
the library keeps its rotation state on the device so replays stay in step.
"""

import threading
import warnings

import torch
import torch.distributed as dist

from . import _lib
from ._lib import Backend, DataType, Reason
from .comm import Communicator

_TORCH_DTYPES = {
    torch.bfloat16: DataType.Bfloat16,
    torch.float16: DataType.Float16,
    torch.float32: DataType.Float32,
}


def torch_dtype_to_arnorm(dtype):
    """DataType of a torch dtype, or None when arnorm does not store it."""
    return _TORCH_DTYPES.get(dtype)


def _to_arnorm_dtype(dtype):
    if isinstance(dtype, torch.dtype):
        dt = _TORCH_DTYPES.get(dtype)
        if dt is None:
            raise ValueError("arnorm stores bf16, fp16 or fp32, not %s" % dtype)
        return dt
    from .comm import to_dtype

    return to_dtype(dtype)


def _dist_ready():
    return dist.is_available() and dist.is_initialized()


def _group_rank_world(group):
    if not _dist_ready():
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def _group_key(group):
    if group is None and _dist_ready():
        group = dist.group.WORLD
    return id(group) if group is not None else None


def nccl_comm_handle(group=None, device=None):
    """The ncclComm_t (int) behind a ProcessGroupNCCL, through its private _comm_ptr().
    Runs a tiny all_reduce first when the group has not created its communicator yet
    (collective then). Raises RuntimeError when this torch does not expose it."""
    if group is None:
        group = dist.group.WORLD
    dev = torch.device("cuda", torch.cuda.current_device()) if device is None else torch.device(device)
    try:
        backend = group._get_backend(dev)
    except Exception as e:  # pragma: no cover - torch version dependent
        raise RuntimeError("process group has no CUDA backend: %s" % e) from None
    fn = getattr(backend, "_comm_ptr", None)
    if fn is None:
        raise RuntimeError("%s does not expose _comm_ptr() in this torch" % type(backend).__name__)
    ptr = int(fn() if callable(fn) else fn)
    if ptr == 0:
        t = torch.zeros(1, device=dev)
        dist.all_reduce(t, group=group)
        torch.cuda.synchronize(dev)
        ptr = int(fn() if callable(fn) else fn)
    if ptr == 0:
        raise RuntimeError("process group returned a null NCCL communicator")
    return ptr


class TorchCommunicator:
    """An arnorm communicator bound to one device and one process group.

    TorchCommunicator(group=None, device=None, **config): collective over the group; rank 0
    of the group makes the unique id and it is broadcast through the group
    (broadcast_object_list). device defaults to the current CUDA device when CUDA is
    available (CUDA backend), else the CPU (CPU backend, torch CPU tensors). Without an
    initialized torch.distributed it is a one-rank communicator.
    TorchCommunicator.from_nccl(handle, device=None, group=None, **config) joins an
    existing NCCL communicator instead (arnormCommInitFromNccl).
    """

    def __init__(self, group=None, device=None, comm=None, **config):
        if _dist_ready() and group is None:
            group = dist.group.WORLD
        self.group = group
        self.rank, self.world_size = _group_rank_world(group)
        if device is None:
            device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        self.device = device
        if comm is not None:  # wrap an existing arnorm.Communicator
            self.comm = comm
            self.rank, self.world_size = comm.rank, comm.size
            return
        config.setdefault("backend", Backend.Cuda if device.type == "cuda" else Backend.Cpu)
        uid = None
        if self.rank == 0:
            uid = _lib.get_unique_id()
        if self.world_size > 1:
            obj = [uid]
            src = dist.get_global_rank(group, 0)
            if device.type == "cuda":
                with torch.cuda.device(device):  # NCCL groups move the object through it
                    dist.broadcast_object_list(obj, src=src, group=group)
            else:
                dist.broadcast_object_list(obj, src=src, group=group)
            uid = obj[0]
            if not isinstance(uid, bytes) or len(uid) != _lib.ARNORM_UNIQUE_ID_BYTES:
                raise RuntimeError("arnorm: bad unique id received from group rank 0")
        if device.type == "cuda":
            with torch.cuda.device(device):
                self.comm = Communicator(self.world_size, uid, self.rank, **config)
        else:
            self.comm = Communicator(self.world_size, uid, self.rank, **config)

    @classmethod
    def from_nccl(cls, nccl_comm, device=None, group=None, **config):
        if device is None:
            device = torch.device("cuda", torch.cuda.current_device())
        device = torch.device(device)
        if device.type != "cuda":
            raise ValueError("from_nccl: an NCCL communicator lives on a CUDA device, not %s" % device)
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        with torch.cuda.device(device):
            comm = Communicator.from_nccl(nccl_comm, **config)
        self = cls(group=group, device=device, comm=comm)
        self.rank, self.world_size = comm.rank, comm.size
        return self

    @property
    def backend(self):
        return self.comm.backend

    def destroy(self):
        self.comm.destroy()

    def _stream(self):
        if self.device.type != "cuda":
            return None
        return torch.cuda.current_stream(self.device).cuda_stream

    def can_fuse(self, hidden_states):
        """FuseCheck for a call on hidden_states (see can_fuse())."""
        return _can_fuse(self, hidden_states)

    def allreduce_residual_rmsnorm(self, hidden_states, residual, weight, eps, weight_bias=1.0):
        return _fused(self, hidden_states, residual, weight, eps, weight_bias)

    def __repr__(self):
        return "<arnorm.TorchCommunicator rank %d of %d on %s>" % (self.rank, self.world_size, self.device)


class FuseCheck(tuple):
    """(ok, max_token_num), with .reason (Reason), .reason_text and .algo."""

    def __new__(cls, ok, max_token_num, reason, reason_text="", algo=None):
        self = tuple.__new__(cls, (bool(ok), int(max_token_num)))
        self.reason = Reason(reason)
        self.reason_text = reason_text or _lib.reason_string(reason)
        self.algo = algo
        return self

    @property
    def ok(self):
        return self[0]

    @property
    def max_token_num(self):
        return self[1]

    def __repr__(self):
        return "FuseCheck(ok=%s, max_token_num=%d, reason=%s: %s)" % (
            self[0], self[1], self.reason.name, self.reason_text)


# ---------------------------------------------------------------- communicator cache

_comms = {}
_failed = {}
_lock = threading.Lock()


def init_communicator(group=None, device=None, **config):
    """Creates (collective over the group) and caches the communicator of (group, device);
    returns it. Call before CUDA graph capture."""
    if device is None:
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    key = (_group_key(group), str(device))
    with _lock:
        c = _comms.get(key)
        if c is None:
            c = TorchCommunicator(group=group, device=device, **config)
            _comms[key] = c
        return c


def set_communicator(comm, group=None):
    """Registers an existing TorchCommunicator for (group, comm.device)."""
    with _lock:
        _comms[(_group_key(group), str(comm.device))] = comm


def get_communicator(group=None, device=None, create=True):
    """The cached communicator of (group, device), created (collectively) when `create`.
    Returns None when the library cannot serve this device (not built with CUDA, ...):
    the caller falls back to torch."""
    if device is None:
        device = torch.device("cuda", torch.cuda.current_device())
    device = torch.device(device)
    key = (_group_key(group), str(device))
    c = _comms.get(key)
    if c is not None or not create or key in _failed:
        return c
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        raise RuntimeError(
            "arnorm: no communicator for %s yet and CUDA graph capture is on; call "
            "arnorm.torch_helper.init_communicator(group) (or one eager call) before capture" % device)
    try:
        return init_communicator(group, device)
    except (_lib.ArnormNotSupportedError, _lib.ArnormLibraryNotFound) as e:
        # Every rank sees the same failure (init reports on all ranks): all fall back.
        _failed[key] = str(e)
        warnings.warn("arnorm unavailable for %s, using the torch fallback: %s" % (device, e))
        return None


def destroy_communicators():
    """Destroys every cached communicator (e.g. before dist.destroy_process_group)."""
    with _lock:
        for c in _comms.values():
            try:
                c.destroy()
            except _lib.ArnormError:
                pass
        _comms.clear()
        _failed.clear()


# ---------------------------------------------------------------- routing


def _route(comm_dev, hidden_states, residual, weight):
    """Why the torch fallback is taken (a Reason), or None when arnorm takes the call.
    Raises ValueError for calls that cannot work anywhere."""
    x = hidden_states
    if not isinstance(x, torch.Tensor):
        raise TypeError("hidden_states must be a torch.Tensor")
    if residual is not None:
        if residual.shape != x.shape:
            raise ValueError("residual shape %s differs from hidden_states shape %s"
                             % (tuple(residual.shape), tuple(x.shape)))
        if residual.device != x.device:
            raise ValueError("residual is on %s, hidden_states on %s" % (residual.device, x.device))
        if residual.dtype != x.dtype:
            raise ValueError("residual dtype %s differs from hidden_states dtype %s"
                             % (residual.dtype, x.dtype))
    if x.dim() < 1:
        raise ValueError("hidden_states must have a hidden dimension")
    H = x.shape[-1]
    if weight is not None:
        if weight.numel() != H:
            raise ValueError("norm weight has %d elements, hidden size is %d" % (weight.numel(), H))
        if weight.device != x.device:
            raise ValueError("norm weight is on %s, hidden_states on %s" % (weight.device, x.device))
    if x.device.type != "cuda" and not (comm_dev is not None and comm_dev.type == "cpu"):
        return Reason.NotDevicePointer  # CPU tensors use arnorm only with a CPU communicator
    if comm_dev is not None and x.device != comm_dev:
        raise ValueError("hidden_states is on %s but the arnorm communicator is bound to %s"
                         % (x.device, comm_dev))
    if x.dtype not in _TORCH_DTYPES:
        return Reason.UnsupportedDtype
    if not x.is_contiguous() or (residual is not None and not residual.is_contiguous()):
        return Reason.NotContiguous
    if H < 1 or H > _lib.ARNORM_MAX_HIDDEN:
        return Reason.Disabled
    return None


def _norm_params(norm):
    w = getattr(norm, "weight", None)
    if w is None:
        raise TypeError("norm must have a .weight (a GemmaRMSNorm / RMSNorm module)")
    eps = getattr(norm, "variance_epsilon", None)
    if eps is None:
        eps = getattr(norm, "eps", None)
    if eps is None:
        raise TypeError("norm must have .variance_epsilon (or .eps)")
    return w, float(eps)


def torch_residual_rms_norm(x, residual, weight, eps, weight_bias=1.0):
    """The norm in PyTorch, the arithmetic of arnorm: h = D(x + residual) is the new residual;
    out = D(float(h) * rsqrt(mean(float(h)^2) + eps) * (weight_bias + float(w)))."""
    h = x + residual if residual is not None else x
    hf = h.float()
    var = hf.pow(2).mean(dim=-1, keepdim=True)
    out = hf * torch.rsqrt(var + eps) * (weight_bias + weight.float())
    return out.to(x.dtype), h


def _torch_all_reduce(x, group, world_size, fallback_device):
    if world_size <= 1:
        return x
    y = x.clone(memory_format=torch.contiguous_format)  # collectives want dense tensors
    if y.device.type == "cpu" and dist.get_backend(group) == "nccl":
        dev = fallback_device if fallback_device is not None and fallback_device.type == "cuda" \
            else torch.device("cuda", torch.cuda.current_device())
        z = y.to(dev)
        dist.all_reduce(z, group=group)
        return z.to(y.device)
    dist.all_reduce(y, group=group)
    return y


def _fallback(group, world_size, hidden_states, residual, weight, eps, weight_bias, dev=None):
    reduced = _torch_all_reduce(hidden_states, group, world_size, dev)
    out, h = torch_residual_rms_norm(reduced, residual, weight, eps, weight_bias)
    if h is hidden_states:
        h = h.clone()  # never hand back the caller's input as the new residual
    return out, h


def _fused(tc, hidden_states, residual, weight, eps, weight_bias):
    x = hidden_states
    H = x.shape[-1]
    x2 = x.view(-1, H)
    T = x2.shape[0]
    norm_out = torch.empty_like(x)
    res_out = torch.empty_like(x)
    if residual is None:
        residual = torch.zeros_like(x)  # new residual = the reduced input
    if T == 0:
        return norm_out, res_out
    dt = _TORCH_DTYPES[x.dtype]
    if weight.dtype == x.dtype or weight.dtype == torch.float32:
        w = weight if weight.is_contiguous() else weight.contiguous()
    else:
        w = weight.float()
    wt = _TORCH_DTYPES[w.dtype]
    lib = _lib.load()
    fn = "arnormAllReduceResidualRMSNorm"
    r = lib.arnormAllReduceResidualRMSNorm(
        x2.data_ptr(), residual.data_ptr(), res_out.data_ptr(), norm_out.data_ptr(),
        w.data_ptr(), int(wt), float(eps), float(weight_bias), T, H, int(dt),
        tc.comm.handle, tc._stream())
    _lib.raise_for(r, fn, tc.comm.handle)
    return norm_out, res_out


def fused_allreduce_gemma_rms_norm(hidden_states, residual, norm, weight_bias=1.0, group=None,
                                   comm=None):
    """(normed_output, new_residual) = norm(all_reduce(hidden_states), residual), one kernel.

    hidden_states: this rank's partial [tokens, hidden] (any leading shape, last dim hidden).
    residual: the residual stream, same shape (None: plain norm; new_residual is then the
    reduced hidden_states). norm: module with .weight and .variance_epsilon (or .eps).
    weight_bias: 1.0 Gemma (scale 1 + w), 0.0 Llama (scale w). group: the tensor-parallel
    process group (default WORLD); comm: a TorchCommunicator to use instead of the cache.
    Inputs are not modified; both outputs are new tensors.
    """
    weight, eps = _norm_params(norm)
    if comm is not None and not isinstance(comm, TorchCommunicator):
        raise TypeError("comm must be an arnorm.torch_helper.TorchCommunicator (wrap an "
                        "arnorm.Communicator with TorchCommunicator(device=..., comm=c))")
    if comm is not None:
        tc, dev = comm, comm.device
        grp, world = comm.group, comm.world_size
    else:
        grp = group if group is not None else (dist.group.WORLD if _dist_ready() else None)
        world = _group_rank_world(grp)[1]
        tc, dev = None, None
    reason = _route(dev, hidden_states, residual, weight)
    if reason is None and tc is None:
        xd = hidden_states.device
        if xd.index != torch.cuda.current_device() and \
                (_group_key(group), str(xd)) not in _comms:
            raise ValueError(
                "hidden_states is on %s but the current device is cuda:%d; arnorm binds one GPU "
                "per rank (torch.cuda.set_device, or pass comm=)" % (xd, torch.cuda.current_device()))
        tc = get_communicator(group, xd)
        if tc is None:
            reason = Reason.NoWorkspace
    if reason is not None:
        return _fallback(grp, world, hidden_states, residual, weight, eps, weight_bias,
                         dev if dev is not None else None)
    return _fused(tc, hidden_states, residual, weight, eps, weight_bias)


def can_fuse(hidden_states, group=None, comm=None):
    """FuseCheck (ok, max_token_num) with .reason / .reason_text / .algo: would
    fused_allreduce_gemma_rms_norm run the fused kernel on hidden_states? The first call on
    a (group, device) creates its communicator (collective), as the helper does."""
    if comm is None and isinstance(hidden_states, torch.Tensor) and hidden_states.device.type == "cuda":
        comm = get_communicator(group, hidden_states.device)
    return _can_fuse(comm, hidden_states, group)


def _can_fuse(tc, x, group=None):
    dt = _TORCH_DTYPES.get(x.dtype)
    world = tc.world_size if tc is not None else _group_rank_world(group)[1]
    H = x.shape[-1] if x.dim() >= 1 else 0
    budget = 0
    if dt is not None and 1 <= H <= _lib.ARNORM_MAX_HIDDEN:
        try:
            budget = _lib.default_max_tokens(world, H, dt)
        except _lib.ArnormError:
            budget = 0
    if tc is None:
        reason = Reason.NotDevicePointer if x.device.type != "cuda" else Reason.NoWorkspace
        if dt is None:
            reason = Reason.UnsupportedDtype
        return FuseCheck(False, budget, reason)
    reason = _route(tc.device, x, None, None)
    if reason is not None:
        return FuseCheck(False, budget, reason)
    info = tc.comm.can_fuse(x.data_ptr(), tokens=x.numel() // H, hidden=H, row_stride=H, dtype=dt)
    return FuseCheck(info.can_fuse, info.max_tokens, info.reason, info.reason_text, info.algo)


def max_token_num(world_size, hidden_size, dtype, backend="auto"):
    """Default token budget of the fused path for a group of world_size ranks (before config
    and ARNORM_* overrides): arnormDefaultMaxTokens. dtype: torch dtype or name."""
    return _lib.default_max_tokens(int(world_size), int(hidden_size), _to_arnorm_dtype(dtype), backend)


__all__ = [
    "TorchCommunicator",
    "FuseCheck",
    "init_communicator",
    "set_communicator",
    "get_communicator",
    "destroy_communicators",
    "nccl_comm_handle",
    "fused_allreduce_gemma_rms_norm",
    "can_fuse",
    "max_token_num",
    "torch_residual_rms_norm",
    "torch_dtype_to_arnorm",
]
