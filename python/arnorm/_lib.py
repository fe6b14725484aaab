"""ctypes mirror of include/arnorm.h and the loader of libarnorm.so.

Nothing here imports torch or numpy. The library is loaded lazily, on the first call that
needs it, so the types can be used (and tested) without a built library.

Where the library is looked for, first hit wins:
  1. $ARNORM_LIBRARY (a file, or a folder holding libarnorm.so)
  2. libarnorm.so next to this file (python/arnorm/libarnorm.so, an installed copy)
  3. ../../build/libarnorm.so relative to this package (a source tree built with cmake)
  4. <prefix>/lib*/libarnorm.so when the package was installed under <prefix>/lib*/python
  5. the system loader (LD_LIBRARY_PATH, ldconfig): libarnorm.so, libarnorm.so.0
"""

import ctypes
import enum
import os
import threading

# ---------------------------------------------------------------- constants (arnorm.h)

ARNORM_MAJOR = 0
ARNORM_MINOR = 1
ARNORM_PATCH = 0
ARNORM_VERSION = ARNORM_MAJOR * 10000 + ARNORM_MINOR * 100 + ARNORM_PATCH

ARNORM_UNIQUE_ID_BYTES = 256
ARNORM_CONFIG_MAGIC = 0x61726E6F  # "arno"
ARNORM_CONFIG_UNDEF_INT = -(2**31)  # INT_MIN
ARNORM_CONFIG_UNDEF_LL = -(2**63)  # LLONG_MIN
ARNORM_MAX_HIDDEN = 65536


class Result(enum.IntEnum):
    """arnormResult_t"""

    Success = 0
    InvalidArgument = 1
    InvalidUsage = 2
    SystemError = 3
    CudaError = 4
    NcclError = 5
    Timeout = 6
    RemoteError = 7
    OutOfMemory = 8
    NotSupported = 9
    InternalError = 10
    NumResults = 11


class DataType(enum.IntEnum):
    """arnormDataType_t"""

    Bfloat16 = 0
    Float16 = 1
    Float32 = 2
    NumDataTypes = 3


class Backend(enum.IntEnum):
    """arnormBackend_t"""

    Auto = 0
    Cpu = 1
    Cuda = 2
    NumBackends = 3


class Algo(enum.IntEnum):
    """arnormAlgo_t"""

    Auto = 0
    NormOnly = 1
    OneShot = 2
    TwoShot = 3
    Fallback = 4
    NumAlgos = 5


class Reason(enum.IntEnum):
    """arnormReason_t"""

    None_ = 0
    SingleRank = 1
    NotDevicePointer = 2
    NotContiguous = 3
    Misaligned = 4
    UnsupportedDtype = 5
    OverBudget = 6
    MultiHost = 7
    NoPeerAccess = 8
    NoWorkspace = 9
    Disabled = 10
    NumReasons = 11


DTYPE_SIZE = {DataType.Bfloat16: 2, DataType.Float16: 2, DataType.Float32: 4}

# Reason texts used when the library is not loaded (the library's own strings win).
_REASON_TEXT = {
    Reason.None_: "fused path applies",
    Reason.SingleRank: "one rank: nothing to reduce (norm-only path)",
    Reason.NotDevicePointer: "not device memory of this communicator's GPU",
    Reason.NotContiguous: "not 2-D contiguous (row stride != hidden)",
    Reason.Misaligned: "pointer or row not 16-byte aligned",
    Reason.UnsupportedDtype: "unsupported dtype (bf16, fp16, fp32 only)",
    Reason.OverBudget: "tokens over the fused token budget",
    Reason.MultiHost: "ranks on several hosts",
    Reason.NoPeerAccess: "some pair of GPUs has no peer access",
    Reason.NoWorkspace: "fused workspace unavailable",
    Reason.Disabled: "fused path disabled by config or environment",
}

# ---------------------------------------------------------------- structs (arnorm.h)

