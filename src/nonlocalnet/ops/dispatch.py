"""Which exact softmax-attention algorithm runs a call, and the chunk size of the chunked ones.

``softmax_attention(..., algorithm="auto")`` asks :func:`choose_softmax_algorithm`. On CPU it
predicts each exact linear-memory algorithm's time with a small cost model and takes the
cheapest; elsewhere (CUDA, ...) it takes ``"fused"`` (``scaled_dot_product_attention`` with its
own flash / memory-efficient kernels and their backward). The choice is a pure function of the
shapes, dtype, device type and pass: deterministic, no state, no measurement at run time.

The model, per algorithm, pass (``"forward"`` or ``"training"``: forward and backward) and
precision (``"fp32"`` or ``"low"``: bfloat16/float16 inputs)::

    seconds = c_pair * B*N*M + c_flop * flops(algorithm) + c_io * io(algorithm) + c_call

``flops`` counts the algorithm's matrix products (the fused kernels work at the padded width
``max(Ck, Cv)``; the recomputing backwards do one more ``N x M x Ck`` product than the explicit
form); ``io`` the elements of the inputs and output, ``B*(N+M)*(Ck+Cv)``, at the padded width
for the flash kernels, plus the padding copies where ``Ck != Cv``. The four constants were
fitted (non-negative least squares on relative error) on measurements of
``benchmarks/block.py --calibrate`` on a 2-core AVX-512 CPU, recorded in
``benchmarks/results/block_calibration.json``; ``python benchmarks/block.py --fit`` refits them
from that file and prints :data:`COSTS` to paste here.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "COSTS",
    "SOFTMAX_CANDIDATES",
    "backward_keys",
    "backward_rows",
    "choose_softmax_algorithm",
    "chunk_rows",
    "cost_features",
    "predict_seconds",
    "query_groups",
]

SOFTMAX_CANDIDATES = ("fused", "flash", "chunked")
"""The exact, linear-memory softmax algorithms ``"auto"`` chooses from (in tie order)."""

COSTS: dict[tuple[str, str, str], tuple[float, float, float, float]] = {
    ("chunked", "forward", "fp32"): (1.468e-09, 3.771e-12, 2.266e-09, 0.000447),
    ("chunked", "forward", "low"): (1.463e-09, 3.603e-12, 2.633e-09, 0.0006127),
    ("chunked", "training", "fp32"): (4.42e-09, 3.759e-12, 6.412e-09, 0.001079),
    ("chunked", "training", "low"): (4.708e-09, 3.485e-12, 6.759e-09, 0.001286),
    ("flash", "forward", "fp32"): (1.954e-10, 4.217e-12, 1.258e-09, 0.0005317),
    ("flash", "forward", "low"): (2.672e-10, 7.259e-13, 9.574e-10, 0.0006441),
    ("flash", "training", "fp32"): (3.266e-09, 4.181e-12, 3.748e-09, 0.00136),
    ("flash", "training", "low"): (3.566e-09, 2.902e-12, 3.925e-09, 0.001557),
    ("fused", "forward", "fp32"): (1.975e-10, 4.167e-12, 1.229e-09, 0.0004672),
    ("fused", "forward", "low"): (2.815e-10, 7.41e-13, 9.257e-10, 0.0005771),
    ("fused", "training", "fp32"): (3.77e-10, 4.214e-12, 3.604e-09, 0.001256),
    ("fused", "training", "low"): (1.959e-09, 1.089e-12, 2.218e-09, 0.002265),
}
"""(algorithm, pass, precision) -> (c_pair, c_flop, c_io, c_call), seconds per unit; fitted by
``python benchmarks/block.py --fit`` from ``benchmarks/results/block_calibration.json``."""

_CHUNK_BYTES = 1 << 23  # a chunk's (B, rows, M) logit block: 8 MiB in float32, a quarter of L3
_MIN_ROWS = 256  # fewer query rows per product run the GEMMs far below their peak
_MAX_ROWS = 2048


def chunk_rows(batch: int, n: int, m: int) -> int:
    """Query rows per block of the chunked softmax forward (``m`` keys a block) and per tile of
    the recomputing backward (at most :func:`backward_keys` keys a tile).

    About :data:`_CHUNK_BYTES` of float32 logits per block, but never fewer than a few hundred
    rows (small products waste the GEMM kernels) nor more than ``n``.
    """
    rows = _CHUNK_BYTES // (4 * max(1, batch * m))
    return max(1, min(n, _MAX_ROWS, max(_MIN_ROWS, rows)))


_BACKWARD_KEYS = 1024  # keys per tile of the recomputing backward (with chunk_rows rows)


def backward_keys(m: int) -> int:
    """Keys per tile of the recomputing backward: the tile's key and value gradients and its
    ``rows x keys`` probabilities stay in cache while every query block passes over them."""
    return max(1, min(m, _BACKWARD_KEYS))


def backward_rows(batch: int, n: int, keys: int) -> int:
    """Query rows per tile of the recomputing backward: about 4 MiB of float32 probabilities."""
    return max(1, min(n, _MAX_ROWS, max(_MIN_ROWS, (1 << 22) // (4 * max(1, batch * keys)))))


_GROUP_MIN_ROWS = 768  # SDPA's CPU kernels take 256-row query tiles from 768 queries a head up


def query_groups(batch: int, n: int, threads: int) -> int:
    """Groups of query rows that ``"fused"`` gives ``scaled_dot_product_attention`` as heads on CPU.

    SDPA's CPU flash backward runs one task per (batch, head) pair. With fewer pairs than
    threads (``B = 1`` on two cores) the rest of the cores only help inside its small GEMMs:
    the backward of ``B = 1, N = 50176, M = 12544, C = 128`` took 4.3 s as one head and 3.3 s
    as two groups of 25088 queries on 2 cores. The key and value gradients of the groups are
    summed (``groups x M x C`` extra, linear in ``M``). The count makes ``batch * groups`` a
    multiple of ``threads`` and is halved while a group would have fewer than
    ``_GROUP_MIN_ROWS`` queries (smaller tiles, and nothing to gain at such sizes).
    """
    groups = max(1, threads) // math.gcd(max(1, batch), max(1, threads))
    while groups > 1 and n < _GROUP_MIN_ROWS * groups:
        groups //= 2
    return groups


def cost_features(
    algorithm: str, training: bool, batch: int, n: int, m: int, ck: int, cv: int
) -> tuple[float, float, float, float]:
    """``(pairs, flops, io, 1)`` of one call; see the module docstring."""
    pairs = float(batch * n * m)
    w = max(ck, cv)
    if algorithm == "fused":  # SDPA's flash kernels: padded width, recomputing backward
        fwd, bwd = 2 * pairs * 2 * w, 2 * pairs * 5 * w
    elif algorithm == "flash":  # flash forward (padded), chunked backward (true widths)
        fwd, bwd = 2 * pairs * 2 * w, 2 * pairs * (3 * ck + 2 * cv)
    else:  # chunked
        fwd, bwd = 2 * pairs * (ck + cv), 2 * pairs * (3 * ck + 2 * cv)
    flops = fwd + (bwd if training else 0.0)
    io = batch * (n + m) * (ck + cv)
    if algorithm != "chunked":  # the flash kernels read and write the padded width
        io = batch * (n + m) * 2 * w + (batch * (n + m) * w if ck != cv else 0)  # + the padding copies
    return pairs, flops, float(io), 1.0


def _precision(dtype: torch.dtype) -> str:
    return "low" if dtype in (torch.float16, torch.bfloat16) else "fp32"


def predict_seconds(
    algorithm: str,
    *,
    training: bool,
    batch: int,
    n: int,
    m: int,
    ck: int,
    cv: int,
    dtype: torch.dtype = torch.float32,
) -> float:
    """The cost model's time for one CPU call (``inf`` where it has no constants)."""
    key = (algorithm, "training" if training else "forward", _precision(dtype))
    if key not in COSTS:
        return float("inf")
    x = cost_features(algorithm, training, batch, n, m, ck, cv)
    return sum(c * f for c, f in zip(COSTS[key], x, strict=True))


def choose_softmax_algorithm(
    *,
    batch: int,
    n: int,
    m: int,
    ck: int,
    cv: int,
    dtype: torch.dtype,
    device_type: str,
    training: bool,
) -> str:
    """The fastest exact linear-memory algorithm for one call, from :data:`SOFTMAX_CANDIDATES`.

    ``training`` means a backward will follow (grad enabled and an input requires grad); without
    one ``flash`` is not a candidate (its forward is ``fused``'s kernel).
    """
    if device_type != "cpu":
        return "fused"
    # forward only, ``flash`` runs ``fused``'s kernel and also keeps the log-sum-exp for a
    # backward that will not come: never the cheaper, whatever two fitted models say
    candidates = SOFTMAX_CANDIDATES if training else tuple(a for a in SOFTMAX_CANDIDATES if a != "flash")
    costs = [
        predict_seconds(a, training=training, batch=batch, n=n, m=m, ck=ck, cv=cv, dtype=dtype)
        for a in candidates
    ]
    best = min(range(len(costs)), key=lambda i: (costs[i], i))
    return candidates[best] if costs[best] < float("inf") else "fused"
