"""``teal_jax.load(workdir)``: a trained model, ready for inference in Python.

What comes back depends on what the workdir trained (``config.objective``):
  'lm'           -> LanguageModel (``.generate(texts)``, ``.logits(tokens)``)
  'image_vq'     -> teal_jax.tokenizers.image.ImageTokenizer
  'audio_codec'  -> teal_jax.tokenizers.audio.AudioTokenizer
  'teal'         -> teal_jax.teal.TealModel
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from teal_jax import checkpoint, lineage
from teal_jax.generate import SamplingConfig, sample
from teal_jax.models.transformer import TransformerConfig, TransformerLM

_LOADERS = {
    "lm": "teal_jax.api:LanguageModel.from_checkpoint",
    "image_vq": "teal_jax.tokenizers.image:ImageTokenizer.from_checkpoint",
    "audio_codec": "teal_jax.tokenizers.audio:AudioTokenizer.from_checkpoint",
    "teal": "teal_jax.teal:TealModel.from_checkpoint",
}


class LanguageModel:
    """A trained decoder-only LM with its text tokenizer (when it was trained on text)."""

    def __init__(self, model_config: TransformerConfig, params, tokenizer=None, config=None):
        self.model_config = model_config
        self.params = jax.tree.map(jnp.asarray, params)
        self.tokenizer = tokenizer
        self.config = config
        self._forward = jax.jit(lambda p, t: TransformerLM(model_config).apply({"params": p}, t))

    @classmethod
    def from_checkpoint(cls, workdir: str, step: int | None = None) -> LanguageModel:
        config, params, _ = checkpoint.load_params(workdir, step)
        # Inference computes in float32 unless the config asked otherwise at training time on an accelerator.
        model_config = TransformerConfig.from_config(config.model, dtype=config.train.compute_dtype)
        tokenizer = None
        if config.data.get("kind", "text") == "text":
            from teal_jax.tokenizers.text import TextTokenizer

            path = lineage.lm_run_text_tokenizer(workdir, config)
            if path is None:
                raise FileNotFoundError(f"no SentencePiece model found for {workdir} (config.data.tokenizer_model)")
            tokenizer = TextTokenizer.load(path)
        return cls(model_config, params["model"], tokenizer, config)

    def logits(self, tokens: np.ndarray) -> np.ndarray:
        """tokens int32 [B, T] -> float32 logits [B, T, vocab]."""
        return np.asarray(self._forward(self.params, jnp.asarray(tokens, jnp.int32)))

    def generate(self, prompts: Sequence[str] | Sequence[Sequence[int]], *, max_new_tokens: int = 64,
                 temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0) -> list:
        """Continues each prompt. Strings need a tokenizer and return strings; id lists return id lists."""
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
        out = sample(self.model_config, self.params, ids, cfg, jax.random.key(seed))
        if not as_text:
            return [list(map(int, row)) for row in out]
        texts = []
        for row in out:
            row = list(map(int, row))
            if eos is not None and eos in row:
                row = row[: row.index(eos)]
            texts.append(self.tokenizer.decode(row))
        return texts


def load(workdir: str, step: int | None = None):
    """Loads the newest (or ``step``) checkpoint of ``workdir`` as a ready-to-use model; see the module docstring."""
    config = checkpoint.read_config(workdir, step)
    kind = config.get("objective", "lm")
    if kind not in _LOADERS:
        raise ValueError(f"{workdir}: config.objective={kind!r} has no loader; known: {sorted(_LOADERS)}")
    module, attr = _LOADERS[kind].split(":")
    target = importlib.import_module(module)
    for part in attr.split("."):
        target = getattr(target, part)
    return target(workdir, step) if step is not None else target(workdir)
