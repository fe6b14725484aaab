"""Pure-Python reference of arnorm's numerics (docs: include/arnorm.h, src/numerics.h).

No numpy needed. fp32 arithmetic is emulated exactly: every +, *, / and sqrt is done in
fp64 and rounded to fp32, which gives the correctly rounded fp32 result (fp64 has more
than 2*24+2 significand bits, so the double rounding is innocuous).

Storage values travel as lists of Python floats (exact fp32/fp16/bf16 values) and as raw
bit patterns (array('H') for 16-bit types, array('f') for fp32).
"""

import array
import math
import struct

BF16, FP16, FP32 = 0, 1, 2
NAMES = {BF16: "bf16", FP16: "fp16", FP32: "fp32"}
SIZE = {BF16: 2, FP16: 2, FP32: 4}

_F = struct.Struct("<f")
_I = struct.Struct("<I")
_E = struct.Struct("<e")
_H = struct.Struct("<H")

ROW_CHUNK = 8
ROW_MAX_SLOTS = 1024


def f32(x):
    """x rounded to fp32 (round to nearest even; overflow to inf)."""
    try:
        return _F.unpack(_F.pack(x))[0]
    except OverflowError:
        # pack refuses values beyond FLT_MAX; those at least half an ulp past it round to inf
        if abs(x) >= 3.4028235677973366e38:
            return math.copysign(math.inf, x)
        return math.copysign(3.4028234663852886e38, x)


def f32_bits(x):
    return _I.unpack(_F.pack(x))[0]


def bits_f32(u):
    return _F.unpack(_I.pack(u))[0]


def to_bf16_bits(x):
    """fp32 value -> bf16 bits, round to nearest even (as src/dtype.h)."""
    u = f32_bits(f32(x))
    if (u & 0x7FFFFFFF) > 0x7F800000:
        return ((u >> 16) | 0x0040) & 0xFFFF
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFFFFFF
    return u >> 16


def bf16_value(b):
    return bits_f32(b << 16)


def to_fp16_bits(x):
    try:
        return _H.unpack(_E.pack(x))[0]
    except OverflowError:
        return 0xFC00 if x < 0 else 0x7C00


def fp16_value(h):
    return _E.unpack(_H.pack(h))[0]


def round_d(x, dt):
    """fp32 value rounded to storage type dt and back to a float."""
    if dt == BF16:
        return bf16_value(to_bf16_bits(x))
    if dt == FP16:
        return fp16_value(to_fp16_bits(x))
    return f32(x)


def encode(values, dt):
    """floats -> array of bits of type dt (values rounded to dt)."""
    if dt == FP32:
        return array.array("f", [f32(v) for v in values])
    if dt == BF16:
        return array.array("H", [to_bf16_bits(v) for v in values])
    return array.array("H", [to_fp16_bits(v) for v in values])


def decode(arr, dt):
    """array of bits of type dt -> floats."""
    if dt == FP32:
        return list(arr)
    if dt == BF16:
        return [bf16_value(b) for b in arr]
    return [fp16_value(h) for h in arr]


def as_array(buf, dt):
    """Any buffer holding dt -> array ('f' or 'H') copy."""
    a = array.array("f" if dt == FP32 else "H")
    a.frombytes(bytes(memoryview(buf).cast("B")))
    return a


# ---------------------------------------------------------------- the row arithmetic


def row_slots(hidden):
    nchunks = (hidden + ROW_CHUNK - 1) // ROW_CHUNK
    s = (nchunks + 31) // 32 * 32
    return min(s, ROW_MAX_SLOTS)


def _butterfly32(v):
    v = list(v)
    o = 16
    while o >= 1:
        v = [f32(v[l] + v[l ^ o]) for l in range(32)]
        o >>= 1
    return v[0]


def row_sum_squares(h):
    """Sum of squares of a row of floats by the tree of src/numerics.h (fp32)."""
    hidden = len(h)
    S = row_slots(hidden)
    nchunks = (hidden + ROW_CHUNK - 1) // ROW_CHUNK
    slots = [0.0] * S
    for c in range(nchunks):
        acc = slots[c % S]
        for i in range(c * ROW_CHUNK, min((c + 1) * ROW_CHUNK, hidden)):
            acc = f32(acc + f32(h[i] * h[i]))
        slots[c % S] = acc
    warps = [0.0] * 32
    for w in range(S // 32):
        warps[w] = _butterfly32(slots[32 * w: 32 * w + 32])
    return _butterfly32(warps)


def row_scale(sum_squares, hidden, eps):
    var = f32(sum_squares / f32(float(hidden)))
    return f32(1.0 / f32(math.sqrt(f32(var + f32(eps)))))


def residual_rms_norm(x, residual, weight, eps, weight_bias, tokens, hidden, dt):
    """Per-row arithmetic: h = D(x + residual); out = D((h * s) * (wb + w)).
    x, residual, weight: lists of floats (values of their storage types); residual may be
    None. Returns (h, out) as float lists (values of dt)."""
    wb = f32(weight_bias)
    scale_w = [f32(wb + w) for w in weight]
    h_all, out_all = [], []
    for t in range(tokens):
        row = x[t * hidden:(t + 1) * hidden]
        if residual is not None:
            rrow = residual[t * hidden:(t + 1) * hidden]
            h = [round_d(f32(a + r), dt) for a, r in zip(row, rrow)]
        else:
            h = list(row)
        s = row_scale(row_sum_squares(h), hidden, eps)
        out = [round_d(f32(f32(v * s) * sw), dt) for v, sw in zip(h, scale_w)]
        h_all += h
        out_all += out
    return h_all, out_all


def all_reduce(partials, dt):
    """D(sum over ranks in rank order, fp32, -0.0 taken as +0.0)."""
    acc = [0.0 if p == 0.0 else p for p in partials[0]]  # -0.0 -> +0.0
    for part in partials[1:]:
        acc = [f32(a + (0.0 if p == 0.0 else p)) for a, p in zip(acc, part)]
    return [round_d(a, dt) for a in acc]


def fused(partials, residual, weight, eps, weight_bias, tokens, hidden, dt):
    """(residual_out, norm_out) of arnormAllReduceResidualRMSNorm as float lists."""
    a = all_reduce(partials, dt)  # one rank too: -0.0 taken as +0.0
    return residual_rms_norm(a, residual, weight, eps, weight_bias, tokens, hidden, dt)


# ---------------------------------------------------------------- fp64 reference


def fused_fp64(partials, residual, weight, eps, weight_bias, tokens, hidden):
    """The same operation in fp64 without intermediate rounding (accuracy yardstick)."""
    n = tokens * hidden
    a = [math.fsum(p[i] for p in partials) for i in range(n)]
    h = [a[i] + residual[i] for i in range(n)] if residual is not None else a
    out = []
    for t in range(tokens):
        row = h[t * hidden:(t + 1) * hidden]
        var = math.fsum(v * v for v in row) / hidden
        s = 1.0 / math.sqrt(var + eps)
        out += [v * s * (weight_bias + w) for v, w in zip(row, weight)]
    return a, h, out


def unit_roundoff(dt):
    return {BF16: 2.0 ** -8, FP16: 2.0 ** -11, FP32: 2.0 ** -24}[dt]
