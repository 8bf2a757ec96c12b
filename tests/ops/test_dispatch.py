"""The softmax dispatcher: ``auto`` is deterministic, overridable, exact and linear in memory, and
the ``flash`` algorithm (CPU flash forward, chunked recomputing backward) matches the float64
reference in every dtype, at equal and unequal widths, with sub-sampled keys, inside and outside
autocast."""

import functools

import pytest
import torch
from ops.test_pairwise import _qkv, loop_reference

from nonlocalnet.ops import ALGORITHMS, dispatch, pairwise, softmax_attention

LOW = {torch.float16: 2e-2, torch.bfloat16: 3e-2, torch.float32: 1e-5, torch.float64: 1e-10}
WIDTHS = [(6, 6), (8, 3), (3, 7)]  # Ck == Cv, raw-feature Gaussian (Ck > Cv), Ck < Cv


def test_flash_and_candidates_are_listed():
    for mode in ("gaussian", "embedded_gaussian"):
        assert set(dispatch.SOFTMAX_CANDIDATES) <= set(ALGORITHMS[mode])
        assert "naive" not in dispatch.SOFTMAX_CANDIDATES  # auto never builds N x M


@pytest.mark.parametrize("algorithm", (*dispatch.SOFTMAX_CANDIDATES, "auto"))
@pytest.mark.parametrize("dtype", list(LOW))
@pytest.mark.parametrize("widths", WIDTHS)
@pytest.mark.parametrize("nm", [(12, 12), (12, 3), (5, 17)])  # keys sub-sampled, or more keys
@pytest.mark.parametrize("threads", [1, 6])  # fused: 1, or 3 query groups a batch item (zero-padded)
def test_every_candidate_matches_the_float64_reference(
    algorithm, dtype, widths, nm, threads, monkeypatch, force_query_groups
):
    """Forward and gradients against the literal loop (forward) and the float64 explicit form
    (gradients); small chunks force several tiles (rows and keys) in the chunked backwards, and
    six threads make ``"fused"`` split the queries of each of the 2 batch items into 3 heads."""
    force_query_groups(threads)
    monkeypatch.setattr(pairwise, "_CHUNK_ELEMENTS", 2 * 3 * nm[1])  # blocks of 3 query rows
    monkeypatch.setattr(dispatch, "_BACKWARD_KEYS", 4)  # backward tiles of 4 keys
    theta, phi, g, w = _qkv(n=nm[0], m=nm[1], ck=widths[0], cv=widths[1], dtype=torch.float64)
    ref = loop_reference("embedded_gaussian", theta, phi, g, w, 0.6)
    leaves = [t.clone().requires_grad_() for t in (theta, phi, g)]
    y_ref = softmax_attention(*leaves, scale=0.6, algorithm="naive")
    y_ref.square().sum().backward()
    grads_ref = [t.grad for t in leaves]

    low = [t.to(dtype).requires_grad_() for t in (theta, phi, g)]
    y = softmax_attention(*low, scale=0.6, algorithm=algorithm)
    assert y.dtype == dtype and y.shape == ref.shape
    y.double().square().sum().backward()
    tol = LOW[dtype]
    # the references take the inputs rounded to dtype, so only the algorithm's error remains
    exact_in = [t.detach().to(dtype).double().requires_grad_() for t in (theta, phi, g)]
    y_in = softmax_attention(*exact_in, scale=0.6, algorithm="naive")
    y_in.square().sum().backward()
    torch.testing.assert_close(y.double(), y_in, atol=tol, rtol=tol)
    for got, want in zip(low, exact_in, strict=True):
        assert got.grad.dtype == dtype
        scale = float(want.grad.abs().max()) + 1e-12
        torch.testing.assert_close(got.grad.double() / scale, want.grad / scale, atol=tol, rtol=tol)
    if dtype == torch.float64:
        torch.testing.assert_close(y, ref, atol=1e-10, rtol=1e-10)
        for got, want in zip(low, grads_ref, strict=True):
            torch.testing.assert_close(got.grad, want, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("widths", WIDTHS)
def test_flash_under_autocast_backward_inside_and_outside(widths):
    theta, phi, g, _ = _qkv(n=20, m=9, ck=widths[0], cv=widths[1])
    grads = []
    for inside in (False, True):
        leaves = [t.clone().requires_grad_() for t in (theta, phi, g)]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            t, p, v = (x.bfloat16() for x in leaves)
            y = softmax_attention(t, p, v, scale=0.5, algorithm="flash")
            assert y.dtype == torch.bfloat16
            loss = y.float().square().sum()
            if inside:
                loss.backward()
        if not inside:
            loss.backward()
        grads.append([x.grad for x in leaves])
    for a, b in zip(*grads, strict=True):
        assert a.dtype == torch.float32 and torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_mixed_dtypes_are_promoted():
    theta, phi, g, _ = _qkv(n=9, m=4, ck=4, cv=4)
    for algorithm in dispatch.SOFTMAX_CANDIDATES:
        y = softmax_attention(theta.bfloat16(), phi, g, algorithm=algorithm)
        assert y.dtype == torch.float32
        ref = softmax_attention(theta.bfloat16().float(), phi, g, algorithm="naive")
        torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)


