"""Quantizers against float64 numpy references (tolerances stated per assertion)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from teal_jax.models.fsq import FSQ
from teal_jax.models.quantizers import QuantizerOutput, ResidualVQ, VectorQuantizer, kmeans, l2_normalize

ATOL = 1e-5  # float32 math vs float64 reference on O(1) values


@pytest.fixture(autouse=True, scope="module")
def _fast_prng():
    """rbg keys: XLA:CPU takes ~2 s to compile each threefry draw, which dominates these small models' init."""
    with jax.default_prng_impl("rbg"):
        yield


def _init(module, *args, **kwargs):
    """init with logical-axis boxes removed (the trainer unboxes the same way)."""
    return nn.unbox(module.init(jax.random.key(0), *args, **kwargs))


def _nn_numpy(x, codebook, normalize):
    x = np.asarray(x, np.float64).reshape(-1, codebook.shape[1])
    cb = np.asarray(codebook, np.float64)
    if normalize:
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        cb = cb / np.linalg.norm(cb, axis=1, keepdims=True)
    d = ((x[:, None, :] - cb[None]) ** 2).sum(-1)
    codes = d.argmin(1)
    return codes, cb[codes], x


def _margin_ok(x, codebook, normalize, margin=1e-4):
    """True when every nearest neighbour wins by a margin (so float32 cannot flip the argmin)."""
    x = np.asarray(x, np.float64).reshape(-1, codebook.shape[1])
    cb = np.asarray(codebook, np.float64)
    if normalize:
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        cb = cb / np.linalg.norm(cb, axis=1, keepdims=True)
    d = np.sort(((x[:, None, :] - cb[None]) ** 2).sum(-1), axis=1)
    return bool((d[:, 1] - d[:, 0] > margin).all())


@pytest.mark.parametrize("normalize", [False, True])
def test_vq_nearest_neighbour_and_loss(normalize):
    vq = VectorQuantizer(codebook_size=32, code_dim=6, l2_normalize=normalize, beta=0.3)
    x = jax.random.normal(jax.random.key(1), (4, 5, 6))
    variables = _init(vq, x, train=False)
    out = jax.jit(lambda v, x: vq.apply(v, x, train=False))(variables, x)
    assert isinstance(out, QuantizerOutput)
    cb = np.asarray(variables["params"]["codebook"])
    assert _margin_ok(x, cb, normalize)
    codes, zq, z = _nn_numpy(x, cb, normalize)
    assert out.codes.dtype == jnp.int32 and out.codes.shape == (4, 5)
    np.testing.assert_array_equal(np.asarray(out.codes).reshape(-1), codes)
    np.testing.assert_allclose(np.asarray(out.quantized).reshape(-1, 6), zq, atol=ATOL)
    # loss = ||sg(z) - e||^2 + beta ||z - sg(e)||^2 (both means), forward value (1 + beta) * mse
    np.testing.assert_allclose(float(out.loss), 1.3 * np.mean((z - zq) ** 2), rtol=1e-5)
    # usage / perplexity of the code histogram
    counts = np.bincount(codes, minlength=32)
    p = counts / counts.sum()
    np.testing.assert_allclose(float(out.metrics["usage"]), np.mean(counts > 0), rtol=1e-6)
    ppl = np.exp(-np.sum(p[p > 0] * np.log(p[p > 0])))
    np.testing.assert_allclose(float(out.metrics["perplexity"]), ppl, rtol=1e-5)
    # decode_codes gives back the quantized vectors
    dec = vq.apply(variables, out.codes, method=VectorQuantizer.decode_codes)
    np.testing.assert_allclose(np.asarray(dec), np.asarray(out.quantized), atol=ATOL)


def test_vq_straight_through_gradient_is_identity():
    vq = VectorQuantizer(codebook_size=16, code_dim=4)
    x = jax.random.normal(jax.random.key(1), (8, 4))
    variables = _init(vq, x, train=False)
    w = jax.random.normal(jax.random.key(2), (8, 4))
    g = jax.grad(lambda x: jnp.sum(vq.apply(variables, x, train=False).quantized * w))(x)
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-6)


