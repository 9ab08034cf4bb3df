"""``TealModel``: a trained TEAL model with its tokenizers, ready for inference (what ``teal_jax.load`` returns for a
workdir of objective ``'teal'``; follows :class:`teal_jax.inference.protocol.Model`, ``kind='teal'``).

Every prompt is built by :class:`teal_jax.data.templates.Templates` (the one statement of the task layouts), decoded
by the one decode loop (:func:`teal_jax.inference.sampler.generate`, through :func:`sample_ids` below) under the
modality constraint (and classifier-free guidance when asked) of :mod:`teal_jax.inference.constraints`, and
de-tokenized::

    caption(images)            bos <task:caption> <boi> image <eoi>   ->  text eos          -> list[str]
    transcribe(waves, rate)    bos <task:asr> <boa> audio <eoa>       ->  text eos          -> list[str]
    generate_image(texts)      bos <task:t2i> text <boi>              ->  h*w codes <eoi>   -> uint8 [B, H, W, C]
    generate_speech(texts)     bos <task:tts> text <boa>              ->  frames codes <eoa> -> float32 [B, samples]
    generate_text(prompts)     bos text                               ->  text eos          -> list[str]

Text outputs are sampled with image/audio spans disabled (only text ids are allowed, so the answer is pure text) and
stop at the text tokenizer's eos; greedy by default. Image/speech spans are exactly ``h*w`` image codes (the image
tokenizer's token grid) or ``audio_frames * kept_levels`` audio codes, then the closer is forced and sampling stops
there (``SamplingConfig.eos_id`` = ``<eoi>``/``<eoa>``). Classifier-free guidance (``guidance_scale != 1``) uses the
unconditional prompt ``Templates.null_prompt(task)`` (``<null> <boi>`` / ``<null> <boa>``): what training's
condition dropout produces.

Audio spans have a fixed length (``templates.audio_span``: ``config.data.audio_seconds`` at the codec's rate).
``transcribe`` resamples each clip to the codec's rate and zero-pads it at the end to the span
(``templates.fit_audio``), as the training examples were made. A clip longer than the span (training skips such
clips: the model never saw speech past the span) is cut to the span, and a ``UserWarning`` names it, so a batch of
held-out clips still runs; check the warning when evaluating.

Separate input tokenizers (``config.data.image_in_tokenizer`` / ``audio_in_tokenizer``: an input-only k-means
tokenizer, docs/semantic_tokenizers.md) write the condition of ``caption`` / ``transcribe``; with
``*_in_features`` its encoder features go in unquantised (the continuous baseline: the prompt holds span positions
and the features reach the prefill). Generation always uses the output tokenizers.

Large batches run in chunks of ``max_batch`` prompts; when there is more than one chunk, the last one is padded with
copies of its last prompt so that every chunk has one shape (one compilation).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import warnings
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import linen as nn

from teal_jax import lineage
from teal_jax import vocab as vocab_lib
from teal_jax.data import templates as templates_lib
from teal_jax.inference import constraints as constraints_lib
from teal_jax.inference import protocol, sampler
from teal_jax.inference.constraints import SpanConfig
from teal_jax.inference.load import config_path, load_tokenizer
from teal_jax.inference.sampler import SamplingConfig
from teal_jax.media.image import check_pixels
from teal_jax.models import lora
from teal_jax.models.forward import jitted_apply
from teal_jax.models.teal import TealConfig, TealLM
from teal_jax.models.transformer import cast_for_compute

SAMPLE_TASKS = ("text", "image", "speech")
FEATURE_KEYS = ("features_image", "features_audio")  # TealLM's continuous inputs (batch keys of the task stream)
NO_SPANS = SpanConfig()  # image/audio spans disabled: text ids only


def cast_teal_params(config: TealConfig, params):
    """The step function's ``cast_params``: the LM's weights and the output heads (``*_head``, cast to the LM's
    compute dtype before use anyway) in the compute dtype, once before decoding; the non-text embedding tables,
    codebooks and projections stay as they are (they are used in float32)."""
    params = dict(params)
    params["lm"] = cast_for_compute(params["lm"], config.lm)
    dtype = jnp.dtype(config.lm.dtype)
    for name in params:
        if name.endswith("_head") and jnp.issubdtype(params[name].dtype, jnp.floating):
            params[name] = params[name].astype(dtype)
    return params


@functools.lru_cache(maxsize=16)
def _logits_with_features(config: TealConfig):
    """The jitted forward with continuous inputs, one per model config."""
    model = TealLM(config)
    return jax.jit(lambda p, t, fi, fa: model.apply({"params": p}, t, None, None, None, fi, fa))


def decoder(config: TealConfig):
    """``cache_length -> step function`` of a :class:`TealLM` (the step feeds each code's ``span_index``)."""
    return lambda length: sampler.LinenDecoder(
        TealLM, dataclasses.replace(config, lm=dataclasses.replace(config.lm, max_decode_len=length,
                                                                    scan_unroll=config.lm.num_layers)),
        extra_inputs=("span_index", *FEATURE_KEYS), cast_params=cast_teal_params)


def sample_ids(config: TealConfig, params, prompts: Sequence[Sequence[int]], sampling: SamplingConfig,
           spans: SpanConfig = NO_SPANS, rng: jax.Array | None = None,
           uncond_prompts: Sequence[Sequence[int]] | None = None,
           prefill: dict[str, Sequence[np.ndarray]] | None = None) -> np.ndarray:
    """Generates after each unified-id prompt -> int32 [B, sampling.max_new_tokens] (pad_id after eos_id).

    ``params``: TealLM params (unboxed). The modality constraint always runs (``spans``); guidance runs when
    ``spans.guidance_scale != 1`` or ``uncond_prompts`` is given (default unconditional prompts:
    :func:`constraints.null_prompt`), with the scale traced (one compilation for every scale). Set
    ``sampling.eos_id = vocab.eoi`` to stop after one image. Prompts are padded to a multiple of 16 ids (few
    compiled shapes). ``prefill``: continuous features of the prompts (``{'features_image': one [len(prompt), D]
    array per prompt}``). Raises ValueError on ids outside the vocabulary or a malformed open span.
    """
    vocab = config.vocab
    for i, p in enumerate(prompts):
        bad = [int(t) for t in p if not 0 <= int(t) < vocab.used_size]
        if bad:
            raise ValueError(f"prompts[{i}] has ids outside the vocabulary [0, {vocab.used_size}): {bad[:5]}")
    sampler.check_context(prompts, sampling.max_new_tokens, config.lm.max_decode_len)
    modality = constraints_lib.ModalityConstraint.of(vocab, spans)
    rules: tuple = (modality,)
    if uncond_prompts is not None or spans.guidance_scale != 1.0:
        uncond = ([constraints_lib.null_prompt(vocab, p) for p in prompts] if uncond_prompts is None
                  else uncond_prompts)
        rules = (constraints_lib.Guidance(modality, float(spans.guidance_scale),
                                          tuple(tuple(int(t) for t in u) for u in uncond)), modality)
    return sampler.generate(decoder(config), params, prompts, sampling, constraints=rules, rng=rng, pad_multiple=16,
                            prefill=prefill)



class TealModel:
    """A TEAL model + its text, image and audio tokenizers (see the module docstring).

    Args:
      config: the model's :class:`TealConfig` (or the run's ConfigDict, converted with
        ``models.teal.TealConfig.from_config``).
      params: ``TealLM`` parameters (boxed or not; ``{'model': tree}`` as in a train state is accepted too).
      text_tokenizer: a :class:`teal_jax.tokenizers.text.TextTokenizer` whose ids are the LM's text ids
        (``vocab_size <= config.lm.vocab_size``).
      image_tokenizer: an ImageTokenizer with ``vocab.image_codebook_size`` codes, or None (no image tasks).
      audio_tokenizer: an AudioTokenizer with ``vocab.audio_codebook_size`` codes per level, or None.
      audio_frames: codec frames per audio span (``templates.audio_span``); required with an audio tokenizer.
      run_config: the training run's ConfigDict (kept for reference, e.g. the base LM's workdir).
      max_batch: prompts per sampler call (larger batches run in chunks).
      workdir: the run directory, when loaded from one.
    """

    kind = "teal"

    def __init__(self, config: TealConfig | ml_collections.ConfigDict, params: Any, text_tokenizer,
                 image_tokenizer=None, audio_tokenizer=None, audio_frames: int = 0, *,
                 run_config: ml_collections.ConfigDict | None = None, max_batch: int = 64,
                 workdir: str | None = None, image_in_tokenizer=None, audio_in_tokenizer=None):
        self.workdir = workdir
        if isinstance(config, ml_collections.ConfigDict):
            run_config = config if run_config is None else run_config
            config = TealConfig.from_config(config)
        if not isinstance(config, TealConfig):
            raise TypeError(f"config must be a TealConfig or the run's ConfigDict, got {type(config).__name__}")
        self.config, self.vocab, self.run_config = config, config.vocab, run_config
        if isinstance(params, dict) and set(params) == {"model"}:
            params = params["model"]
        self.params = jax.tree.map(jnp.asarray, nn.unbox(params))
        if lora.has_adapters(self.params.get("lm", {})):  # LoRA on the text LM: fold the factors in once
            cfg = lora.LoraConfig.from_config(run_config.model if run_config is not None else None)
            self.params = {**self.params, "lm": lora.merge(self.params["lm"], cfg)}
        v = self.vocab
        if text_tokenizer is None:
            raise ValueError("TealModel needs a text tokenizer (config.data.text_tokenizer)")
        if text_tokenizer.vocab_size > v.text_size:
            raise ValueError(f"the text tokenizer has {text_tokenizer.vocab_size} ids but the LM's text range is "
                             f"[0, {v.text_size}) (config.model.lm.vocab_size): wrong tokenizer for this model")
        self.text_tokenizer = text_tokenizer
        self.templates = templates_lib.Templates(v, bos=text_tokenizer.bos_id, eos=text_tokenizer.eos_id)
        if image_tokenizer is not None and image_tokenizer.vocab_size != v.image_codebook_size:
            raise ValueError(f"the image tokenizer has {image_tokenizer.vocab_size} codes but "
                             f"config.model.vocab.image_codebook_size={v.image_codebook_size}")
        self.image_tokenizer = image_tokenizer
        self.audio_frames = int(audio_frames)
        if audio_tokenizer is not None:
            c = audio_tokenizer.config
            if audio_tokenizer.codebook_size != v.audio_codebook_size:
                raise ValueError(f"the audio tokenizer has {audio_tokenizer.codebook_size} codes per level but "
                                 f"config.model.vocab.audio_codebook_size={v.audio_codebook_size}")
            if v.audio_scheme == "interleave" and c.num_levels != v.audio_num_levels:
                raise ValueError(f"the audio codec has {c.num_levels} RVQ levels but config.model.vocab."
                                 f"audio_num_levels={v.audio_num_levels} (audio_scheme='interleave' keeps all)")
            if c.num_levels < v.audio_levels_used:
                raise ValueError(f"the audio codec has {c.num_levels} RVQ levels, the vocabulary keeps "
                                 f"{v.audio_levels_used}")
            if self.audio_frames < 1:
                raise ValueError(f"audio_frames={audio_frames}: an audio tokenizer needs the span length in frames "
                                 "(templates.audio_span(config.data.audio_seconds, ...))")
        self.audio_tokenizer = audio_tokenizer
        self.in_tokenizers = {}
        for m, tok in (("image", image_in_tokenizer), ("audio", audio_in_tokenizer)):
            size, dim = getattr(v, f"{m}_in_size"), getattr(config, f"{m}_in_dim")
            if tok is None:
                continue
            if not size:
                raise ValueError(f"an input {m} tokenizer was given but config.model.vocab.{m}_in_size=0")
            if not dim and tok.vocab_size != size:
                raise ValueError(f"the input {m} tokenizer has {tok.vocab_size} codes but "
                                 f"config.model.vocab.{m}_in_size={size}")
            if dim and tok.feature_dim != dim:
                raise ValueError(f"the input {m} tokenizer's features are {tok.feature_dim} wide but "
                                 f"config.model.{m}_in_dim={dim}")
            self.in_tokenizers[m] = tok
        if max_batch < 1:
            raise ValueError(f"max_batch={max_batch} must be >= 1")
        self.max_batch = int(max_batch)
        self._logits = jitted_apply(TealLM(config))  # (params, tokens) -> logits, shared per config
        self._logits_features = _logits_with_features(config)

    # ---- construction ------------------------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, workdir: str, step: int | None = None, **kwargs) -> TealModel:
        """Loads the newest (or ``step``) checkpoint of a ``teal`` run and the tokenizers its config names
        (``config.data.text_tokenizer`` / ``image_tokenizer`` / ``audio_tokenizer`` / ``audio_seconds``)."""
        from teal_jax import checkpoint

        config, params, _ = checkpoint.load_params(workdir, step)
        if config.get("objective") != "teal":
            raise ValueError(f"{workdir}: checkpoint of objective {config.get('objective')!r}, expected 'teal'")
        return cls.from_params(config, params["model"], workdir, **kwargs)

    @classmethod
    def from_params(cls, config: ml_collections.ConfigDict, params: Any, workdir: str | None = None,
                    **kwargs) -> TealModel:
        """A TealModel from a ``teal`` run's ConfigDict and in-memory ``TealLM`` params (e.g. a train state's), with
        the tokenizers the config names (see :meth:`from_checkpoint`; ``workdir`` resolves a relative lineage)."""
        from teal_jax.tokenizers.text import TextTokenizer

        teal_config = TealConfig.from_config(config)
        text_path = lineage.text_tokenizer(config, run=workdir)
        try:
            text = TextTokenizer.load(text_path)
        except (FileNotFoundError, ValueError) as e:
            raise type(e)(f"config.data.text_tokenizer (resolved to {text_path!r}): {e}") from e
        image_path, audio_path = config_path(config, "image_tokenizer"), config_path(config, "audio_tokenizer")
        image = load_tokenizer("image", image_path) if image_path else None
        audio, frames = None, 0
        if audio_path:
            audio = load_tokenizer("audio", audio_path)
            seconds = config.data.get("audio_seconds")
            if not seconds or float(seconds) <= 0:
                raise ValueError(f"{workdir}: config.data.audio_tokenizer is set but config.data.audio_seconds="
                                 f"{seconds!r}; it must be the (positive) audio span length in seconds")
            frames, _ = templates_lib.audio_span(float(seconds), audio.sample_rate, audio.config.hop_length)
        kwargs.setdefault("workdir", workdir)
        for m in ("image", "audio"):
            path = config_path(config, f"{m}_in_tokenizer")
            if path and f"{m}_in_tokenizer" not in kwargs:
                from teal_jax.tokenizers import kmeans

                try:
                    kwargs[f"{m}_in_tokenizer"] = kmeans.from_checkpoint(path)
                except (FileNotFoundError, ValueError, KeyError) as e:
                    raise type(e)(f"config.data.{m}_in_tokenizer={path!r}: cannot load the input tokenizer: {e}") from e
        return cls(teal_config, params, text, image, audio, frames, run_config=config, **kwargs)

    # ---- properties --------------------------------------------------------------------------------------------
    @property
    def image_grid(self) -> tuple[int, int]:
        """(h, w) codes per image span."""
        return tuple(self._image().token_grid)

    @property
    def image_size(self) -> int:
        return self._image().config.image_size

    @property
    def sample_rate(self) -> int:
        """Rate (Hz) of ``generate_speech`` output (the codec's)."""
        return self._audio().sample_rate

    @property
    def audio_samples(self) -> int:
        """Samples per audio span at :attr:`sample_rate` (= audio_frames * hop)."""
        return self.audio_frames * self._audio().config.hop_length

    def _image(self):
        if self.image_tokenizer is None or not self.vocab.image_codebook_size:
            raise ValueError("this TEAL model has no image tokenizer (config.data.image_tokenizer is '' or the "
                             "vocabulary has no image codes): image tasks are unavailable")
        return self.image_tokenizer

    def _audio(self):
        if self.audio_tokenizer is None or not self.vocab.audio_ids:
            raise ValueError("this TEAL model has no audio tokenizer (config.data.audio_tokenizer is '' or the "
                             "vocabulary has no audio codes): audio tasks are unavailable")
        return self.audio_tokenizer

    # ---- the sampler -------------------------------------------------------------------------------------------
    def _sample(self, prompts: list[list[int]], sampling: SamplingConfig, spans: SpanConfig,
                seed: int, uncond: list[int] | None = None,
                prefill: dict[str, list[np.ndarray]] | None = None) -> np.ndarray:
        """Runs :func:`sample_ids` in chunks of ``max_batch``; int32 [B, max_new_tokens]."""
        key = jax.random.key(seed)
        n, size = len(prompts), self.max_batch
        outs = []
        for c, start in enumerate(range(0, n, size)):
            chunk = prompts[start : start + size]
            extra = {k: list(a[start : start + size]) for k, a in (prefill or {}).items()}
            real = len(chunk)
            if n > size and real < size:  # same shape for every chunk: one compilation
                chunk = chunk + [chunk[-1]] * (size - real)
                extra = {k: a + [a[-1]] * (size - real) for k, a in extra.items()}
            out = sample_ids(self.config, self.params, chunk, sampling, spans, rng=jax.random.fold_in(key, c),
                             uncond_prompts=None if uncond is None else [uncond] * len(chunk),
                             **({"prefill": extra} if extra else {}))
            outs.append(np.asarray(out)[:real])
        return np.concatenate(outs, axis=0)

    def _decode_text(self, rows: np.ndarray) -> list[str]:
        """Generated rows -> strings: text before the first eos (``Templates.parse_text``); ids the tokenizer does
        not have (an LM vocabulary padded past the tokenizer's) are dropped."""
        n = self.text_tokenizer.vocab_size
        out = []
        for row in rows:
            ids = [i for i in self.templates.parse_text(row) if i < n]
            out.append(self.text_tokenizer.decode(ids))
        return out

    def _text_task(self, prompts, max_new_tokens, temperature, top_k, top_p, seed, prefill=None) -> list[str]:
        sampling = SamplingConfig(max_new_tokens=int(max_new_tokens), temperature=float(temperature),
                                  top_k=int(top_k), top_p=float(top_p), eos_id=self.templates.eos,
                                  pad_id=self.text_tokenizer.pad_id)
        # Spans disabled: only text ids may be sampled, so the answer is text.
        return self._decode_text(self._sample(prompts, sampling, SpanConfig(), seed, prefill=prefill))

    # ---- conditions (input tokenizers) -------------------------------------------------------------------------
    def condition_ids(self, modality: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The condition span of ``caption`` ('image': prepared images [B, H, W(, C)]) or ``transcribe`` ('audio':
        float32 [B, audio_samples] at the codec's rate, :meth:`fit_waveforms`) -> (unified ids int32 [B, n],
        continuous features float32 [B, n, D] or None). The input-only tokenizer writes it when the model has
        one; else the output tokenizer."""
        tok = self.in_tokenizers.get(modality)
        if tok is None:
            if modality == "image":
                return self.vocab.image_to_unified(np.asarray(self._image().encode(x))), None
            return self._codec_ids(x), None
        if getattr(self.config, f"{modality}_in_dim"):
            feats = (tok.encode_features(x) if modality == "image"
                     else tok.encode_features(x, self._audio().sample_rate)[0])
            feats = np.asarray(feats, np.float32)
            positions = np.broadcast_to(np.arange(feats.shape[1]), feats.shape[:2])
            return self.vocab.input_to_unified(modality, positions), feats
        codes = tok.encode(x) if modality == "image" else tok.encode(x, self._audio().sample_rate)[0]
        codes = np.asarray(codes)
        return self.vocab.input_to_unified(modality, codes.reshape(codes.shape[0], -1)), None

    def condition_prompts(self, task: str, ids: np.ndarray,
                          feats: np.ndarray | None) -> tuple[list[list[int]], dict[str, list[np.ndarray]] | None]:
        """Prompts of ``task`` ('caption' | 'asr') over condition ids, and the prefill features placed at their
        input ids (``{'features_<m>': one [len(prompt), D] array per prompt}``; None without features)."""
        prompts = [self.templates.prompt(task, row) for row in ids]
        if feats is None:
            return prompts, None
        m = "image" if task == "caption" else "audio"
        lo, hi = self.vocab.input_range(m)
        arrays = []
        for p, f in zip(prompts, feats, strict=True):
            t = np.asarray(p)
            a = np.zeros((len(p), f.shape[-1]), np.float32)
            inside = (t >= lo) & (t < hi)
            a[inside] = f[t[inside] - lo]
            arrays.append(a)
        return prompts, {f"features_{m}": arrays}

    # ---- image -> text -----------------------------------------------------------------------------------------
    def caption(self, images, *, max_new_tokens: int = 32, temperature: float = 0.0, top_k: int = 0,
                top_p: float = 1.0, seed: int = 0) -> list[str]:
        """Captions images: uint8 [0, 255] or float [0, 1], shaped [H, W] (one grayscale image), [B, H, W]
        (grayscale batch) or [B, H, W, C] (C in 1, 3, 4) -> B strings. Greedy by default."""
        self._image()
        x = np.asarray(images)
        if x.ndim == 2:
            x = x[None]
        if x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[-1] not in (1, 3, 4)):
            raise ValueError(f"caption: images must be [H, W], [B, H, W] or [B, H, W, 1|3|4], got shape {x.shape}")
        if x.shape[0] == 0:
            raise ValueError("caption: empty batch of images")
        check_pixels(x, name="caption: images")
        prompts, prefill = self.condition_prompts("caption", *self.condition_ids("image", x))
        return self._text_task(prompts, max_new_tokens, temperature, top_k, top_p, seed, prefill)

    # ---- speech -> text ----------------------------------------------------------------------------------------
    def fit_waveforms(self, waveforms, sample_rate: int) -> np.ndarray:
        """Clips -> float32 [B, audio_samples] at the codec's rate: resampled, mono, start-aligned, cut or
        zero-padded to the span (a cut clip gives a UserWarning; see the module docstring). ``waveforms``: one clip
        [samples], a batch [B, samples] / [B, samples, channels], or a list of [samples] / [samples, channels] clips
        (int16 or float in [-1, 1]); NaN/Inf or empty clips raise ValueError."""
        tok = self._audio()
        if isinstance(waveforms, (list, tuple)):
            clips = list(waveforms)
        else:
            w = np.asarray(waveforms)
            if w.ndim == 1:
                clips = [w]
            elif w.ndim in (2, 3):
                clips = list(w)
            else:
                raise ValueError(f"waveforms must be [samples], [B, samples] or [B, samples, channels], got shape "
                                 f"{w.shape}")
        if not clips:
            raise ValueError("empty batch: no clips given")
        x, lengths = tok.prepare(clips, sample_rate)  # validates, resamples to the codec's rate
        samples = self.audio_samples
        long = [i for i, n in enumerate(lengths) if n > samples]
        if long:
            warnings.warn(f"clip(s) {long[:8]} are longer than the audio span ({samples} samples = "
                          f"{samples / tok.sample_rate:.3g} s at {tok.sample_rate} Hz, config.data.audio_seconds): "
                          "cut to the span (training skips such clips; the model never heard speech past it)",
                          UserWarning, stacklevel=3)
        return templates_lib.fit_audio(x, samples).astype(np.float32)

    def audio_to_ids(self, waveforms, sample_rate: int) -> np.ndarray:
        """Clips (see :meth:`fit_waveforms`) -> unified audio ids int32 [B, audio_frames * kept_levels]."""
        return self._codec_ids(self.fit_waveforms(waveforms, sample_rate))

    def _codec_ids(self, x: np.ndarray) -> np.ndarray:
        """Fitted clips float32 [B, audio_samples] -> the codec's unified ids."""
        tok = self._audio()
        codes, _ = tok.encode(x, tok.sample_rate)
        codes = np.asarray(codes)
        if codes.shape[1] != self.audio_frames:
            raise RuntimeError(f"the codec gave {codes.shape[1]} frames for a {x.shape[1]}-sample span, expected "
                               f"{self.audio_frames}")
        return self.vocab.audio_to_unified(codes)

    def transcribe(self, waveforms, sample_rate: int, *, max_new_tokens: int = 32, temperature: float = 0.0,
                   top_k: int = 0, top_p: float = 1.0, seed: int = 0) -> list[str]:
        """Speech -> B transcripts (greedy by default). Input forms: see :meth:`fit_waveforms`."""
        x = self.fit_waveforms(waveforms, sample_rate)
        prompts, prefill = self.condition_prompts("asr", *self.condition_ids("audio", x))
        return self._text_task(prompts, max_new_tokens, temperature, top_k, top_p, seed, prefill)

    # ---- text -> image / speech --------------------------------------------------------------------------------
    def _span_task(self, task: str, texts, guidance_scale, temperature, top_k, top_p, seed) -> np.ndarray:
        """Samples one image/audio span per text -> unified ids int32 [B, span length] (without the markers)."""
        self._image() if task == "t2i" else self._audio()
        texts = protocol.require_prompts(texts, f"generate_{'image' if task == 't2i' else 'speech'}")
        v = self.vocab
        image_tokens = int(np.prod(self.image_grid)) if self.image_tokenizer is not None else 0
        audio_frames = self.audio_frames if self.audio_tokenizer is not None else 0
        length = image_tokens if task == "t2i" else audio_frames * v.audio_levels_used
        opener, closer, modality = ((v.boi, v.eoi, vocab_lib.IMAGE) if task == "t2i"
                                    else (v.boa, v.eoa, vocab_lib.AUDIO))
        encoded = [self.text_tokenizer.encode(t) for t in texts]
        empty = [i for i, ids in enumerate(encoded) if not ids]
        if empty:
            raise ValueError(f"generate_{'image' if task == 't2i' else 'speech'}: texts {empty[:5]} are empty (a "
                             "condition needs at least 1 token; guidance already supplies the unconditional case)")
        prompts = [self.templates.prompt(task, ids) for ids in encoded]
        spans = SpanConfig(image_tokens=image_tokens, audio_frames=audio_frames, guidance_scale=float(guidance_scale))
        sampling = SamplingConfig(max_new_tokens=length + 1, temperature=float(temperature), top_k=int(top_k),
                                  top_p=float(top_p), eos_id=closer, pad_id=self.text_tokenizer.pad_id)
        uncond = self.templates.null_prompt(task) if float(guidance_scale) != 1.0 else None
        rows = self._sample(prompts, sampling, spans, seed, uncond)
        out = []
        for i, row in enumerate(rows):
            found = constraints_lib.extract_spans(v, [opener, *row.tolist()], modality)
            if len(found) != 1 or found[0].size != length:
                raise RuntimeError(f"text {i}: the sampler did not produce one span of {length} codes: "
                                   f"{row.tolist()[:12]}...")
            out.append(found[0])
        return np.stack(out)

    def generate_image(self, texts: Sequence[str], *, guidance_scale: float = 1.0, temperature: float = 1.0,
                       top_k: int = 0, top_p: float = 1.0, seed: int = 0) -> np.ndarray:
        """Texts -> uint8 images [B, H, W, C] (the image tokenizer's size and channels): one span of exactly h*w
        codes per text, de-tokenized. ``guidance_scale != 1``: classifier-free guidance inside the span."""
        ids = self._span_task("t2i", texts, guidance_scale, temperature, top_k, top_p, seed)
        h, w = self.image_grid
        codes = self.vocab.unified_to_image(ids, h, w)  # [B, h, w]
        return np.asarray(self.image_tokenizer.decode(codes))

    def generate_speech(self, texts: Sequence[str], *, guidance_scale: float = 1.0, temperature: float = 1.0,
                        top_k: int = 0, top_p: float = 1.0, seed: int = 0) -> np.ndarray:
        """Texts -> float32 waveforms [B, audio_frames * hop] at :attr:`sample_rate`: one span of
        ``audio_frames * kept_levels`` codes per text, decoded with the kept RVQ levels."""
        ids = self._span_task("tts", texts, guidance_scale, temperature, top_k, top_p, seed)
        codes = self.vocab.unified_to_audio(ids)  # [B, frames, kept]
        wave, _ = self.audio_tokenizer.decode(codes)
        return np.asarray(wave, np.float32)

    # ---- text -> text ------------------------------------------------------------------------------------------
    def generate_text(self, prompts: Sequence[str], *, max_new_tokens: int = 32, temperature: float = 0.0,
                      top_k: int = 0, top_p: float = 1.0, seed: int = 0) -> list[str]:
        """Plain text continuation (``lm`` template: bos + text) through the TEAL model: only text ids are
        allowed, so this is the LM's own text distribution (bitwise, while the LM is frozen). Greedy by default."""
        prompts = protocol.require_prompts(prompts, "generate_text")
        ids = [self.templates.prompt("lm", self.text_tokenizer.encode(p)) for p in prompts]
        return self._text_task(ids, max_new_tokens, temperature, top_k, top_p, seed)

    def logits(self, tokens, features_image=None, features_audio=None) -> np.ndarray:
        """Unified ids int [B, T] -> float32 logits [B, T, vocab.size] (full forward, no cache). ``features_*``
        [B, T, D]: continuous inputs at input-only ids (:meth:`condition_prompts`)."""
        t = np.asarray(tokens)
        if t.ndim != 2 or t.dtype.kind not in "iu":
            raise ValueError(f"tokens must be integer [B, T], got {t.dtype} {t.shape}")
        if features_image is None and features_audio is None:
            return np.asarray(self._logits(self.params, jnp.asarray(t, jnp.int32)))
        f = [None if a is None else jnp.asarray(a, jnp.float32) for a in (features_image, features_audio)]
        return np.asarray(self._logits_features(self.params, jnp.asarray(t, jnp.int32), *f))

    # ---- the protocol ------------------------------------------------------------------------------------------
    def sample(self, prompts: Sequence[str], *, out_dir: str | None = None, task: str = "text", **settings) -> list:
        """The protocol's sampler (``main --mode=sample``): one output per text prompt.

        task: 'text' -> :meth:`generate_text` strings; 'image' -> :meth:`generate_image`, 'speech' ->
        :meth:`generate_speech`: written as ``<out_dir>/image_000.png`` / ``speech_000.wav`` ... and their paths
        returned (without ``out_dir``: the uint8 images [H, W, C] / float32 waveforms). ``settings``: max_new_tokens
        (text only: spans have a fixed length), temperature, top_k, top_p, seed, guidance_scale (image/speech only);
        the methods' defaults where absent. Unknown task: ValueError; unknown setting: TypeError.
        """
        protocol.check_settings(self.kind, settings, (*protocol.SAMPLE_SETTINGS, "guidance_scale"))
        if task not in SAMPLE_TASKS:
            raise ValueError(f"TealModel.sample: task={task!r}; choose one of {SAMPLE_TASKS} (config.sample.task)")
        prompts = protocol.require_prompts(prompts, f"TealModel.sample(task={task!r})")
        if task == "text":
            settings.pop("guidance_scale", None)
            return self.generate_text(prompts, **settings)
        settings.pop("max_new_tokens", None)
        if task == "image":
            out, ext, save = self.generate_image(prompts, **settings), "png", self.save_png
        else:
            out, ext, save = self.generate_speech(prompts, **settings), "wav", self.save_wav
        if out_dir is None:
            return list(out)
        return save(out, [os.path.join(out_dir, f"{task}_{i:03d}.{ext}") for i in range(len(prompts))])

    # ---- files -------------------------------------------------------------------------------------------------
    @staticmethod
    def save_png(images, paths: Sequence[str | os.PathLike]) -> list[str]:
        """Writes uint8 images [B, H, W] or [B, H, W, 1|3|4] to ``paths`` (one per image) as PNG."""
        from teal_jax.data.digits import png_bytes

        x = np.asarray(images)
        if x.dtype != np.uint8 or x.ndim not in (3, 4):
            raise ValueError(f"save_png: images must be uint8 [B, H, W] or [B, H, W, C], got {x.dtype} {x.shape}")
        if len(paths) != x.shape[0]:
            raise ValueError(f"save_png: {x.shape[0]} images but {len(paths)} paths")
        out = []
        for img, p in zip(x, paths, strict=True):
            p = os.fspath(p)
            os.makedirs(os.path.dirname(os.path.abspath(p)), exist_ok=True)
            with open(p, "wb") as f:
                f.write(png_bytes(img))
            out.append(p)
        return out

    def save_wav(self, waves, paths: Sequence[str | os.PathLike]) -> list[str]:
        """Writes float waveforms [B, samples] (at :attr:`sample_rate`) to ``paths`` as 16-bit PCM WAV."""
        from teal_jax.media.audio import write_wav

        x = np.asarray(waves)
        if x.ndim != 2:
            raise ValueError(f"save_wav: waves must be [B, samples], got shape {x.shape}")
        if len(paths) != x.shape[0]:
            raise ValueError(f"save_wav: {x.shape[0]} waveforms but {len(paths)} paths")
        for wave, p in zip(x, paths, strict=True):
            write_wav(p, wave, self.sample_rate)
        return [os.fspath(p) for p in paths]