arnormComm_t = ctypes.c_void_p
arnormStream_t = ctypes.c_void_p


class arnormUniqueId(ctypes.Structure):
    _fields_ = [("internal", ctypes.c_char * ARNORM_UNIQUE_ID_BYTES)]

    @classmethod
    def from_bytes(cls, data):
        data = bytes(data)
        if len(data) != ARNORM_UNIQUE_ID_BYTES:
            raise ValueError(
                "arnorm unique id must be %d bytes, got %d" % (ARNORM_UNIQUE_ID_BYTES, len(data))
            )
        uid = cls()
        ctypes.memmove(ctypes.addressof(uid), data, ARNORM_UNIQUE_ID_BYTES)
        return uid

    def to_bytes(self):
        return ctypes.string_at(ctypes.addressof(self), ARNORM_UNIQUE_ID_BYTES)


class arnormConfig_t(ctypes.Structure):
    _fields_ = [
        ("size", ctypes.c_size_t),
        ("magic", ctypes.c_uint),
        ("version", ctypes.c_uint),
        ("backend", ctypes.c_int),
        ("algo", ctypes.c_int),
        ("fuseMaxBytes", ctypes.c_longlong),
        ("oneShotMaxBytes", ctypes.c_longlong),
        ("workspaceBytes", ctypes.c_longlong),
        ("timeoutMs", ctypes.c_longlong),
        ("usePdl", ctypes.c_int),
        ("checkMode", ctypes.c_int),
    ]

    def __init__(self, **kwargs):
        # Exactly ARNORM_CONFIG_INITIALIZER, then the caller's fields.
        super().__init__(
            ctypes.sizeof(arnormConfig_t),
            ARNORM_CONFIG_MAGIC,
            ARNORM_VERSION,
            ARNORM_CONFIG_UNDEF_INT,
            ARNORM_CONFIG_UNDEF_INT,
            ARNORM_CONFIG_UNDEF_LL,
            ARNORM_CONFIG_UNDEF_LL,
            ARNORM_CONFIG_UNDEF_LL,
            ARNORM_CONFIG_UNDEF_LL,
            ARNORM_CONFIG_UNDEF_INT,
            ARNORM_CONFIG_UNDEF_INT,
        )
        for k, v in kwargs.items():
            setattr(self, k, v)


class arnormFuseInfo_t(ctypes.Structure):
    _fields_ = [
        ("canFuse", ctypes.c_int),
        ("algo", ctypes.c_int),
        ("reason", ctypes.c_int),
        ("maxTokens", ctypes.c_size_t),
    ]


# Python-friendly names of the config fields -> (C field, kind).
_CONFIG_FIELDS = {
    "backend": ("backend", "int"),
    "algo": ("algo", "int"),
    "fuse_max_bytes": ("fuseMaxBytes", "ll"),
    "oneshot_max_bytes": ("oneShotMaxBytes", "ll"),
    "workspace_bytes": ("workspaceBytes", "ll"),
    "timeout_ms": ("timeoutMs", "ll"),
    "use_pdl": ("usePdl", "int"),
    "check_mode": ("checkMode", "int"),
}

_BACKEND_NAMES = {"auto": Backend.Auto, "cpu": Backend.Cpu, "cuda": Backend.Cuda}
_ALGO_NAMES = {
    "auto": Algo.Auto,
    "oneshot": Algo.OneShot,
    "one_shot": Algo.OneShot,
    "twoshot": Algo.TwoShot,
    "two_shot": Algo.TwoShot,
    "fallback": Algo.Fallback,
    "normonly": Algo.NormOnly,
    "norm_only": Algo.NormOnly,
}


def to_backend(b):
    if isinstance(b, str):
        try:
            return _BACKEND_NAMES[b.lower()]
        except KeyError:
            raise ValueError("unknown arnorm backend %r (auto, cpu, cuda)" % b) from None
    return Backend(int(b))