def test_vq_codebook_gradient_from_loss():
    """The codebook term moves codes towards their inputs: d loss / d e_k = -2 sum_{i->k} (z_i - e_k) / (N C)."""
    vq = VectorQuantizer(codebook_size=8, code_dim=3, beta=0.25)
    x = jax.random.normal(jax.random.key(3), (10, 3))
    variables = _init(vq, x, train=False)
    g = jax.grad(lambda p: vq.apply({"params": p}, x, train=False).loss)(variables["params"])["codebook"]
    cb = np.asarray(variables["params"]["codebook"], np.float64)
    codes, zq, z = _nn_numpy(x, cb, False)
    ref = np.zeros_like(cb)
    for i, k in enumerate(codes):
        ref[k] += -2 * (z[i] - cb[k]) / z.size
    np.testing.assert_allclose(np.asarray(g), ref, atol=1e-6)


def test_vq_factorised_shapes_and_decode():
    vq = VectorQuantizer(codebook_size=64, code_dim=8, features=32, l2_normalize=True)
    x = jax.random.normal(jax.random.key(1), (2, 3, 3, 32)).astype(jnp.bfloat16)
    variables = _init(vq, x, train=False)
    assert set(variables["params"]) == {"codebook", "project_in", "project_out"}
    out = vq.apply(variables, x, train=False)
    assert out.quantized.shape == x.shape and out.quantized.dtype == jnp.bfloat16
    assert out.codes.shape == (2, 3, 3)
    dec = vq.apply(variables, out.codes, method=VectorQuantizer.decode_codes)
    # the forward output is rounded to bfloat16 (8 mantissa bits): relative 2^-8
    np.testing.assert_allclose(
        np.asarray(dec, np.float32), np.asarray(out.quantized, np.float32), rtol=2**-8, atol=1e-6
    )
    with pytest.raises(ValueError, match="features=32"):
        vq.apply(variables, x[..., :16], train=False)


def test_vq_ema_update_math():
    K, C, decay, eps = 6, 3, 0.9, 1e-5
    vq = VectorQuantizer(codebook_size=K, code_dim=C, use_ema=True, ema_decay=decay, ema_eps=eps, beta=0.5)
    x = jax.random.normal(jax.random.key(1), (20, C))
    variables = _init(vq, x, train=True)
    assert "params" not in variables  # EMA codebook is state, not a parameter
    state = variables["quantizer_state"]
    cb0 = np.asarray(state["codebook"], np.float64)
    np.testing.assert_array_equal(np.asarray(state["ema_sum"]), np.asarray(state["codebook"]))
    # eval does not touch the state
    _, st_eval = vq.apply(variables, x, train=False, mutable=["quantizer_state"])
    np.testing.assert_array_equal(np.asarray(st_eval["quantizer_state"]["codebook"]), cb0.astype(np.float32))
    out, new = vq.apply(variables, x, train=True, mutable=["quantizer_state"])
    codes, zq, z = _nn_numpy(x, cb0, False)
    onehot = np.eye(K)[codes]
    count = decay * 1.0 + (1 - decay) * onehot.sum(0)
    ema_sum = decay * cb0 + (1 - decay) * onehot.T @ z
    n = count.sum()
    ref_cb = ema_sum / ((count + eps) / (n + K * eps) * n)[:, None]
    new = new["quantizer_state"]
    np.testing.assert_allclose(np.asarray(new["ema_count"]), count, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(new["ema_sum"]), ema_sum, atol=ATOL)
    np.testing.assert_allclose(np.asarray(new["codebook"]), ref_cb, atol=ATOL)
    # with EMA the loss is the commitment term only
    np.testing.assert_allclose(float(out.loss), 0.5 * np.mean((z - zq) ** 2), rtol=1e-5)