def _choose(**kw):
    args = dict(batch=1, n=3136, m=784, ck=128, cv=128, dtype=torch.float32, device_type="cpu", training=True)
    return dispatch.choose_softmax_algorithm(**{**args, **kw})


def test_choice_is_deterministic_and_a_candidate():
    shapes = [
        dict(batch=b, n=n, m=m, ck=ck, cv=cv, dtype=dt, training=tr)
        for b in (1, 2)
        for n, m in ((784, 196), (3136, 3136), (50176, 12544))
        for ck, cv in ((64, 64), (256, 128), (512, 512))
        for dt in (torch.float32, torch.bfloat16)
        for tr in (False, True)
    ]
    for kw in shapes:
        first = _choose(**kw)
        assert first in dispatch.SOFTMAX_CANDIDATES
        assert all(_choose(**kw) == first for _ in range(3))
    # not one constant answer: the model tells shapes and passes apart
    assert len({_choose(**kw) for kw in shapes}) >= 2
    # forward only, flash (fused's kernel plus a log-sum-exp nobody reads) is never the pick
    assert all(_choose(**kw) != "flash" for kw in shapes if not kw["training"])


def test_other_devices_take_sdpa():
    assert _choose(device_type="cuda") == "fused"
    assert _choose(device_type="cuda", ck=256, cv=128) == "fused"
    assert _choose(device_type="mps", training=False) == "fused"


def test_the_model_predicts_from_its_constants():
    for key, coef in dispatch.COSTS.items():
        assert len(coef) == 4 and all(c >= 0 for c in coef), key
    small = dispatch.predict_seconds("chunked", training=True, batch=1, n=784, m=196, ck=64, cv=64)
    big = dispatch.predict_seconds("chunked", training=True, batch=2, n=12544, m=12544, ck=512, cv=512)
    assert 0 < small < big < float("inf")
    assert dispatch.predict_seconds("nonsense", training=True, batch=1, n=1, m=1, ck=1, cv=1) == float("inf")


class _Spy:
    def __init__(self, monkeypatch):
        self.calls = []
        for name in ("_ChunkedSoftmaxAttention", "_FlashSoftmaxAttention"):
            cls = getattr(pairwise, name)
            monkeypatch.setattr(cls, "apply", self._wrap(name, cls.apply), raising=True)
        fused = pairwise._fused_attention
        monkeypatch.setattr(
            pairwise, "_fused_attention", lambda *a: (self.calls.append("fused"), fused(*a))[1]
        )

    def _wrap(self, name, fn):
        label = {"_ChunkedSoftmaxAttention": "chunked", "_FlashSoftmaxAttention": "flash"}[name]

        def run(*a):
            self.calls.append(label)
            return fn(*a)

        return run


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("widths", [(16, 16), (32, 16)])
def test_auto_runs_what_the_dispatcher_chose_and_the_override_wins(training, widths, monkeypatch):
    spy = _Spy(monkeypatch)
    theta, phi, g, _ = _qkv(b=2, n=64, m=16, ck=widths[0], cv=widths[1])
    leaves = [t.requires_grad_(training) for t in (theta, phi, g)]
    choose = functools.partial(
        dispatch.choose_softmax_algorithm,
        batch=2,
        n=64,
        m=16,
        ck=widths[0],
        cv=widths[1],
        dtype=torch.float32,
        device_type="cpu",
    )
    chosen = choose(training=training)
    softmax_attention(*leaves, algorithm="auto")
    assert spy.calls == [chosen]
    with torch.no_grad():  # no backward follows: the inference choice
        softmax_attention(*leaves, algorithm="auto")
    inference = choose(training=False)
    assert spy.calls[-1] == inference
    for forced in dispatch.SOFTMAX_CANDIDATES:
        softmax_attention(*leaves, algorithm=forced)
        assert spy.calls[-1] == forced


