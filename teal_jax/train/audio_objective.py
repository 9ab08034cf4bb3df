"""Training the audio codec (objective 'audio_codec'): SEANet encoder/decoder + residual VQ (+ optional GAN).

Generator loss (parameter group 'model')::

    L_G = mel_weight * mean_s |log mel_s(x) - log mel_s(x_hat)|          (multi-scale mel, n_fft in mel_scales)
        + stft_weight * MR-STFT(x, x_hat)                                 (spectral convergence + log-magnitude L1)
        + l1_weight * |x - x_hat|  +  quantizer_weight * L_vq             (waveform L1, codebook + commitment)
        + [step >= disc.start_step] * (disc.adv_weight * L_adv + disc.fm_weight * L_fm)

STFT magnitudes are ``sqrt(re^2 + im^2 + eps)`` so gradients stay finite at silent frames. The discriminator
(group 'disc', its own optimizer through ``config.optimizers.disc``) is the multi-scale STFT discriminator
(+ multi-period with ``disc.periods``), hinge or LSGAN loss, zero before ``disc.start_step``.

Batches are ``{'audio': int16 [batch, crop], 'length', 'label'}`` (see :mod:`teal_jax.data.speech`); audio is
mapped to float in [-1, 1) on the device. ``on_eval`` (host) reconstructs the held-out voices' clips, scores them
with the independent spoken-word classifier (trained once on the clean training audio, cached in
``<data_dir>/classifier``), reports SI-SNR, mel and STFT distances and per-level codebook usage over all held-out
codes (and the classifier accuracy / mel distance with the first level alone), and writes WAVs (original and
reconstruction) to ``<workdir>/samples/step_<n>/``.
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
from teal_jax.evaluate import audio as audio_eval
from teal_jax.models import audio_discriminators as discs
from teal_jax.models.codec import Codec, CodecConfig
from teal_jax.train.objective import Objective

STATE = "quantizer_state"


def to_float(audio: jax.Array) -> jax.Array:
    """int16 -> float32 in [-1, 1); float input is taken as is."""
    if audio.dtype == jnp.int16:
        return audio.astype(jnp.float32) / 32768.0
    return audio.astype(jnp.float32)


def default_loss_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        mel_weight=1.0, mel_scales=(128, 256, 512, 1024, 2048), mel_bands=(16, 32, 64, 80, 80),
        stft_weight=1.0, stft_resolutions=((512, 128), (1024, 256), (256, 64)), l1_weight=0.1,
        quantizer_weight=1.0,
    ))


def default_disc_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        enabled=False, n_ffts=(256, 512, 1024), channels=32, periods=(), loss="hinge", start_step=0,
        adv_weight=1.0, fm_weight=1.0,
    ))


class AudioCodecObjective(Objective):
    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        m = config.model
        self.codec_config = CodecConfig.from_config(m, dtype=config.train.compute_dtype)
        self.model = Codec(self.codec_config)
        self.loss_cfg = default_loss_config()
        self.loss_cfg.update(dict(m.get("loss", {}) or {}))
        if len(self.loss_cfg.mel_scales) != len(self.loss_cfg.mel_bands):
            raise ValueError("config.model.loss.mel_scales and mel_bands must have the same length")
        disc = default_disc_config()
        disc.update(dict(m.get("disc", {}) or {}))
        if disc.loss not in ("hinge", "lsgan"):
            raise ValueError(f"config.model.disc.loss={disc.loss!r}: choose 'hinge' or 'lsgan'")
        self.disc_cfg = disc
        self.disc = (discs.AudioDiscriminator(tuple(disc.n_ffts), disc.channels, tuple(disc.periods))
                     if disc.enabled else None)
        d = config.data
        self.data_kind = d.get("kind", "spoken_words")
        if self.data_kind not in ("spoken_words", "tfds"):
            raise ValueError(f"config.data.kind={self.data_kind!r}: choose 'spoken_words' or 'tfds'")
        self.sample_rate = self.codec_config.sample_rate
        self._fns: dict[str, Any] = {}
        self._classifier = None

    # ---- losses --------------------------------------------------------------------------------------------
    def recon_losses(self, x: jax.Array, y: jax.Array) -> dict[str, jax.Array]:
        """``x, y [batch, samples]`` -> the reconstruction terms (unweighted)."""
        lc = self.loss_cfg
        mel = 0.0
        for n_fft, bands in zip(lc.mel_scales, lc.mel_bands, strict=True):
            mel = mel + jnp.mean(jnp.abs(audio_eval.log_mel(x, self.sample_rate, n_fft, n_fft // 4, bands)
                                         - audio_eval.log_mel(y, self.sample_rate, n_fft, n_fft // 4, bands)))
        return {
            "mel_loss": mel / len(lc.mel_scales),
            "stft_loss": audio_eval.stft_distance(x, y, tuple(tuple(r) for r in lc.stft_resolutions)),
            "l1_loss": jnp.mean(jnp.abs(x - y)),
        }

    # ---- model ---------------------------------------------------------------------------------------------
    def init(self, rng, batch):
        x = to_float(jnp.asarray(batch["audio"]))[..., None]
        r_model, r_disc, r_drop = jax.random.split(rng, 3)
        variables = self.model.init({"params": r_model, "dropout": r_drop}, x, train=False)
        params = {"model": variables["params"]}
        if self.disc is not None:
            params["disc"] = self.disc.init(r_disc, x[..., 0])["params"]
        return params, {k: v for k, v in variables.items() if k != "params"}

    def grads(self, params, model_state, batch, rng, step):
        x = to_float(batch["audio"])  # [batch, samples]
        lc, dc = self.loss_cfg, self.disc_cfg
        use_disc = self.disc is not None
        disc_on = (step >= dc.start_step).astype(jnp.float32) if use_disc else 0.0

        def g_loss_fn(p):
            (y, q), new_state = self.model.apply({"params": p, **model_state}, x[..., None], train=True,
                                                 mutable=[STATE], rngs={"dropout": rng})
            y = y[..., 0]
            terms = self.recon_losses(x, y)
            loss = (lc.mel_weight * terms["mel_loss"] + lc.stft_weight * terms["stft_loss"]
                    + lc.l1_weight * terms["l1_loss"] + lc.quantizer_weight * q.loss)
            if use_disc:
                real = self.disc.apply({"params": params["disc"]}, x)
                fake = self.disc.apply({"params": params["disc"]}, y)
                terms["adv_loss"] = discs.g_loss(fake, dc.loss)
                terms["fm_loss"] = discs.feature_matching(real, fake)
                loss = loss + disc_on * (dc.adv_weight * terms["adv_loss"] + dc.fm_weight * terms["fm_loss"])
            return loss, (y, q, terms, new_state)

        (loss, (y, q, terms, new_state)), g_model = jax.value_and_grad(g_loss_fn, has_aux=True)(params["model"])
        grads = {"model": g_model}
        metrics = {"loss": loss, "quantizer_loss": q.loss, **terms,
                   **{f"codebook/{k}": v for k, v in q.metrics.items()}}
        if use_disc:
            y_sg = jax.lax.stop_gradient(y)

            def d_loss_fn(dp):
                return disc_on * discs.d_loss(self.disc.apply({"params": dp}, x),
                                              self.disc.apply({"params": dp}, y_sg), dc.loss)

            metrics["d_loss"], grads["disc"] = jax.value_and_grad(d_loss_fn)(params["disc"])
        return grads, new_state, metrics

    def _reconstruct(self, params, model_state, audio, num_levels=None):
        x = to_float(audio)
        y, q = self.model.apply({"params": params["model"], **model_state}, x[..., None], train=False,
                                num_levels=num_levels)
        return x, y[..., 0], q

    def eval_metrics(self, params, model_state, batch):
        x, y, q = self._reconstruct(params, model_state, batch["audio"])
        mask = jnp.arange(x.shape[1])[None, :] < batch["length"][:, None]
        terms = self.recon_losses(x, y)
        return {"loss": terms["mel_loss"], **terms, "si_snr": jnp.mean(audio_eval.si_snr(x, y, mask)),
                "codebook/usage": q.metrics["usage"], "codebook/perplexity": q.metrics["perplexity"]}

    # ---- data ----------------------------------------------------------------------------------------------
    def prepare(self, workdir: str) -> None:
        super().prepare(workdir)
        if self.data_kind == "spoken_words":
            from teal_jax.data.speech import build_spoken_words

            build_spoken_words(self._data_dir(), self.config.data.get("config", "small"))

    def _data_dir(self) -> str:
        d = self.config.data.get("data_dir")
        return d if d else paths.data_dir(self.workdir or ".")

    def _source(self, split: str):
        import tensorflow_datasets as tfds

        d = self.config.data
        if self.data_kind == "spoken_words":
            name = f"spoken_words/{d.get('config', 'small')}"
            tfds_split = {"train": "train", "eval": "test"}[split]
        else:
            name = d.name
            tfds_split = d.get("train_split", "train") if split == "train" else d.get("eval_split", "test")
        return tfds.data_source(name, split=tfds_split, data_dir=self._data_dir())

    def _adapter(self):
        from teal_jax.data.speech import RecordAdapter

        d = self.config.data
        if self.data_kind == "spoken_words":
            return RecordAdapter(sample_rate=self.sample_rate, source_rate=16000)
        return RecordAdapter(audio_key=d.get("audio_key", "speech"), text_key=d.get("text_key", "text"),
                             label_key=d.get("label_key") or None, source_rate=int(d.get("source_rate", 16000)),
                             sample_rate=self.sample_rate)

    def make_data(self, split, *, batch_size, process_index, process_count) -> DataIterator:
        from teal_jax.data.speech import make_speech_iterator

        if split not in ("train", "eval"):
            raise ValueError(f"split={split!r}: choose 'train' or 'eval'")
        d = self.config.data
        seconds = d.get("crop_seconds", 0.5) if split == "train" else d.get("eval_crop_seconds", 1.0)
        return make_speech_iterator(
            self._source(split), batch_size=batch_size, crop_samples=int(round(seconds * self.sample_rate)),
            train=split == "train", seed=self.config.seed, process_index=process_index,
            process_count=process_count, adapter=self._adapter())

    def tokens_per_example(self, batch) -> int:
        return int(np.shape(batch["audio"])[1])

    # ---- held-out evaluation + samples ---------------------------------------------------------------------
    def classifier(self):
        """The independent spoken-word classifier (spoken_words data only), trained once on clean training audio."""
        if self._classifier is None:
            from teal_jax.data.speech import load_clips
            from teal_jax.evaluate.speech_classifier import cache_dir, train_or_load

            clips = load_clips(self._source("train"), max_samples=16000, labelled_only=True)
            where = cache_dir(self._data_dir(), self.config.data.get("config", "small"))
            self._classifier = train_or_load(where, clips["audio"],
                                             clips["label"], steps=int(self.config.data.get("classifier_steps", 500)))
        return self._classifier

    def heldout_eval(self, params, model_state, *, batch_size: int = 32, num_levels: int | None = None
                     ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """Figures over every held-out clip (1 s, zero-padded) and the arrays (audio, recon, labels)."""
        from teal_jax.data.speech import load_clips

        key = f"recon{num_levels}"
        if key not in self._fns:
            def fn(p, s, audio, length):
                x, y, q = self._reconstruct(p, s, audio, num_levels)
                mask = jnp.arange(x.shape[1])[None, :] < length[:, None]
                return y, q.codes, audio_eval.si_snr(x, y, mask)

            self._fns[key] = jax.jit(fn)
        clips = load_clips(self._source("eval"), max_samples=int(self.sample_rate), adapter=self._adapter())
        n = clips["audio"].shape[0]
        recons, codes, snrs = [], [], []
        for i in range(0, n, batch_size):
            a, ln = clips["audio"][i : i + batch_size], clips["length"][i : i + batch_size]
            pad = batch_size - a.shape[0]  # constant batch shape: one compilation
            a_p = np.concatenate([a, np.zeros((pad, a.shape[1]), a.dtype)]) if pad else a
            l_p = np.concatenate([ln, np.ones((pad,), ln.dtype)]) if pad else ln
            y, c, s = jax.device_get(self._fns[key](params, model_state, a_p, l_p))
            recons.append(y[: a.shape[0]])
            snrs.append(s[: a.shape[0]])
            for j in range(a.shape[0]):  # only the frames that cover real samples count for usage
                codes.append(c[j, : -(-int(ln[j]) // self.codec_config.hop_length)])
        recon = np.concatenate(recons)
        orig = clips["audio"].astype(np.float32) / 32768.0
        usage = audio_eval.codebook_usage(np.concatenate(codes), self.codec_config.codebook_size)
        used = usage if num_levels is None else usage[:num_levels]
        out = {
            "heldout_si_snr": float(np.mean(np.concatenate(snrs))),
            "heldout_mel_distance": float(audio_eval.mel_distance(jnp.asarray(orig), jnp.asarray(recon),
                                                                  self.sample_rate)),
            "heldout_stft_distance": float(audio_eval.stft_distance(jnp.asarray(orig), jnp.asarray(recon))),
            "heldout_min_level_usage": float(np.min(used)),
            **{f"heldout_usage_level{i}": float(u) for i, u in enumerate(used)},
            "heldout_clips": float(n),
        }
        if self.data_kind == "spoken_words":
            lab = clips["label"] >= 0
            clf = self.classifier()
            out["heldout_classifier_acc_orig"] = clf.accuracy(clips["audio"][lab], clips["label"][lab])
            out["heldout_classifier_acc_recon"] = clf.accuracy(recon[lab], clips["label"][lab])
        return out, {"audio": orig, "recon": recon, "length": clips["length"], "text": clips["text"]}

    def on_eval(self, params, model_state, workdir, step):
        if jax.process_index() != 0:
            return {}
        from teal_jax.media.audio import write_wav

        values, arrays = self.heldout_eval(params, model_state)
        if self.data_kind == "spoken_words" and self.codec_config.num_levels > 1:
            # the coarsest level alone (0.6 kbit/s for speech_tiny): what TEAL's 'first_levels' scheme keeps
            one, _ = self.heldout_eval(params, model_state, num_levels=1)
            values["heldout_classifier_acc_recon_1level"] = one["heldout_classifier_acc_recon"]
            values["heldout_mel_distance_1level"] = one["heldout_mel_distance"]
        out_dir = os.path.join(workdir, "samples", f"step_{step:06d}")
        for i in range(min(int(self.config.data.get("wav_samples", 4)), len(arrays["audio"]))):
            n = int(arrays["length"][i])
            write_wav(os.path.join(out_dir, f"{i:02d}_orig.wav"), arrays["audio"][i, :n], self.sample_rate)
            write_wav(os.path.join(out_dir, f"{i:02d}_recon.wav"), arrays["recon"][i, :n], self.sample_rate)
        with open(os.path.join(out_dir, "transcripts.txt"), "w") as f:
            f.write("\n".join(arrays["text"][: int(self.config.data.get("wav_samples", 4))]) + "\n")
        return values