@pytest.mark.parametrize("use_ema", [False, True])
def test_vq_dead_code_restart_replaces_unused_codes(use_ema):
    K, C = 8, 2
    vq = VectorQuantizer(codebook_size=K, code_dim=C, use_ema=use_ema, restart_after=2)
    # Inputs cluster near (+-1, 0); codes 2..7 are placed far away so they are never chosen.
    x = jnp.array([[1.0, 0.0], [1.1, 0.1], [-1.0, 0.0], [-0.9, -0.1]] * 4)
    variables = _init(vq, x, train=True)
    far = np.array([[1, 0], [-1, 0]] + [[100 + i, 100] for i in range(K - 2)], np.float32)
    variables = jax.tree.map(lambda a: a, variables)
    if use_ema:
        variables["quantizer_state"]["codebook"] = jnp.asarray(far)
        variables["quantizer_state"]["ema_sum"] = jnp.asarray(far)
    else:
        variables["params"]["codebook"] = jnp.asarray(far)

    step = jax.jit(
        lambda v, k: vq.apply(v, x, train=True, mutable=["quantizer_state"], rngs={"dropout": k})
    )

    def effective(v):
        return np.asarray(vq.apply(v, method=VectorQuantizer.raw_codebook))

    v = variables
    _, st = step(v, jax.random.key(1))
    v = {**v, **st}
    # one step unused: not yet dead
    np.testing.assert_allclose(effective(v)[2:], far[2:], atol=1e-3 if use_ema else 0)
    np.testing.assert_array_equal(np.asarray(v["quantizer_state"]["unused_steps"]), [0, 0] + [1] * (K - 2))
    _, st = step(v, jax.random.key(2))
    v = {**v, **st}
    cb = effective(v)
    batch = {tuple(r) for r in np.asarray(x).round(5)}
    for k in range(2, K):  # every dead code is now a vector of the batch
        assert tuple(cb[k].round(5)) in batch, (k, cb[k])
    np.testing.assert_array_equal(np.asarray(v["quantizer_state"]["unused_steps"]), np.zeros(K))
    if not use_ema:  # the used codes are untouched parameters
        np.testing.assert_array_equal(cb[:2], far[:2])
    # and the restarted codes are now chosen
    out = vq.apply(v, x, train=False)
    assert float(out.metrics["usage"]) > 2 / K


def test_rvq_residual_sums_match_numpy():
    L, K, D = 3, 16, 4
    rvq = ResidualVQ(num_levels=L, codebook_size=K, code_dim=D)
    x = jax.random.normal(jax.random.key(1), (2, 5, D))
    variables = _init(rvq, x, train=False)
    out = rvq.apply(variables, x, train=False)
    assert out.codes.shape == (2, 5, L) and out.codes.dtype == jnp.int32
    residual = np.asarray(x, np.float64).reshape(-1, D)
    total = np.zeros_like(residual)
    for l in range(L):
        cb = np.asarray(variables["params"][f"levels_{l}"]["codebook"], np.float64)
        codes, zq, _ = _nn_numpy(residual, cb, False)
        np.testing.assert_array_equal(np.asarray(out.codes[..., l]).reshape(-1), codes)
        total += zq
        residual = residual - zq
    np.testing.assert_allclose(np.asarray(out.quantized).reshape(-1, D), total, atol=ATOL)
    dec = rvq.apply(variables, out.codes, method=ResidualVQ.decode_codes)
    np.testing.assert_allclose(np.asarray(dec), np.asarray(out.quantized), atol=ATOL)
    # fewer levels: the prefix sum, and num_levels at call time agrees with decoding a prefix of the codes
    out2 = rvq.apply(variables, x, train=False, num_levels=2)
    dec2 = rvq.apply(variables, out.codes[..., :2], method=ResidualVQ.decode_codes)
    np.testing.assert_allclose(np.asarray(out2.quantized), np.asarray(dec2), atol=ATOL)
    for l in range(L):
        assert f"level{l}/usage" in out.metrics
    with pytest.raises(ValueError, match="must be in"):
        rvq.apply(variables, out.codes[..., :0], method=ResidualVQ.decode_codes)