def test_export_ignores_the_cost_model(monkeypatch):
    """While exported, auto is fused whatever the model says (a shape-agnostic graph)."""
    monkeypatch.setattr(dispatch, "choose_softmax_algorithm", lambda **kw: "chunked")
    monkeypatch.setattr(pairwise, "choose_softmax_algorithm", lambda **kw: "chunked")
    spy = _Spy(monkeypatch)
    theta, phi, g, _ = _qkv(n=12, m=6, ck=4, cv=4)
    softmax_attention(theta, phi, g)
    assert spy.calls == ["chunked"]  # the patched model is used in eager mode
    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
    softmax_attention(theta, phi, g)
    assert spy.calls[-1] == "fused"


def test_query_groups():
    assert dispatch.query_groups(1, 50176, 2) == 2  # one batch item on two cores: two groups
    assert dispatch.query_groups(2, 50176, 2) == 1  # the batch already fills the cores
    assert dispatch.query_groups(3, 50176, 2) == 2  # 6 tasks, 3 a core, instead of 3 on 2
    assert dispatch.query_groups(4, 50176, 6) == 3  # 12 tasks on 6
    assert dispatch.query_groups(1, 50176, 1) == 1
    assert dispatch.query_groups(1, 784, 2) == 1  # groups of 392 queries: smaller kernel tiles
    assert dispatch.query_groups(1, 1536, 2) == 2
    assert dispatch.query_groups(1, 3136, 16) == 4  # halved while a group has under 768 queries


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("device_threads", [1, 2])
def test_fused_groups_queries_only_for_a_backward_on_cpu(
    grad, device_threads, monkeypatch, force_query_groups
):
    """SDPA gets ``query_groups`` heads (zero-padded rows) when a backward follows, one otherwise."""
    force_query_groups(device_threads)
    heads = []
    sdpa = pairwise.F.scaled_dot_product_attention
    monkeypatch.setattr(
        pairwise.F,
        "scaled_dot_product_attention",
        lambda q, *a, **k: (heads.append(q.shape), sdpa(q, *a, **k))[1],
    )
    theta, phi, g, _ = _qkv(b=1, n=7, m=5, ck=4, cv=4)
    leaves = [t.requires_grad_(grad) for t in (theta, phi, g)]
    y = softmax_attention(*leaves, algorithm="fused")
    assert y.shape == (1, 7, 4)
    assert heads == [(1, 2, 4, 4) if grad and device_threads == 2 else (1, 1, 7, 4)]


def test_chunk_rows():
    assert dispatch.chunk_rows(1, 10, 100) == 10  # never more than N
    rows = dispatch.chunk_rows(1, 50176, 12544)
    assert 1 <= rows <= 50176
    assert dispatch.chunk_rows(2, 50176, 12544) <= rows  # a larger batch, fewer rows
    assert dispatch.chunk_rows(64, 50176, 50176) >= 1


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", (*dispatch.SOFTMAX_CANDIDATES, "auto"))
@pytest.mark.parametrize("widths", [(6, 6), (8, 3)])
def test_torch_compile_fullgraph_every_candidate(algorithm, widths, force_query_groups):
    """torch.compile keeps the eager choice and traces every algorithm in one graph (``"fused"``
    with its query groups: the thread count is a constant to the compiler)."""
    force_query_groups(6)
    torch._dynamo.reset()
    theta, phi, g, _ = _qkv(n=24, m=6, ck=widths[0], cv=widths[1])

    def fn(t, p, v):
        return softmax_attention(t, p, v, scale=0.7, algorithm=algorithm)

    compiled = torch.compile(fn, fullgraph=True)
    results = []
    for f in (fn, compiled):
        leaves = [x.clone().requires_grad_() for x in (theta, phi, g)]
        y = f(*leaves)
        y.square().sum().backward()
        results.append([y, *(x.grad for x in leaves)])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