def to_algo(a):
    if isinstance(a, str):
        try:
            return _ALGO_NAMES[a.lower().replace("-", "_")]
        except KeyError:
            raise ValueError("unknown arnorm algo %r (auto, oneshot, twoshot, fallback)" % a) from None
    return Algo(int(a))


def make_config(config=None, **kwargs):
    """An arnormConfig_t from ARNORM_CONFIG_INITIALIZER with the given fields set.

    `config` may be None, an arnormConfig_t (copied), or a dict; keyword arguments use the
    Python names (backend, algo, fuse_max_bytes, oneshot_max_bytes, workspace_bytes,
    timeout_ms, use_pdl, check_mode) or the C names. None leaves a field unset (default).
    """
    if isinstance(config, arnormConfig_t):
        cfg = arnormConfig_t()
        ctypes.memmove(ctypes.addressof(cfg), ctypes.addressof(config), ctypes.sizeof(cfg))
    else:
        cfg = arnormConfig_t()
        if config:
            kwargs = dict(config, **kwargs)
    c_names = {c: (c, kind) for c, kind in _CONFIG_FIELDS.values()}
    for name, value in kwargs.items():
        if name in _CONFIG_FIELDS:
            field, kind = _CONFIG_FIELDS[name]
        elif name in c_names:
            field, kind = c_names[name]
        else:
            raise TypeError("unknown arnorm config field %r" % name)
        if value is None:
            value = ARNORM_CONFIG_UNDEF_INT if kind == "int" else ARNORM_CONFIG_UNDEF_LL
        elif field == "backend":
            value = int(to_backend(value))
        elif field == "algo":
            value = int(to_algo(value))
        else:
            value = int(value)
        setattr(cfg, field, value)
    return cfg


# ---------------------------------------------------------------- exceptions


class ArnormError(Exception):
    """A call of libarnorm returned something other than arnormSuccess.

    Attributes: result (Result), function (the C function), error_string
    (arnormGetErrorString), last_error (arnormGetLastError of the communicator, or of the
    thread when there was none).
    """

    result = None

    def __init__(self, message, result=None, function=None, error_string="", last_error=""):
        super().__init__(message)
        if result is not None:
            self.result = Result(result)
        self.function = function
        self.error_string = error_string
        self.last_error = last_error

    @property
    def code(self):
        return int(self.result) if self.result is not None else None


class ArnormInvalidArgumentError(ArnormError, ValueError):
    result = Result.InvalidArgument


class ArnormInvalidUsageError(ArnormError, RuntimeError):
    result = Result.InvalidUsage


class ArnormSystemError(ArnormError, RuntimeError):
    result = Result.SystemError


class ArnormCudaError(ArnormError, RuntimeError):
    result = Result.CudaError


class ArnormNcclError(ArnormError, RuntimeError):
    result = Result.NcclError


class ArnormTimeoutError(ArnormError, TimeoutError):
    result = Result.Timeout


class ArnormRemoteError(ArnormError, RuntimeError):
    result = Result.RemoteError


class ArnormOutOfMemoryError(ArnormError, MemoryError):
    result = Result.OutOfMemory


class ArnormNotSupportedError(ArnormError, NotImplementedError):
    result = Result.NotSupported


class ArnormInternalError(ArnormError, RuntimeError):
    result = Result.InternalError


class ArnormLibraryNotFound(ImportError):
    """libarnorm.so was found nowhere (the message lists where it was looked for)."""


ERROR_CLASSES = {
    Result.InvalidArgument: ArnormInvalidArgumentError,
    Result.InvalidUsage: ArnormInvalidUsageError,
    Result.SystemError: ArnormSystemError,
    Result.CudaError: ArnormCudaError,
    Result.NcclError: ArnormNcclError,
    Result.Timeout: ArnormTimeoutError,
    Result.RemoteError: ArnormRemoteError,
    Result.OutOfMemory: ArnormOutOfMemoryError,
    Result.NotSupported: ArnormNotSupportedError,
    Result.InternalError: ArnormInternalError,
}