def test_rvq_quantizer_dropout_per_example():
    L, K, D = 4, 8, 3
    rvq = ResidualVQ(num_levels=L, codebook_size=K, code_dim=D, dropout_rate=1.0, features=D)
    x = jax.random.normal(jax.random.key(1), (32, 6, D))
    variables = _init(rvq, x, train=False)
    out = rvq.apply(variables, x, train=True, rng=jax.random.key(5))
    prefixes = [
        np.asarray(rvq.apply(variables, out.codes[..., :n], method=ResidualVQ.decode_codes)) for n in range(1, L + 1)
    ]
    used = []
    for b in range(32):
        match = [n + 1 for n in range(L) if np.allclose(np.asarray(out.quantized[b]), prefixes[n][b], atol=ATOL)]
        assert match, f"example {b} is no prefix sum of its levels"
        used.append(match[0])
    assert len(set(used)) > 1  # n varies per example
    np.testing.assert_allclose(float(out.metrics["levels_used"]), np.mean(used), atol=1e-6)
    # same rng -> same draw (the rng stream alternative gives the same behaviour)
    out_b = rvq.apply(variables, x, train=True, rng=jax.random.key(5))
    np.testing.assert_array_equal(np.asarray(out.quantized), np.asarray(out_b.quantized))
    # eval: no dropout, all L levels
    ev = rvq.apply(variables, x, train=False)
    full = rvq.apply(variables, ev.codes, method=ResidualVQ.decode_codes)
    np.testing.assert_allclose(np.asarray(ev.quantized), np.asarray(full), atol=ATOL)
    assert float(ev.metrics["levels_used"]) == L


