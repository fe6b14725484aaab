"""Communicator: one rank's arnorm communicator, over any buffers.

Works on whatever holds memory: numpy arrays (uint16 arrays hold bf16 bits; ml_dtypes
bfloat16 works too), torch tensors, array.array / bytearray / memoryview (buffer
protocol), or raw addresses (int) with explicit tokens, hidden and dtype. On the CPU
backend buffers are host memory and calls are synchronous; on the CUDA backend they are
device pointers and calls are ordered on `stream` (a cudaStream_t as int, or anything with
a `cuda_stream` attribute such as torch.cuda.Stream; None is the legacy stream).
"""

import ctypes
from collections import namedtuple

from . import _lib
from ._lib import Algo, Backend, DataType, Reason, Result

FuseInfo = namedtuple("FuseInfo", "can_fuse algo reason max_tokens reason_text")

_DTYPE_NAMES = {
    "bf16": DataType.Bfloat16,
    "bfloat16": DataType.Bfloat16,
    "fp16": DataType.Float16,
    "float16": DataType.Float16,
    "half": DataType.Float16,
    "fp32": DataType.Float32,
    "float32": DataType.Float32,
    "float": DataType.Float32,
}


def to_dtype(dtype):
    """DataType from a DataType/int, a name ('bf16', 'float16', ...), a torch dtype or a
    numpy dtype. Raises ValueError for anything arnorm does not store."""
    if isinstance(dtype, DataType):
        return dtype
    if isinstance(dtype, int):
        return DataType(dtype)
    name = str(getattr(dtype, "name", None) or dtype)
    name = name.replace("torch.", "").lower()
    if name in _DTYPE_NAMES:
        return _DTYPE_NAMES[name]
    raise ValueError("arnorm stores bf16, fp16 or fp32, not %s" % (dtype,))


def _dtype_of(dtype, buf, name, default=None):
    """The call's dtype: `dtype` when given, else the buffer's own, else `default`; a
    ValueError naming `name` when none of them is known."""
    if dtype is not None:
        return to_dtype(dtype)
    if buf.dtype is not None:
        return buf.dtype
    if default is not None:
        return default
    raise ValueError("dtype: cannot be inferred from %s; pass dtype=" % name)


def try_dtype(dtype):
    try:
        return to_dtype(dtype)
    except (ValueError, TypeError):
        return None


class _Buf:
    """Address, element count, dtype (or None when unknown) and shape of one buffer."""

    __slots__ = ("ptr", "count", "dtype", "shape", "row_stride", "keep", "obj")

    def __init__(self, ptr, count=None, dtype=None, shape=None, row_stride=None, keep=None, obj=None):
        self.ptr = ptr
        self.count = count
        self.dtype = dtype
        self.shape = shape
        self.row_stride = row_stride
        self.keep = keep
        self.obj = obj


_MV_FORMATS = {"f": DataType.Float32, "e": DataType.Float16, "H": DataType.Bfloat16, "h": DataType.Bfloat16}


def _is_torch_tensor(obj):
    return hasattr(obj, "data_ptr") and hasattr(obj, "element_size") and hasattr(obj, "is_contiguous")