# ---------------------------------------------------------------- loading

_LIB_NAMES = ("libarnorm.so", "libarnorm.so.0")
_lib = None
_lib_path = None
_lock = threading.Lock()


def candidate_paths():
    """Where load() looks, in order (files that may not exist)."""
    here = os.path.dirname(os.path.abspath(__file__))
    paths = []
    env = os.environ.get("ARNORM_LIBRARY")
    if env:
        if os.path.isdir(env):
            paths += [os.path.join(env, n) for n in _LIB_NAMES]
        else:
            paths.append(env)
    paths += [os.path.join(here, n) for n in _LIB_NAMES]
    root = os.path.dirname(os.path.dirname(here))  # python/arnorm -> repo root
    paths += [os.path.join(root, "build", n) for n in _LIB_NAMES]
    # installed as <prefix>/<libdir>/python/arnorm: the library sits in <prefix>/<libdir>
    libdir = os.path.dirname(os.path.dirname(here))
    paths += [os.path.join(libdir, n) for n in _LIB_NAMES]
    seen, out = set(), []
    for p in paths:
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


def _declare(lib):
    c_int, c_size_t, c_float, c_void_p = ctypes.c_int, ctypes.c_size_t, ctypes.c_float, ctypes.c_void_p
    P = ctypes.POINTER
    protos = {
        "arnormGetErrorString": (ctypes.c_char_p, [c_int]),
        "arnormGetReasonString": (ctypes.c_char_p, [c_int]),
        "arnormGetAlgoString": (ctypes.c_char_p, [c_int]),
        "arnormGetLastError": (ctypes.c_char_p, [arnormComm_t]),
        "arnormGetVersion": (c_int, [P(c_int)]),
        "arnormGetUniqueId": (c_int, [P(arnormUniqueId)]),
        "arnormCommInitRank": (c_int, [P(arnormComm_t), c_int, arnormUniqueId, c_int, P(arnormConfig_t)]),
        "arnormCommInitAll": (c_int, [P(arnormComm_t), c_int, P(c_int), P(arnormConfig_t)]),
        "arnormCommInitFromNccl": (c_int, [P(arnormComm_t), c_void_p, P(arnormConfig_t)]),
        "arnormCommDestroy": (c_int, [arnormComm_t]),
        "arnormCommAbort": (c_int, [arnormComm_t]),
        "arnormCommGetAsyncError": (c_int, [arnormComm_t, P(c_int)]),
        "arnormCommCount": (c_int, [arnormComm_t, P(c_int)]),
        "arnormCommUserRank": (c_int, [arnormComm_t, P(c_int)]),
        "arnormCommGetBackend": (c_int, [arnormComm_t, P(c_int)]),
        "arnormCommSetAlgo": (c_int, [arnormComm_t, c_int]),
        "arnormCommWorkspaceBytes": (c_int, [arnormComm_t, P(c_size_t)]),
        "arnormAllReduceResidualRMSNorm": (
            c_int,
            [c_void_p, c_void_p, c_void_p, c_void_p, c_void_p, c_int, c_float, c_float,
             c_size_t, c_size_t, c_int, arnormComm_t, arnormStream_t],
        ),
        "arnormAllReduce": (c_int, [c_void_p, c_void_p, c_size_t, c_int, arnormComm_t, arnormStream_t]),
        "arnormResidualRMSNorm": (
            c_int,
            [c_void_p, c_void_p, c_void_p, c_void_p, c_void_p, c_int, c_float, c_float,
             c_size_t, c_size_t, c_int, arnormComm_t, arnormStream_t],
        ),
        "arnormCanFuse": (
            c_int,
            [arnormComm_t, c_void_p, c_size_t, c_size_t, c_size_t, c_int, P(arnormFuseInfo_t)],
        ),
        "arnormDefaultMaxTokens": (c_int, [c_int, c_int, c_size_t, c_int, P(c_size_t)]),
    }
    missing = []
    for name, (restype, argtypes) in protos.items():
        try:
            fn = getattr(lib, name)
        except AttributeError:
            missing.append(name)
            continue
        fn.restype = restype
        fn.argtypes = argtypes
    return missing