@pytest.mark.parametrize("levels", [[8, 5, 5, 5], [7, 5, 5, 5, 5], [2, 3]])
def test_fsq_codes_values_round_trip(levels):
    fsq = FSQ(levels=levels)
    K = int(np.prod(levels))
    codes = jnp.arange(K, dtype=jnp.int32)
    values = fsq.apply({}, codes, method=FSQ.codes_to_values)
    np.testing.assert_array_equal(np.asarray(fsq.apply({}, values, method=FSQ.values_to_codes)), np.arange(K))
    # numpy mixed radix: digit_i = code // prod(levels[:i]) % levels[i]; value = (digit - L//2) / (L//2)
    lv = np.asarray(levels)
    basis = np.concatenate([[1], np.cumprod(lv[:-1])])
    digits = (np.arange(K)[:, None] // basis) % lv
    ref = (digits - lv // 2) / (lv // 2)
    np.testing.assert_allclose(np.asarray(values), ref, atol=1e-7)
    assert len({tuple(r) for r in np.asarray(values)}) == K  # a bijection


def test_fsq_forward_and_straight_through_gradient():
    levels, eps = [8, 5, 5], 1e-3
    fsq = FSQ(levels=levels, eps=eps)
    x = 2.0 * jax.random.normal(jax.random.key(1), (4, 7, 3))
    out = fsq.apply({}, x)
    lv = np.asarray(levels, np.float64)
    half_l = (lv - 1) * (1 + eps) / 2
    offset = np.where(lv % 2 == 0, 0.5, 0.0)
    shift = np.arctanh(offset / half_l)
    xb = np.asarray(x, np.float64)
    bounded = np.tanh(xb + shift) * half_l - offset
    ref = np.round(bounded) / (lv // 2)
    np.testing.assert_allclose(np.asarray(out.quantized), ref, atol=1e-6)
    assert float(out.loss) == 0.0
    dec = fsq.apply({}, out.codes, method=FSQ.decode_codes)
    np.testing.assert_allclose(np.asarray(dec), np.asarray(out.quantized), atol=1e-6)
    # rounding is straight-through: d out / d x = d bound / d x / half_width = (1 - tanh^2) * half_l / (L//2)
    g = jax.grad(lambda x: jnp.sum(fsq.apply({}, x).quantized))(x)
    ref_g = (1 - np.tanh(xb + shift) ** 2) * half_l / (lv // 2)
    np.testing.assert_allclose(np.asarray(g), ref_g, rtol=1e-5, atol=1e-6)


def test_fsq_factorised_and_metrics():
    fsq = FSQ(levels=[4, 4], features=16)
    x = jax.random.normal(jax.random.key(1), (2, 4, 4, 16))
    variables = _init(fsq, x)
    out = jax.jit(lambda v, x: fsq.apply(v, x, train=True))(variables, x)
    assert out.quantized.shape == x.shape and out.codes.shape == (2, 4, 4)
    counts = np.bincount(np.asarray(out.codes).reshape(-1), minlength=16)
    np.testing.assert_allclose(float(out.metrics["usage"]), np.mean(counts > 0), rtol=1e-6)
    with pytest.raises(ValueError, match="every level must be >= 2"):
        FSQ(levels=[1, 4]).apply({}, x[..., :2])


def test_vq_entropy_loss_matches_numpy():
    vq = VectorQuantizer(codebook_size=8, code_dim=3, entropy_weight=0.5, entropy_temperature=0.5, beta=0.25)
    x = jax.random.normal(jax.random.key(4), (12, 3))
    variables = _init(vq, x, train=False)
    out = vq.apply(variables, x, train=False)
    cb = np.asarray(variables["params"]["codebook"], np.float64)
    z = np.asarray(x, np.float64)
    d = ((z[:, None] - cb[None]) ** 2).sum(-1)
    logits = -d / 0.5
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    h_each = -(p * np.log(p)).sum(1).mean()
    avg = p.mean(0)
    ent = h_each + (avg * np.log(avg)).sum()
    _, zq, _ = _nn_numpy(x, cb, False)
    np.testing.assert_allclose(float(out.metrics["entropy_loss"]), ent, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(float(out.loss), 1.25 * np.mean((z - zq) ** 2) + 0.5 * ent, rtol=1e-4)


def test_l2_normalize_values_and_gradients_match_numpy():
    """Values = float64 numpy ``x / max(||x||, eps)``; Jacobian = ``(I - n n^T) / ||x||`` away from 0; at an all-zero
    vector the value is 0 and the gradient finite (``I / eps``), where ``x / jnp.linalg.norm(x)`` gives NaN."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 6)).astype(np.float32)
    x[1] *= 1e-3
    x[3] = 0.0  # an exactly zero vector
    eps = 1e-6
    x[4] = np.float32(1e-8)  # ||x|| = 2.4e-8 < eps: the eps branch, x / eps
    got = np.asarray(jax.jit(lambda v: l2_normalize(v, eps=eps))(x))
    x64 = x.astype(np.float64)
    ref = x64 / np.maximum(np.linalg.norm(x64, axis=1, keepdims=True), eps)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-7)  # float32 rounding of O(1) values
    assert np.all(got[3] == 0)
    jac = np.asarray(jax.jacobian(lambda v: l2_normalize(v, eps=eps))(jnp.asarray(x)))  # [5, 6, 5, 6]
    assert np.all(np.isfinite(jac))
    for i in (0, 1, 2):
        norm = np.linalg.norm(x64[i])
        n = x64[i] / norm
        np.testing.assert_allclose(jac[i, :, i, :], (np.eye(6) - np.outer(n, n)) / norm, rtol=1e-4, atol=1e-4)
    for i in (3, 4):  # eps branch: d(x / eps)/dx = I / eps
        np.testing.assert_allclose(jac[i, :, i, :], np.eye(6) / eps, rtol=1e-5)
    # default eps (1e-12, torch's F.normalize) at zero: finite as well, and in bfloat16 (eps^2 would underflow there)
    g = jax.grad(lambda v: jnp.sum(l2_normalize(v) * jnp.arange(1.0, 7.0)))(jnp.zeros((6,)))
    assert np.all(np.isfinite(np.asarray(g)))
    gb = jax.grad(lambda v: jnp.sum(l2_normalize(v).astype(jnp.float32)))(jnp.zeros((6,), jnp.bfloat16))
    assert np.all(np.isfinite(np.asarray(gb, np.float32)))


def test_rvq_l2_normalized_gradients_finite_at_zero_latents():
    """A silent input with zero biases gives exactly zero latents: the l2-normalised RVQ's gradients stay finite."""
    rvq = ResidualVQ(num_levels=2, codebook_size=8, code_dim=3, features=6, l2_normalize=True)
    x = jax.random.normal(jax.random.key(1), (2, 4, 6)).at[0].set(0.0)
    variables = _init(rvq, x, train=False)

    def loss(p, x):
        out = rvq.apply({"params": p}, x, train=False)
        return jnp.sum(out.quantized**2) + out.loss

    gp, gx = jax.grad(loss, argnums=(0, 1))(variables["params"], x)
    for leaf in jax.tree.leaves((gp, gx)):
        assert np.all(np.isfinite(np.asarray(leaf)))


def _clustered(n_per, centres, spread, seed):
    rng = np.random.default_rng(seed)
    centres = np.asarray(centres, np.float64)
    pts = np.concatenate([c + spread * rng.standard_normal((n_per, centres.shape[1])) for c in centres])
    return pts[rng.permutation(len(pts))].astype(np.float32)


def _lloyd_numpy(x, init, iters, mask):
    """float64 Lloyd's k-means from given centroids (empty clusters keep theirs); also the smallest assignment
    margin seen (so the test can check float32 cannot flip an assignment)."""
    x = np.asarray(x, np.float64)[mask]
    c = np.asarray(init, np.float64).copy()
    margin = np.inf
    for _ in range(iters):
        d = ((x[:, None] - c[None]) ** 2).sum(-1)
        ds = np.sort(d, 1)
        margin = min(margin, float((ds[:, 1] - ds[:, 0]).min()))
        a = d.argmin(1)
        for k in range(len(c)):
            if (a == k).any():
                c[k] = x[a == k].mean(0)
    return c, margin


def _distortion(x, c):
    x, c = np.asarray(x, np.float64), np.asarray(c, np.float64)
    return float(((x[:, None] - c[None]) ** 2).sum(-1).min(1).mean())


def test_kmeans_matches_numpy_lloyd():
    centres = [[4.0 * i, 3.0 * (i % 2), -2.0 * i] for i in range(6)]
    x = _clustered(20, centres, 0.3, seed=0)  # [120, 3]
    mask = np.ones(len(x), bool)
    mask[::7] = False  # unselected rows never become or move centroids
    x[~mask] += 100.0
    key = jax.random.key(3)
    c0, n0 = jax.jit(lambda x, m: kmeans(x, 8, 0, key, m))(x, mask)
    c0 = np.asarray(c0)
    rows = {tuple(r) for r in x[mask]}
    assert all(tuple(r) in rows for r in c0) and len({tuple(r) for r in c0}) == 8  # 8 distinct selected rows
    np.testing.assert_array_equal(np.asarray(n0), np.ones(8))
    c, sizes = jax.jit(lambda x, m: kmeans(x, 8, 6, key, m))(x, mask)
    ref, margin = _lloyd_numpy(x, c0, 6, mask)
    assert margin > 1e-3, margin  # no near-ties: float32 assigns as float64 does
    np.testing.assert_allclose(np.asarray(c), ref, atol=1e-5)  # float32 means of O(10) values
    d = ((x[mask][:, None].astype(np.float64) - ref[None]) ** 2).sum(-1).argmin(1)
    np.testing.assert_array_equal(np.asarray(sizes), np.bincount(d, minlength=8))
    # k-means lowers the distortion a lot compared with its random-row start on clustered data
    assert _distortion(x[mask], ref) < 0.5 * _distortion(x[mask], c0)
    # fewer selected rows than clusters: every selected row is used, then they repeat
    few = np.zeros(len(x), bool)
    few[:3] = True
    c_few, _ = kmeans(jnp.asarray(x), 8, 0, key, jnp.asarray(few))
    assert {tuple(r) for r in np.asarray(c_few)} == {tuple(r) for r in x[:3]}


@pytest.mark.parametrize("use_ema", [False, True])
def test_vq_kmeans_init_on_first_training_batch(use_ema):
    K, C = 6, 2
    vq = VectorQuantizer(codebook_size=K, code_dim=C, use_ema=use_ema, kmeans_init=True, kmeans_iters=20)
    x = jnp.asarray(_clustered(16, [[5.0 * np.cos(a), 5.0 * np.sin(a)] for a in np.arange(K) * 2 * np.pi / K],
                               0.2, seed=1))
    variables = _init(vq, x, train=True)
    assert int(variables["quantizer_state"]["initialized"]) == 0  # init does not run k-means
    effective = lambda v: np.asarray(vq.apply(v, method=VectorQuantizer.raw_codebook), np.float64)  # noqa: E731
    random_cb = effective(variables)
    # train=True without a mutable state collection: nothing changes, no error
    out_imm = vq.apply(variables, x, train=True, rngs={"dropout": jax.random.key(0)})
    np.testing.assert_array_equal(np.asarray(out_imm.codes), np.asarray(vq.apply(variables, x, train=False).codes))
    step = jax.jit(lambda v, k: vq.apply(v, x, train=True, mutable=["quantizer_state"], rngs={"dropout": k}))
    out, st = step(variables, jax.random.key(1))
    v1 = {**variables, **st}
    cb = effective(v1)
    assert int(v1["quantizer_state"]["initialized"]) == 1
    # a k-means fixed point (float64 check): every code is the mean of the vectors assigned to it
    xd = np.asarray(x, np.float64)
    a = ((xd[:, None] - cb[None]) ** 2).sum(-1).argmin(1)
    assert len(set(a.tolist())) == K  # one code per cluster
    for k in range(K):
        np.testing.assert_allclose(cb[k], xd[a == k].mean(0), atol=1e-5)
    assert _distortion(xd, cb) < 0.05 * _distortion(xd, random_cb)
    # that call already quantized with the new codebook
    np.testing.assert_array_equal(np.asarray(out.codes), a)
    np.testing.assert_allclose(np.asarray(out.quantized), cb[a], atol=1e-5)
    if not use_ema:  # the parameter itself is untouched (the offset carries the difference) and still learns
        np.testing.assert_array_equal(np.asarray(v1["params"]["codebook"]), np.asarray(variables["params"]["codebook"]))
    # the second training call does not initialise again
    x2 = x + 1.0
    _, st2 = vq.apply(v1, x2, train=True, mutable=["quantizer_state"], rngs={"dropout": jax.random.key(2)})
    cb2 = effective({**v1, **st2})
    if use_ema:
        # the first call reset the counts to 1 and ema_sum to the centroids, then made its EMA step with them
        st1 = v1["quantizer_state"]
        np.testing.assert_allclose(np.asarray(st1["ema_count"]), 0.99 + 0.01 * np.bincount(a, minlength=K), rtol=1e-6)
        # the second is an ordinary EMA step (numpy, float64)
        x2d = np.asarray(x2, np.float64)
        onehot = np.eye(K)[((x2d[:, None] - cb[None]) ** 2).sum(-1).argmin(1)]
        count = 0.99 * np.asarray(st1["ema_count"], np.float64) + 0.01 * onehot.sum(0)
        ema_sum = 0.99 * np.asarray(st1["ema_sum"], np.float64) + 0.01 * onehot.T @ x2d
        n = count.sum()
        ref = ema_sum / ((count + 1e-5) / (n + K * 1e-5) * n)[:, None]
        np.testing.assert_allclose(cb2, ref, atol=1e-5)
    else:
        np.testing.assert_array_equal(cb2, cb)


def test_rvq_kmeans_init_levels_use_residuals_and_dropout_mask():
    """kmeans_iters=0 (data init): level 0's codes are rows of x; level 1's are rows of the residual x - q0(x)
    of the examples that keep >= 2 levels under quantizer dropout."""
    L, K, D = 2, 4, 3
    rvq = ResidualVQ(num_levels=L, codebook_size=K, code_dim=D, kmeans_init=True, kmeans_iters=0, dropout_rate=1.0)
    x = jax.random.normal(jax.random.key(1), (6, 5, D))
    variables = _init(rvq, x, train=True)
    out, st = rvq.apply(variables, x, train=True, mutable=["quantizer_state"], rng=jax.random.key(7),
                        rngs={"dropout": jax.random.key(8)})
    v = {**variables, **st}
    cbs = [np.asarray(rvq.apply(v, method=lambda m, l=l: m.levels[l].raw_codebook())) for l in range(L)]
    xd = np.asarray(x)
    rows0 = {tuple(r) for r in xd.reshape(-1, D).round(5)}
    assert all(tuple(r) in rows0 for r in cbs[0].round(5))
    # which examples kept level 1: their output is not the level-0 code alone
    q0 = cbs[0][np.asarray(out.codes[..., 0])]
    keep1 = ~np.all(np.isclose(np.asarray(out.quantized), q0, atol=1e-6), axis=(1, 2))
    assert 0 < keep1.sum() < len(keep1)
    resid = (xd - q0)[keep1].reshape(-1, D)
    rows1 = {tuple(r) for r in resid.round(5)}
    assert all(tuple(r) in rows1 for r in cbs[1].round(5)), (cbs[1], keep1)
