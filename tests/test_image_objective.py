"""ImageVQObjective: GAN gradients and the adaptive weight against an independent computation; a trainer run."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from configs.image import digits_tiny
from teal_jax.models.image_discriminator import hinge_d_loss, hinge_g_loss
from teal_jax.train.image_objective import ImageVQObjective, recon_loss


@pytest.fixture(autouse=True, scope="module")
def _fast_prng():
    """rbg keys: XLA:CPU takes ~2 s to compile each threefry draw, which dominates these small models' init."""
    with jax.default_prng_impl("rbg"):
        yield


def _small(variant):
    c = digits_tiny.get_config(variant)
    c.model.base_channels = 8
    c.model.channel_multipliers = (1, 2)
    c.model.attn_levels = (1,)
    c.model.latent_channels = 16
    c.model.norm_groups = 4
    c.model.disc.base_channels = 8
    c.model.disc.norm_groups = 4
    c.model.disc.start_step = 5
    return c


@pytest.fixture(scope="module")
def gan_setup():
    c = _small("vq,gan")
    obj = ImageVQObjective(c)
    batch = {"image": np.random.default_rng(0).integers(0, 256, (4, 32, 32, 1), dtype=np.uint8)}
    params, mstate = jax.jit(obj.init)(jax.random.key(0), batch)
    grads_fn = jax.jit(obj.grads)  # shared by the tests below: one compilation, any step value
    return obj, nn.unbox(params), nn.unbox(mstate), batch, grads_fn


def test_gan_grads_and_adaptive_weight(gan_setup):
    obj, params, mstate, batch, grads_fn = gan_setup
    assert set(params) == {"model", "disc"} and "quantizer_state" in mstate  # restart bookkeeping
    rng, step = jax.random.key(1), jnp.asarray(7, jnp.int32)
    grads, new_state, m = grads_fn(params, mstate, batch, rng, step)
    # the restart bookkeeping advanced: codes unused in this batch are one step older
    unused = new_state["quantizer_state"]["quantizer"]["unused_steps"]
    assert int(unused.max()) == 1 and int(unused.min()) == 0
    assert jax.tree.structure(grads) == jax.tree.structure(params)

    # independent computation: two separate gradients, lambda from their last-layer norms
    x = jnp.asarray(batch["image"], jnp.float32) / 127.5 - 1

    def parts(p):
        (recon, q), _ = obj.model.apply({"params": p, **mstate}, x, train=True, mutable=["quantizer_state"],
                                        rngs={"dropout": rng})
        g = hinge_g_loss(obj.disc.apply({"params": params["disc"]}, recon))
        return recon_loss(x, recon, "l1+l2") + q.loss, g

    def d_loss(dp):
        recon = obj.model.apply({"params": params["model"], **mstate}, x, train=False)[0]
        return hinge_d_loss(obj.disc.apply({"params": dp}, x), obj.disc.apply({"params": dp}, recon))

    # one compiled program for the whole reference
    g_rec, g_gan, d_ref = jax.jit(lambda p, dp: (jax.grad(lambda q: parts(q)[0])(p),
                                                 jax.grad(lambda q: parts(q)[1])(p), d_loss(dp)))(
        params["model"], params["disc"])
    last = lambda t: t["decoder"]["conv_out"]["kernel"]  # noqa: E731
    lam = np.linalg.norm(last(g_rec)) / (np.linalg.norm(last(g_gan)) + 1e-4)
    w = obj.disc_cfg.weight * lam
    np.testing.assert_allclose(float(m["disc_weight"]), w, rtol=1e-4)
    want = jax.tree.map(lambda a, b: a + w * b, g_rec, g_gan)
    for a, b in zip(jax.tree.leaves(grads["model"]), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(float(m["d_loss"]), float(d_ref), rtol=1e-4)
    assert all(np.isfinite(float(v)) for v in m.values())


def test_gan_is_off_before_start_step(gan_setup):
    obj, params, mstate, batch, grads_fn = gan_setup
    grads, _, m = grads_fn(params, mstate, batch, jax.random.key(1), jnp.asarray(2, jnp.int32))
    assert float(m["disc_weight"]) == 0.0 and float(m["d_loss"]) == 0.0
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads["disc"]))
    np.testing.assert_allclose(float(m["loss"]), float(m["recon_loss"] + m["quantizer_loss"]), rtol=1e-6)


@pytest.mark.slow  # ~1-2 min of XLA:CPU compilation (train step, eval, on_eval, tokenizer) on the 2-core machine
def test_trainer_run_checkpoint_tokenizer_and_samples(tmp_path, devices):
    from teal_jax.tokenizers.image import ImageTokenizer
    from teal_jax.train.trainer import train

    c = _small("smoke,gan")
    c.model.disc.start_step = 1  # the discriminator group trains from the second step
    c.optimizers.disc = dict(lr=5e-4, weight_decay=0.0)
    c.train.steps = 3
    c.train.log_every = 1
    c.train.eval_every = 3
    c.train.eval_batches = 1
    c.train.checkpoint_every = 3
    c.train.async_checkpoints = False
    c.mesh.shape = (-1, 1, 1)
    out = train(c, str(tmp_path), devices=devices[:2])  # batch sharded over 2 devices (cheaper than 8 on CPU)
    for k in ("eval_heldout_psnr", "eval_heldout_ssim", "eval_heldout_usage", "eval_heldout_perplexity"):
        assert np.isfinite(out[k]), k
    assert out["eval_heldout_images"] == 256.0
    # two parameter groups, each with its own optimizer and learning rate
    assert out["lr/disc"] != out["lr/model"] and np.isfinite(out["d_loss"]) and out["disc_weight"] > 0
    assert os.path.exists(tmp_path / "samples" / "recon_000003.png")
    from teal_jax.checkpoint import load_params

    _, params, _ = load_params(str(tmp_path))
    assert set(params) == {"model", "disc"}
    tok = ImageTokenizer.from_checkpoint(str(tmp_path))
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32), dtype=np.uint8)
    codes = tok.encode(images)
    assert codes.shape == (2, 16, 16) and int(codes.max()) < tok.vocab_size == 200
