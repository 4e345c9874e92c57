"""A vectorisable float32 exp for the numba kernels (softmax arguments are never positive).

numba lowers math.exp to a scalar libm call per element, several times slower than torch's
SIMD exp; this polynomial form lets LLVM vectorise the softmax loops. Relative error < 4e-7
down to exp(-87); below that it returns 2^-126 instead of a denormal, which no softmax sum or
gradient can tell apart from 0 at float32 precision.

numba's on-disk cache of a kernel does not notice edits to functions inlined from here: after
changing this file, clear NUMBA_CACHE_DIR (scripts/test.sh uses build/numba-cache).
"""

from __future__ import annotations

import math

import numba
import numpy as np

# reassociation and contraction let the reductions vectorise; no nnan/ninf, so inf and NaN
# inputs still propagate as they do in torch
FAST = {"reassoc", "contract", "nsz"}

_LN2 = np.float32(math.log(2.0))
_LOG2E = np.float32(1.0 / math.log(2.0))
_C0, _C1, _C2, _C3, _C4, _C5, _C6 = (np.float32(1.0 / math.factorial(k)) for k in range(7))
# 2^n for n in [-127, 0] as a table: numba cannot reinterpret int bits as a float
POW2 = np.ldexp(np.float32(1.0), np.arange(-127, 1)).astype(np.float32)


@numba.njit(cache=True, fastmath=FAST, inline="always")
def exp_nonpos(x, pow2):
    """exp(x) for x <= 0 (tolerates rounding up to +0.3): 2^n * exp(r), |r| <= ln2 / 2."""
    t = max(x * _LOG2E, np.float32(-126.0))
    n = np.float32(math.floor(t + np.float32(0.5)))
    r = (t - n) * _LN2
    p = _C0 + r * (_C1 + r * (_C2 + r * (_C3 + r * (_C4 + r * (_C5 + r * _C6)))))
    return p * pow2[np.int32(n) + 127]