def as_buffer(obj, name, writable=False, dtype=None, contiguous=True):
    """A _Buf for `obj`; raises ValueError / TypeError with the argument's name."""
    if obj is None:
        return _Buf(None)
    if isinstance(obj, _Buf):
        return obj
    if isinstance(obj, bool):
        raise TypeError("%s: expected a buffer or an address, got bool" % name)
    if isinstance(obj, int):
        return _Buf(obj or None, dtype=dtype, obj=obj)
    if isinstance(obj, ctypes.c_void_p):
        return _Buf(obj.value, dtype=dtype, obj=obj)
    if _is_torch_tensor(obj):
        dt = try_dtype(obj.dtype)
        if contiguous and not obj.is_contiguous():
            raise ValueError("%s: tensor is not contiguous" % name)
        shape = tuple(obj.shape)
        rs = obj.stride(0) if obj.dim() == 2 else None
        return _Buf(obj.data_ptr(), obj.numel(), dt, shape, rs, obj=obj)
    ai = getattr(obj, "__array_interface__", None)
    if ai is not None:  # numpy and friends
        ptr, readonly = ai["data"]
        if writable and readonly:
            raise ValueError("%s: array is read-only" % name)
        shape = tuple(ai["shape"])
        count = 1
        for s in shape:
            count *= s
        dt = None
        descr = getattr(obj, "dtype", None)
        dname = getattr(descr, "name", "")
        ts = ai["typestr"]
        if dname == "bfloat16":
            dt = DataType.Bfloat16
        elif ts[1:] == "f4":
            dt = DataType.Float32
        elif ts[1:] == "f2":
            dt = DataType.Float16
        elif ts[1:] in ("u2", "i2"):
            dt = DataType.Bfloat16  # 16-bit integers hold bf16 bits
        if ts[0] == ">":
            raise ValueError("%s: big-endian arrays are not supported" % name)
        strides = ai.get("strides")
        itemsize = int(ts[2:])
        if strides is not None and contiguous:
            expect, ok = itemsize, True
            for s, st in zip(reversed(shape), reversed(strides)):
                if s != 1 and st != expect:
                    ok = False
                expect *= s
            if not ok:
                raise ValueError("%s: array is not C-contiguous" % name)
        rs = None
        if len(shape) == 2:
            rs = (strides[0] // itemsize) if strides is not None else shape[1]
        return _Buf(ptr or None, count, dt, shape, rs, obj=obj)
    try:
        mv = memoryview(obj)
    except TypeError:
        raise TypeError(
            "%s: expected a numpy array, a torch tensor, a buffer or an address, got %s"
            % (name, type(obj).__name__)
        ) from None
    if not mv.c_contiguous:
        raise ValueError("%s: buffer is not C-contiguous" % name)
    if writable and mv.readonly:
        raise ValueError("%s: buffer is read-only" % name)
    fmt = mv.format.lstrip("@=<")
    dt = _MV_FORMATS.get(fmt)
    itemsize = mv.itemsize
    if dt is None and dtype is not None:
        itemsize = _lib.DTYPE_SIZE[to_dtype(dtype)]
    count = mv.nbytes // itemsize if itemsize else 0
    if mv.nbytes == 0:
        raise ValueError("%s: buffer is empty" % name)
    if mv.readonly:
        keep = (ctypes.c_char * mv.nbytes).from_buffer_copy(mv)
    else:
        keep = (ctypes.c_char * mv.nbytes).from_buffer(mv.cast("B"))
    shape = tuple(mv.shape) if mv.ndim == 2 else None
    rs = shape[1] if shape else None
    return _Buf(ctypes.addressof(keep), count, dt, shape, rs, keep=keep, obj=obj)


def _alloc_like(obj, count, dtype):
    """A new buffer of `count` elements of `dtype`, of the same kind as `obj`."""
    if _is_torch_tensor(obj):
        return obj.new_empty(obj.shape)
    if hasattr(obj, "__array_interface__") and hasattr(obj, "copy"):
        import numpy as np

        return np.empty_like(obj)
    import array

    if isinstance(obj, array.array):
        out = array.array(obj.typecode)
        out.frombytes(bytes(count * _lib.DTYPE_SIZE[dtype]))
        return out
    return bytearray(count * _lib.DTYPE_SIZE[dtype])


def _stream_ptr(stream):
    if stream is None:
        return None
    if isinstance(stream, int):
        return stream or None
    if isinstance(stream, ctypes.c_void_p):
        return stream.value
    cs = getattr(stream, "cuda_stream", None)
    if cs is not None:
        return int(cs) or None
    raise TypeError("stream: expected a cudaStream_t as int or an object with .cuda_stream")


class Communicator:
    """One rank of an arnorm group (arnormComm_t).

    Communicator(nranks, unique_id, rank, config=None, **config_fields): collective over the
    nranks processes (arnormCommInitRank); unique_id is the 256 bytes of get_unique_id()
    from one rank. Config fields (see _lib.make_config): backend ('auto'|'cpu'|'cuda'),
    algo, fuse_max_bytes, oneshot_max_bytes, workspace_bytes, timeout_ms, use_pdl,
    check_mode. On the CUDA backend the current device is the rank's GPU.
    """

    def __init__(self, nranks, unique_id, rank, config=None, **config_fields):
        self._handle = None
        lib = _lib.load()
        if isinstance(unique_id, _lib.arnormUniqueId):
            uid = unique_id
        else:
            uid = _lib.arnormUniqueId.from_bytes(unique_id)
        cfg = _lib.make_config(config, **config_fields)
        h = _lib.arnormComm_t()
        r = lib.arnormCommInitRank(ctypes.byref(h), int(nranks), uid, int(rank), ctypes.byref(cfg))
        _lib.raise_for(r, "arnormCommInitRank", None)
        self._handle = h

    @classmethod
    def _wrap(cls, handle):
        self = cls.__new__(cls)
        self._handle = handle
        return self

    @classmethod
    def from_nccl(cls, nccl_comm, config=None, **config_fields):
        """Joins an existing NCCL communicator (arnormCommInitFromNccl); collective over its
        ranks. `nccl_comm` is the ncclComm_t as int, ctypes.c_void_p, or an object with a
        `.comm`/`.value` holding one (vLLM's PyNcclCommunicator). arnorm never frees it."""
        ptr = nccl_comm
        for attr in ("comm", "value"):
            if not isinstance(ptr, int) and hasattr(ptr, attr):
                ptr = getattr(ptr, attr)
        if isinstance(ptr, ctypes.c_void_p):
            ptr = ptr.value
        if not isinstance(ptr, int) or not ptr:
            raise TypeError("from_nccl: expected an ncclComm_t handle, got %r" % (nccl_comm,))
        cfg = _lib.make_config(config, **config_fields)
        h = _lib.arnormComm_t()
        r = _lib.load().arnormCommInitFromNccl(ctypes.byref(h), ctypes.c_void_p(ptr), ctypes.byref(cfg))
        _lib.raise_for(r, "arnormCommInitFromNccl", None)
        return cls._wrap(h)

    @classmethod
    def init_all(cls, ndev, devlist=None, config=None, **config_fields):
        """Single process, ndev GPUs (arnormCommInitAll): a list of ndev communicators."""
        cfg = _lib.make_config(config, **config_fields)
        handles = (_lib.arnormComm_t * ndev)()
        dl = None
        if devlist is not None:
            if len(devlist) != ndev:
                raise ValueError("devlist must have ndev entries")
            dl = (ctypes.c_int * ndev)(*devlist)
        r = _lib.load().arnormCommInitAll(handles, int(ndev), dl, ctypes.byref(cfg))
        _lib.raise_for(r, "arnormCommInitAll", None)
        return [cls._wrap(_lib.arnormComm_t(handles[i])) for i in range(ndev)]

    # ------------------------------------------------------------ life cycle

    @property
    def handle(self):
        """The arnormComm_t as ctypes.c_void_p (raises once destroyed)."""
        if self._handle is None:
            raise _lib.ArnormInvalidUsageError("arnorm communicator already destroyed",
                                               result=Result.InvalidUsage)
        return self._handle

    @property
    def destroyed(self):
        return self._handle is None

    def _call(self, function, *args):
        h = self.handle
        _lib.raise_for(getattr(_lib.load(), function)(h, *args), function, h)

    def destroy(self):
        """arnormCommDestroy: waits for this rank's work and frees everything."""
        if self._handle is None:
            return
        h, self._handle = self._handle, None
        _lib.raise_for(_lib.load().arnormCommDestroy(h), "arnormCommDestroy", None)

    def abort(self):
        """arnormCommAbort: frees everything without waiting for peers."""
        if self._handle is None:
            return
        h, self._handle = self._handle, None
        _lib.raise_for(_lib.load().arnormCommAbort(h), "arnormCommAbort", None)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.destroy()
        else:
            self.abort()
        return False

    def __repr__(self):
        if self._handle is None:
            return "<arnorm.Communicator destroyed>"
        return "<arnorm.Communicator rank %d of %d, %s backend>" % (
            self.rank, self.size, self.backend.name.lower())

    # ------------------------------------------------------------ queries

    def _int_query(self, function, ctype=ctypes.c_int):
        v = ctype()
        self._call(function, ctypes.byref(v))
        return v.value

    @property
    def rank(self):
        return self._int_query("arnormCommUserRank")

    @property
    def size(self):
        return self._int_query("arnormCommCount")

    world_size = size

    @property
    def backend(self):
        return Backend(self._int_query("arnormCommGetBackend"))

    @property
    def workspace_bytes(self):
        return self._int_query("arnormCommWorkspaceBytes", ctypes.c_size_t)

    def async_error(self):
        """Result.Success, or the error (timeout, remote error) that broke the comm."""
        return Result(self._int_query("arnormCommGetAsyncError"))

    def last_error(self):
        return _lib.last_error(self.handle)

    def set_algo(self, algo):
        """Forces the algo of later fused calls (every rank must set the same)."""
        self._call("arnormCommSetAlgo", int(_lib.to_algo(algo)))

    # ------------------------------------------------------------ operations

    def _resolve(self, bufs, dtype, tokens, hidden):
        """Common dtype and [tokens x hidden] of a call's buffers (the first is the lead)."""
        lead = bufs[0][1]
        dt = _dtype_of(dtype, lead, bufs[0][0])
        for name, b in bufs:
            if b.ptr is not None and b.dtype is not None and b.dtype != dt and dtype is None:
                raise ValueError("%s: dtype %s differs from %s" % (name, b.dtype.name, dt.name))
        if hidden is None:
            if lead.shape is not None and len(lead.shape) >= 2:
                hidden = lead.shape[-1]
            else:
                raise ValueError("hidden: cannot be inferred from a flat buffer; pass hidden=")
        hidden = int(hidden)
        if hidden < 1:
            raise ValueError("hidden: must be >= 1, got %d" % hidden)
        if tokens is None:
            if lead.count is None:
                raise ValueError("tokens: cannot be inferred from an address; pass tokens=")
            if hidden <= 0 or lead.count % hidden:
                raise ValueError("%s: %d elements is not a whole number of rows of %d"
                                 % (bufs[0][0], lead.count, hidden))
            tokens = lead.count // hidden
        tokens = int(tokens)
        n = tokens * hidden
        for name, b in bufs:
            if b.ptr is not None and b.count is not None and b.count < n:
                raise ValueError("%s: %d elements, the call needs %d (%d x %d)"
                                 % (name, b.count, n, tokens, hidden))
        return dt, tokens, hidden

    def _norm_call(self, function, input_name, inp, residual, residual_out, norm_out, weight,
                   eps, weight_bias, tokens, hidden, dtype, weight_dtype, stream):
        bi = as_buffer(inp, input_name, dtype=dtype)
        br = as_buffer(residual, "residual", dtype=dtype)
        dt, tokens, hidden = self._resolve([(input_name, bi), ("residual", br)], dtype, tokens, hidden)
        if norm_out is None:
            norm_out = _alloc_like(inp, tokens * hidden, dt)
        if residual_out is None and residual is not None:
            residual_out = _alloc_like(inp, tokens * hidden, dt)
        bro = as_buffer(residual_out, "residual_out", writable=True, dtype=dt)
        bno = as_buffer(norm_out, "norm_out", writable=True, dtype=dt)
        self._resolve([(input_name, bi), ("residual_out", bro), ("norm_out", bno)], dt, tokens, hidden)
        bw = as_buffer(weight, "weight", dtype=weight_dtype)
        wt = _dtype_of(weight_dtype, bw, "weight", default=dt)
        if bw.count is not None and bw.count < hidden:
            raise ValueError("weight: %d elements, hidden is %d" % (bw.count, hidden))
        r = getattr(_lib.load(), function)(
            bi.ptr, br.ptr, bro.ptr, bno.ptr, bw.ptr, int(wt), float(eps), float(weight_bias),
            tokens, hidden, int(dt), self.handle, _stream_ptr(stream))
        _lib.raise_for(r, function, self._handle)
        return norm_out, residual_out

    def allreduce_residual_rmsnorm(self, partial, residual, weight, eps=1e-6, weight_bias=1.0,
                                   residual_out=None, norm_out=None, tokens=None, hidden=None,
                                   dtype=None, weight_dtype=None, stream=None):
        """arnormAllReduceResidualRMSNorm. Returns (norm_out, residual_out), allocating the
        outputs left None (of the same kind as `partial`). residual_out may be `residual` or
        `partial` (in place) and norm_out may be `partial`. weight_bias 1.0 is Gemma
        (scale 1 + w), 0.0 is Llama (scale w). tokens, hidden and dtype are taken from
        `partial` when it carries them (a 2-D array or tensor)."""
        return self._norm_call("arnormAllReduceResidualRMSNorm", "partial", partial, residual,
                               residual_out, norm_out, weight, eps, weight_bias, tokens, hidden,
                               dtype, weight_dtype, stream)

    def residual_rmsnorm(self, input, residual, weight, eps=1e-6, weight_bias=1.0,
                         residual_out=None, norm_out=None, tokens=None, hidden=None, dtype=None,
                         weight_dtype=None, stream=None):
        """arnormResidualRMSNorm on this rank alone; residual may be None (plain RMSNorm,
        residual_out is then None). Returns (norm_out, residual_out)."""
        return self._norm_call("arnormResidualRMSNorm", "input", input, residual, residual_out,
                               norm_out, weight, eps, weight_bias, tokens, hidden, dtype,
                               weight_dtype, stream)

    def all_reduce(self, send, recv=None, count=None, dtype=None, stream=None):
        """arnormAllReduce (sum; fp32 in rank order, one rounding). recv may be send (in
        place) or None (allocated). Returns recv."""
        bs = as_buffer(send, "send", dtype=dtype)
        dt = _dtype_of(dtype, bs, "send")
        if count is None:
            if bs.count is None:
                raise ValueError("count: cannot be inferred from an address; pass count=")
            count = bs.count
        if recv is None:
            recv = _alloc_like(send, count, dt)
        br = as_buffer(recv, "recv", writable=True, dtype=dt)
        for name, b in (("send", bs), ("recv", br)):
            if b.count is not None and b.count < count:
                raise ValueError("%s: %d elements, count is %d" % (name, b.count, count))
        r = _lib.load().arnormAllReduce(bs.ptr, br.ptr, int(count), int(dt), self.handle,
                                        _stream_ptr(stream))
        _lib.raise_for(r, "arnormAllReduce", self._handle)
        return recv

    def can_fuse(self, buf, tokens=None, hidden=None, row_stride=None, dtype=None):
        """arnormCanFuse: FuseInfo(can_fuse, algo, reason, max_tokens, reason_text)."""
        b = as_buffer(buf, "buf", dtype=dtype, contiguous=False)
        dt = _dtype_of(dtype, b, "buf")
        if hidden is None:
            if b.shape is None or len(b.shape) < 2:
                raise ValueError("hidden: pass hidden= for a flat buffer")
            hidden = b.shape[-1]
        if tokens is None:
            if b.shape is not None and len(b.shape) >= 2:
                tokens = b.count // b.shape[-1] if b.shape[-1] else 0
            elif b.count is not None:
                tokens = b.count // int(hidden)
            else:
                raise ValueError("tokens: pass tokens= for an address")
        if row_stride is None:
            row_stride = b.row_stride if b.row_stride is not None else hidden
        info = _lib.arnormFuseInfo_t()
        r = _lib.load().arnormCanFuse(self.handle, b.ptr, int(tokens), int(hidden),
                                      int(row_stride), int(dt), ctypes.byref(info))
        _lib.raise_for(r, "arnormCanFuse", self._handle)
        reason = Reason(info.reason)
        return FuseInfo(bool(info.canFuse), Algo(info.algo), reason, int(info.maxTokens),
                        _lib.reason_string(reason))


def get_unique_id():
    """256 bytes from arnormGetUniqueId; send them verbatim to every rank."""
    return _lib.get_unique_id()