def load():
    """The loaded library (ctypes.CDLL), loading it on first use."""
    global _lib, _lib_path
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is not None:
            return _lib
        tried, errors = [], []
        for path in candidate_paths():
            tried.append(path)
            if not os.path.exists(path):
                continue
            try:
                lib = ctypes.CDLL(path)
            except OSError as e:  # exists but does not load: say so, do not hide it
                errors.append("%s: %s" % (path, e))
                continue
            _lib_path = path
            break
        else:
            lib = None
            for name in _LIB_NAMES:
                tried.append(name + " (system loader)")
                try:
                    lib = ctypes.CDLL(name)
                    _lib_path = name
                    break
                except OSError:
                    pass
            if lib is None:
                msg = "libarnorm.so not found; set ARNORM_LIBRARY or build it " \
                      "(cmake -S . -B build && cmake --build build). Tried:\n  " + "\n  ".join(tried)
                if errors:
                    msg += "\nFound but failed to load:\n  " + "\n  ".join(errors)
                raise ArnormLibraryNotFound(msg)
        missing = _declare(lib)
        if missing:
            raise ArnormLibraryNotFound(
                "%s lacks symbols %s (an old or partial build?)" % (_lib_path, ", ".join(missing))
            )
        _lib = lib
        return _lib


def library_path():
    """Path of the loaded library (loads it)."""
    load()
    return _lib_path


def available():
    """True when the library can be loaded."""
    try:
        load()
        return True
    except ArnormLibraryNotFound:
        return False


def _text(p):
    if not p:
        return ""
    return p.decode("utf-8", "replace")


def error_string(result):
    try:
        return _text(load().arnormGetErrorString(int(result)))
    except ArnormLibraryNotFound:
        return Result(result).name


def reason_string(reason):
    try:
        return _text(load().arnormGetReasonString(int(reason)))
    except ArnormLibraryNotFound:
        return _REASON_TEXT.get(Reason(reason), str(reason))


def algo_string(algo):
    try:
        return _text(load().arnormGetAlgoString(int(algo)))
    except ArnormLibraryNotFound:
        return Algo(algo).name


def last_error(comm_handle=None):
    return _text(load().arnormGetLastError(comm_handle))


def raise_for(result, function, comm_handle=None):
    """Raises the ArnormError subclass of a non-success `result` of `function`."""
    if result == Result.Success:
        return
    es = error_string(result)
    le = last_error(comm_handle)
    try:
        res = Result(result)
        cls = ERROR_CLASSES.get(res, ArnormError)
        name = "arnorm" + res.name
    except ValueError:
        res, cls, name = None, ArnormError, "result %d" % result
    msg = "%s failed: %s (%s = %d)" % (function, es, name, result)
    if le:
        msg += ": " + le
    raise cls(msg, result=res, function=function, error_string=es, last_error=le)


def call(function, *args, comm_handle=None):
    """Calls the C function `function` (a name) and raises on failure."""
    r = getattr(load(), function)(*args)
    if r != Result.Success:
        raise_for(r, function, comm_handle)
    return r


def version():
    v = ctypes.c_int()
    call("arnormGetVersion", ctypes.byref(v))
    return v.value


def get_unique_id():
    """256 bytes produced by one rank, to send verbatim to every rank."""
    uid = arnormUniqueId()
    call("arnormGetUniqueId", ctypes.byref(uid))
    return uid.to_bytes()


def default_max_tokens(nranks, hidden, dtype, backend=Backend.Auto):
    out = ctypes.c_size_t()
    call(
        "arnormDefaultMaxTokens",
        int(to_backend(backend)),
        int(nranks),
        int(hidden),
        int(dtype),
        ctypes.byref(out),
    )
    return out.value
