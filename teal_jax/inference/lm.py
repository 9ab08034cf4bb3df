"""``LanguageModel``: a trained decoder-only text LM (what ``teal_jax.load`` returns for a run of objective ``'lm'``).

Sampling goes through the one decode loop (:func:`teal_jax.inference.sampler.generate`) with no constraint.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from teal_jax import checkpoint, lineage
from teal_jax.inference import protocol, sampler
from teal_jax.inference.sampler import SamplingConfig
from teal_jax.models import lora
from teal_jax.models.forward import jitted_apply
from teal_jax.models.transformer import TransformerConfig, TransformerLM, cast_for_compute


def cast_lm_params(config: TransformerConfig, params):
    """The step function's ``cast_params``: weights in the compute dtype, cast once before decoding."""
    return cast_for_compute(params, config)


def decoder(model_config: TransformerConfig):
    """``cache_length -> step function`` of a :class:`TransformerLM` (see :class:`sampler.LinenDecoder`)."""
    # The layer stack is unrolled for decoding: one straight-line step, no per-layer loop overhead.
    return lambda length: sampler.LinenDecoder(
        TransformerLM, dataclasses.replace(model_config, max_decode_len=length, scan_unroll=model_config.num_layers),
        cast_params=cast_lm_params)


def sample_ids(model_config: TransformerConfig, params, prompts: Sequence[Sequence[int]], sampling: SamplingConfig,
           rng: jax.Array | None = None) -> np.ndarray:
    """Generates ``sampling.max_new_tokens`` ids after each id prompt -> int32 [B, max_new_tokens] (pad after EOS).

    ``params`` are the LM's parameters (``{'embed': ..., 'layers': ...}``, unboxed).
    """
    sampler.check_context(prompts, sampling.max_new_tokens, model_config.max_decode_len)
    return sampler.generate(decoder(model_config), params, prompts, sampling, rng=rng)


class LanguageModel:
    """A trained decoder-only LM with its text tokenizer (when it was trained on text); follows
    :class:`teal_jax.inference.protocol.Model` (``kind='lm'``).

    Args:
      model_config: the :class:`TransformerConfig`.
      params: ``TransformerLM`` parameters (unboxed).
      tokenizer: a TextTokenizer, or None (the model then takes and returns id lists).
      config: the run's ConfigDict (also ``run_config``).
      workdir: the run directory, when loaded from one.
    """

    kind = "lm"

    def __init__(self, model_config: TransformerConfig, params, tokenizer=None, config=None, workdir=None):
        self.model_config = model_config
        # LoRA factors (config.model.lora) are folded into the kernels once: inference runs the plain LM.
        params = lora.merge(params, lora.LoraConfig.from_config(config.model if config is not None else None))
        self.params = jax.tree.map(jnp.asarray, params)
        self.tokenizer = tokenizer
        self.config = config
        self.workdir = workdir
        self._forward = jitted_apply(TransformerLM(model_config))

    @property
    def run_config(self):
        """The run's ConfigDict (the protocol's name for :attr:`config`)."""
        return self.config

    @classmethod
    def from_checkpoint(cls, workdir: str, step: int | None = None) -> LanguageModel:
        """Loads the newest (or ``step``) checkpoint of an ``lm`` run and its SentencePiece model (text runs)."""
        config, params, _ = checkpoint.load_params(workdir, step)
        return cls.from_params(config, params["model"], workdir)

    @classmethod
    def from_params(cls, config, params, workdir: str | None = None) -> LanguageModel:
        """A LanguageModel from an ``lm`` run's ConfigDict and in-memory ``TransformerLM`` params, with the run's
        SentencePiece model for text runs (FileNotFoundError when none is found)."""
        # Inference computes in float32 unless the config asked otherwise at training time on an accelerator.
        model_config = TransformerConfig.from_config(config.model, dtype=config.train.compute_dtype)
        tokenizer = None
        if config.data.get("kind", "text") == "text":
            from teal_jax.tokenizers.text import TextTokenizer

            path = lineage.lm_run_text_tokenizer(workdir, config)
            if path is None:
                raise FileNotFoundError(f"no SentencePiece model found for {workdir} (config.data.tokenizer_model)")
            tokenizer = TextTokenizer.load(path)
        return cls(model_config, params, tokenizer, config, workdir)

    def logits(self, tokens: np.ndarray) -> np.ndarray:
        """tokens int32 [B, T] -> float32 logits [B, T, vocab]."""
        return np.asarray(self._forward(self.params, jnp.asarray(tokens, jnp.int32)))

    def generate(self, prompts: Sequence[str] | Sequence[Sequence[int]], *, max_new_tokens: int = 64,
                 temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0) -> list:
        """Continues each prompt. Strings need a tokenizer and return strings (bos + text, cut at eos); id lists
        return id lists of ``max_new_tokens`` ids (no eos). Greedy by default."""
        as_text = bool(prompts) and isinstance(prompts[0], str)
        if as_text:
            if self.tokenizer is None:
                raise ValueError("this model has no text tokenizer: pass token id lists")
            ids = [[self.tokenizer.bos_id, *self.tokenizer.encode(p)] for p in prompts]
            eos = self.tokenizer.eos_id
        else:
            ids, eos = [list(p) for p in prompts], None
        cfg = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                             eos_id=eos, pad_id=0)
        out = sample_ids(self.model_config, self.params, ids, cfg, jax.random.key(seed))
        if not as_text:
            return [list(map(int, row)) for row in out]
        texts = []
        for row in out:
            row = list(map(int, row))
            if eos is not None and eos in row:
                row = row[: row.index(eos)]
            texts.append(self.tokenizer.decode(row))
        return texts

    def sample(self, prompts: Sequence[str], *, out_dir: str | None = None, **settings) -> list:
        """The protocol's sampler: :meth:`generate` with ``settings`` (max_new_tokens, temperature, top_k, top_p,
        seed). Without a text tokenizer each prompt is a string of space-separated ids ("1 2 3"; "" = id 0) and the
        outputs are id lists. ``out_dir`` is unused (text outputs)."""
        del out_dir
        protocol.check_settings(self.kind, settings, protocol.SAMPLE_SETTINGS)
        prompts = protocol.require_prompts(prompts, "LanguageModel.sample")
        if self.tokenizer is None:
            prompts = [[int(x) for x in p.split()] or [0] for p in prompts]
        return self.generate(prompts, **settings)
