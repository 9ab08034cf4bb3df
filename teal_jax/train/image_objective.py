"""Training the image tokenizer (objective 'image_vq'): VQGAN autoencoder + optional PatchGAN discriminator.

Generator loss (parameter group 'model')::

    L_G = rec(x, x_hat) + quantizer_weight * L_vq + [step >= disc.start_step] * disc.weight * lambda * (-E D(x_hat))

rec is L1, L2 (MSE) or their sum (``model.recon_loss``); L_vq is the quantizer's codebook + commitment loss (0 for
FSQ). lambda is taming's adaptive weight ``||grad_last rec|| / (||grad_last L_gan|| + 1e-4)`` (clipped to
[0, 1e4], no gradient), grad_last = the gradient w.r.t. the decoder's last conv kernel: it balances the two terms
where they meet. We get both gradients from one forward pass (``jax.vjp``, two cotangents), so lambda costs one
extra backward pass and no extra forward pass.

Discriminator loss (group 'disc', its own optimizer via ``config.optimizers.disc``): hinge,
``0.5 (E relu(1 - D(x)) + E relu(1 + D(sg(x_hat))))``, zero before ``disc.start_step``.

Images enter as uint8 ``[batch, H, W, C]`` and are mapped to [-1, 1] on the device. Metrics: losses, PSNR, codebook
usage/perplexity of the batch; ``on_eval`` adds held-out PSNR/SSIM/usage/perplexity over the whole eval split and
writes ``samples/recon_<step>.png`` (originals above reconstructions).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from teal_jax import paths
from teal_jax.data.iterator import DataIterator
from teal_jax.evaluate import image as image_eval
from teal_jax.models.image_discriminator import PatchDiscriminator, hinge_d_loss, hinge_g_loss
from teal_jax.models.vqgan import VQGAN, VQGANConfig
from teal_jax.train.objective import Objective

STATE = "quantizer_state"


def to_unit_range(images: jax.Array) -> jax.Array:
    """uint8 [0, 255] -> float32 [-1, 1]; float inputs are taken as already in [-1, 1]."""
    if images.dtype == jnp.uint8:
        return images.astype(jnp.float32) / 127.5 - 1.0
    return images.astype(jnp.float32)


def recon_loss(x: jax.Array, y: jax.Array, kind: str) -> jax.Array:
    d = (x - y).astype(jnp.float32)
    if kind == "l1":
        return jnp.mean(jnp.abs(d))
    if kind == "l2":
        return jnp.mean(d**2)
    if kind == "l1+l2":
        return jnp.mean(jnp.abs(d)) + jnp.mean(d**2)
    raise ValueError(f"model.recon_loss={kind!r}: choose 'l1', 'l2' or 'l1+l2'")


def default_disc_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        enabled=False, base_channels=64, num_layers=3, norm="group", norm_groups=32, start_step=0, weight=0.1,
        adaptive_weight=True,
    ))


class ImageVQObjective(Objective):
    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        m = config.model
        self.model_config = VQGANConfig.from_config(m, dtype=config.train.compute_dtype)
        self.model = VQGAN(self.model_config)
        self.recon_kind = m.get("recon_loss", "l1")
        recon_loss(jnp.zeros(()), jnp.zeros(()), self.recon_kind)  # validates the name now
        self.quantizer_weight = float(m.get("quantizer_weight", 1.0))
        disc = default_disc_config()
        disc.update(dict(m.get("disc", {}) or {}))
        self.disc_cfg = disc
        self.disc = (
            PatchDiscriminator(base_channels=disc.base_channels, num_layers=disc.num_layers, norm=disc.norm,
                               norm_groups=disc.norm_groups, dtype=config.train.compute_dtype)
            if disc.enabled else None
        )
        d = config.data
        self.data_kind = d.get("kind", "digits")
        if self.data_kind not in ("digits", "tfds"):
            raise ValueError(f"config.data.kind={self.data_kind!r}: choose 'digits' or 'tfds'")
        self._eval_fns: dict[str, Any] = {}

    # ---- model ---------------------------------------------------------------------------------------------
    def init(self, rng, batch):
        x = to_unit_range(jnp.asarray(batch["image"]))
        r_model, r_disc, r_drop = jax.random.split(rng, 3)
        variables = self.model.init({"params": r_model, "dropout": r_drop}, x, train=False)
        params = {"model": variables["params"]}
        if self.disc is not None:
            params["disc"] = self.disc.init(r_disc, x)["params"]
        model_state = {k: v for k, v in variables.items() if k != "params"}
        return params, model_state

    def _last_layer(self, tree):
        return tree["decoder"]["conv_out"]["kernel"]

    def grads(self, params, model_state, batch, rng, step):
        x = to_unit_range(batch["image"])
        use_disc = self.disc is not None
        disc_on = (step >= self.disc_cfg.start_step).astype(jnp.float32) if use_disc else 0.0

        def forward(p):
            (recon, q), new_state = self.model.apply(
                {"params": p, **model_state}, x, train=True, mutable=[STATE], rngs={"dropout": rng})
            recon = recon.astype(jnp.float32)
            rec = recon_loss(x, recon, self.recon_kind)
            base = rec + self.quantizer_weight * q.loss
            g_loss = hinge_g_loss(self.disc.apply({"params": params["disc"]}, recon)) if use_disc else 0.0 * rec
            return (base, g_loss), (recon, q, rec, new_state)

        (base, g_loss), vjp_fn, (recon, q, rec, new_state) = jax.vjp(forward, params["model"], has_aux=True)
        one, zero = jnp.ones((), base.dtype), jnp.zeros((), base.dtype)
        (g_base,) = vjp_fn((one, zero))
        metrics = {"recon_loss": rec, "quantizer_loss": q.loss, **{f"codebook/{k}": v for k, v in q.metrics.items()}}
        metrics["psnr"] = jnp.mean(image_eval.psnr((x + 1) / 2, jnp.clip((recon + 1) / 2, 0, 1)))
        grads = {"model": g_base}
        loss = base
        if use_disc:
            (g_gan,) = vjp_fn((zero, one))
            if self.disc_cfg.adaptive_weight:
                # taming's balance: ||d rec / d w_last|| / ||d L_gan / d w_last|| at the decoder's last layer
                n_rec = jnp.linalg.norm(self._last_layer(g_base))
                n_gan = jnp.linalg.norm(self._last_layer(g_gan))
                lam = jax.lax.stop_gradient(jnp.clip(n_rec / (n_gan + 1e-4), 0.0, 1e4))
            else:
                lam = jnp.ones(())
            w = disc_on * self.disc_cfg.weight * lam
            grads["model"] = jax.tree.map(lambda a, b: a + w * b, g_base, g_gan)
            loss = base + w * g_loss

            def d_loss_fn(dp):
                logits_real = self.disc.apply({"params": dp}, x)
                logits_fake = self.disc.apply({"params": dp}, jax.lax.stop_gradient(recon))
                return disc_on * hinge_d_loss(logits_real, logits_fake), (logits_real, logits_fake)

            (d_loss, (lr, lf)), grads["disc"] = jax.value_and_grad(d_loss_fn, has_aux=True)(params["disc"])
            metrics.update({"g_loss": g_loss, "d_loss": d_loss, "disc_weight": w,
                            "logits_real": jnp.mean(lr), "logits_fake": jnp.mean(lf)})
        metrics["loss"] = loss
        return grads, new_state, metrics

    def _reconstruct(self, params, model_state, images):
        x = to_unit_range(images)
        recon, q = self.model.apply({"params": params["model"], **model_state}, x, train=False)
        return x, recon.astype(jnp.float32), q

    def eval_metrics(self, params, model_state, batch):
        x, recon, q = self._reconstruct(params, model_state, batch["image"])
        a, b = (x + 1) / 2, jnp.clip((recon + 1) / 2, 0, 1)
        return {
            "loss": recon_loss(x, recon, self.recon_kind),
            "psnr": jnp.mean(image_eval.psnr(a, b)),
            "ssim": jnp.mean(image_eval.ssim(a, b)) if min(x.shape[1:3]) >= 11 else jnp.zeros(()),
            "codebook/usage": q.metrics["usage"],
            "codebook/perplexity": q.metrics["perplexity"],
        }

    # ---- data ----------------------------------------------------------------------------------------------
    def prepare(self, workdir: str) -> None:
        super().prepare(workdir)
        if self.data_kind == "digits":
            from teal_jax.data.digits import build_digits

            build_digits(self._data_dir(), int(self.config.data.image_size))

    def _data_dir(self) -> str:
        d = self.config.data.get("data_dir")
        return d if d else paths.data_dir(self.workdir or ".")

    def _source(self, split: str):
        import tensorflow_datasets as tfds

        d = self.config.data
        if self.data_kind == "digits":
            name, tfds_split = f"digits_images/{int(d.image_size)}px", {"train": "train", "eval": "test"}[split]
        else:
            name = d.name
            tfds_split = d.get("train_split", "train") if split == "train" else d.get("eval_split", "validation")
        return tfds.data_source(name, split=tfds_split, data_dir=self._data_dir())

    def make_data(self, split, *, batch_size, process_index, process_count) -> DataIterator:
        from teal_jax.data.image_pipeline import make_image_iterator

        if split not in ("train", "eval"):
            raise ValueError(f"split={split!r}: choose 'train' or 'eval'")
        d = self.config.data
        return make_image_iterator(
            self._source(split), batch_size=batch_size, image_size=int(d.image_size),
            channels=self.model_config.in_channels, train=split == "train", seed=self.config.seed,
            process_index=process_index, process_count=process_count, image_key=d.get("image_key", "image"),
            label_key=d.get("label_key", "label"))

    def tokens_per_example(self, batch) -> int:
        return int(np.prod(np.shape(batch["image"])[1:3]))

    # ---- held-out evaluation + samples ----------------------------------------------------------------------
    def heldout_eval(self, params, model_state, *, batch_size: int | None = None) -> tuple[dict[str, float], tuple]:
        """PSNR/SSIM (means over images) and codebook usage/perplexity (over all held-out codes) of the whole
        eval split; also returns (originals, reconstructions) uint8 of the first batch."""
        bs = batch_size or int(self.config.data.get("eval_batch_size", 64))
        fn = self._eval_fns.get("recon")
        if fn is None:
            def recon_fn(p, s, images):
                x, recon, q = self._reconstruct(p, s, images)
                a, b = (x + 1) / 2, jnp.clip((recon + 1) / 2, 0, 1)
                return image_eval.psnr(a, b), image_eval.ssim(a, b), q.codes, recon

            fn = self._eval_fns["recon"] = jax.jit(recon_fn)
        it = self.make_data("eval", batch_size=bs, process_index=0, process_count=1)
        psnrs, ssims, first = [], [], None
        counts = np.zeros((self.model_config.num_codes,), np.int64)
        for batch in it:
            p, s, codes, recon = jax.device_get(fn(params, model_state, batch["image"]))
            psnrs.append(p)
            ssims.append(s)
            counts += np.bincount(np.asarray(codes).reshape(-1), minlength=counts.size)
            if first is None:
                first = (batch["image"], image_eval.to_uint8(recon))
        stats = image_eval.codebook_stats(counts)
        out = {"heldout_psnr": float(np.mean(np.concatenate(psnrs))),
               "heldout_ssim": float(np.mean(np.concatenate(ssims))),
               "heldout_usage": stats["usage"], "heldout_perplexity": stats["perplexity"],
               "heldout_images": float(sum(len(p) for p in psnrs))}
        return out, first

    def on_eval(self, params, model_state, workdir, step):
        if jax.process_index() != 0:
            return {}
        values, (orig, recon) = self.heldout_eval(params, model_state)
        image_eval.save_grid_png(orig, recon, os.path.join(workdir, "samples", f"recon_{step:06d}.png"))
        return values
