"""The TEAL task figures as evaluators (kinds registered in :mod:`teal_jax.evaluate.evaluators`).

Each reads its held-out data itself, from fixed splits or from what the run's config names, runs the metric of
:mod:`teal_jax.evaluate.teal_tasks` / :mod:`~teal_jax.evaluate.guidance` / :mod:`~teal_jax.evaluate.perplexity`
on the model it is given and writes its samples to ``<workdir>/eval/<name>/step_<N>/``:

==================  ===========================================================================================
kind                figures (the held-out data)
==================  ===========================================================================================
``caption``         accuracy, exact_match, forced_choice (the digits' test split: ``num_images``, 0 = all 256)
``text_to_image``   accuracy judged by the digit classifier, guidance (chosen on validation prompts unless
                    ``guidance_scale`` > 0), likelihood_accuracy / nll_true / nll_null / nll_mean (the first
                    ``likelihood_images`` test digits)
``asr``             wer, exact_match, wer_single_word, wer_multi_word (the held-out split of the run's
                    ``data.audio_source``: spoken words' 4 unseen voices, or a tfds source's eval split; the first
                    ``max_clips``, 0 = all; clips longer than the audio span are left out)
``text_to_speech``  accuracy judged by the spoken-word classifier, guidance (as text_to_image)
``reasoning``       image_accuracy, speech_accuracy (held-out sum pairs; guidance from the text_to_image /
                    text_to_speech evaluators named by ``*_guidance_from``), lm_sum_answers (the LM's own answer)
``text_perplexity`` base_ppl, teal_ppl, logits_bitwise_equal (the base LM's held-out documents, ``num_texts``)
==================  ===========================================================================================

Sampling settings come from the run's ``config.sample`` (temperature, top_p, top_k: default 0.7, 0.9, 0; the
held-out ``seed``, default 0); guidance validation samples with ``seed + 1``. ``max_batch`` > 0 sets the model's
sampler batch for the evaluator's generation calls (restored after). The judges are trained once and cached:
``digit_judge_dir`` (default ``<data.image_source.data_dir or workdir>/digit_classifier``) and ``speech_judge_dir``
(default ``speech_classifier.cache_dir`` of the speech data, the directory the codec stage trains it in).
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from typing import Any

import numpy as np

from teal_jax.data import templates as templates_lib
from teal_jax.evaluate import guidance as guidance_lib
from teal_jax.evaluate import teal_tasks
from teal_jax.evaluate.evaluators import Evaluator, read_result

SPEECH_RATE = 16000  # the spoken-words data and the speech judge


# ---- held-out data and judges ------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=2)
def heldout_digits() -> tuple[np.ndarray, np.ndarray]:
    """The digits' fixed test split: uint8 [256, 32, 32], int32 labels."""
    from teal_jax.evaluate import digit_classifier as dc

    return dc.load_digit_arrays("test")


def speech_data(run_config, data_dir: str = "", speech_config: str = "") -> tuple[str, str]:
    """``(data_dir, builder config)`` of the spoken-words data: the fields given, else the run's
    ``data.audio_source``; a ValueError when neither names a data dir."""
    source = (run_config.get("data") or {}).get("audio_source") or {} if run_config is not None else {}
    if source and source.get("kind", "spoken_words") != "spoken_words":
        raise ValueError(f"the speech evaluators read the spoken_words data; the run's data.audio_source.kind is "
                         f"{source.get('kind')!r}")
    d = data_dir or source.get("data_dir") or ""
    if not d:
        raise ValueError("no spoken-words data dir: set config.evals.<name>.data_dir or data.audio_source.data_dir")
    return d, speech_config or source.get("config") or "small"


def heldout_speech(data_dir: str, speech_config: str, max_samples: int, *, tfds_source=None) -> dict[str, Any]:
    """Held-out-voice clips (int16 at 16 kHz), start-aligned and padded to ``max_samples``; ``fits`` marks the clips
    no longer than that (the ones TEAL was trained to transcribe). The spoken-words test split of ``data_dir`` /
    ``speech_config``, or the eval split of ``tfds_source`` (a ``data.audio_source`` of kind 'tfds')."""
    from teal_jax.data.speech import RecordAdapter, build_spoken_words, load_clips

    adapter = None
    if tfds_source is not None:
        from teal_jax.data.teal.sources import open_sources

        source = open_sources(tfds_source, "audio")["test"]
        adapter = RecordAdapter(tfds_source.get("audio_key") or "audio", tfds_source.get("text_key") or None,
                                tfds_source.get("label_key") or None, int(tfds_source.get("source_rate", 16000)))
    else:
        source = build_spoken_words(data_dir, speech_config).as_data_source(split="test")
    clips = load_clips(source, max_samples=max_samples, adapter=adapter)
    full = load_clips(source, max_samples=10 * max_samples, adapter=adapter)  # true lengths
    clips["fits"] = full["length"] <= max_samples
    return clips


def heldout_texts(run_config, limit: int) -> list[str]:
    """The first ``limit`` held-out documents ('eval' split) of the run's base LM data (``lineage.lm_data``)."""
    import tensorflow_datasets as tfds

    from teal_jax import lineage

    paths = lineage.lm_data(run_config)
    if paths is None:
        raise ValueError("text_perplexity: the run has no LM documents (config.data.lm_data_dir or a base LM run "
                         "trained on text)")
    source = tfds.data_source(paths["dataset"], data_dir=paths["tfds_dir"], split="eval")
    out = []
    for i in range(min(limit, len(source))):
        t = source[i]["text"]
        out.append(t.decode("utf-8") if isinstance(t, bytes) else str(t))
    return out


def digit_judge(directory: str, steps: int):
    """The digit classifier cached in ``directory`` (trained there on the real train digits if missing)."""
    from teal_jax.evaluate import digit_classifier as dc

    if os.path.exists(os.path.join(directory, dc.FILENAME)):
        return dc.DigitClassifier.load(directory)
    return dc.train_or_load(directory, *dc.load_digit_arrays("train"), steps=steps)


def speech_judge(directory: str, data_dir: str, speech_config: str, steps: int):
    """The spoken-word classifier cached in ``directory`` (trained there on the clean train clips of
    ``spoken_words/<speech_config>`` if missing)."""
    from teal_jax.evaluate import speech_classifier as sc

    if os.path.exists(os.path.join(directory, sc.FILENAME)):
        return sc.SpeechClassifier.load(directory)
    from teal_jax.data.speech import build_spoken_words, load_clips

    source = build_spoken_words(data_dir, speech_config).as_data_source(split="train")
    clips = load_clips(source, max_samples=sc.CLIP_SAMPLES, labelled_only=True)
    return sc.train_or_load(directory, clips["audio"], clips["label"], steps=steps)


@contextlib.contextmanager
def _max_batch(model, n: int):
    """``model.max_batch = n`` inside (n > 0), restored after: a sampler batch of its own for these calls."""
    if not n:
        yield
        return
    old = model.max_batch
    model.max_batch = int(n)
    try:
        yield
    finally:
        model.max_batch = old


def _sampling(run_config) -> tuple[int, dict[str, Any]]:
    """(held-out seed, {temperature, top_p, top_k}) from the run's ``config.sample``."""
    s = dict((run_config.get("sample") if run_config is not None else None) or {})
    return int(s.get("seed", 0)), {"temperature": float(s.get("temperature", 0.7)),
                                   "top_p": float(s.get("top_p", 0.9)), "top_k": int(s.get("top_k", 0))}


class _TealEvaluator(Evaluator):
    """Shared: the judges and their default directories, guidance choice."""

    JUDGE_FIELDS = {"digit_judge_dir": "", "digit_judge_steps": 1000}
    SPEECH_FIELDS = {"data_dir": "", "speech_config": "", "speech_judge_dir": "", "speech_judge_steps": 500}
    GUIDANCE_FIELDS = {"guidance_scale": 0.0, "guidance_scales": guidance_lib.GUIDANCE_SCALES,
                       "validation_per_class": 3, "validation_pairs": 30, "max_batch": 0}

    def digit_judge(self, workdir: str):
        d = self.digit_judge_dir
        if not d:
            img = ((self.run_config.get("data") or {}).get("image_source") or {}) if self.run_config else {}
            d = os.path.join(img.get("data_dir") or workdir, "digit_classifier")
        return digit_judge(d, self.digit_judge_steps)

    def speech_judge(self):
        from teal_jax.evaluate import speech_classifier as sc

        data_dir, cfg = speech_data(self.run_config, self.data_dir, self.speech_config)
        return speech_judge(self.speech_judge_dir or sc.cache_dir(data_dir, cfg), data_dir, cfg,
                            self.speech_judge_steps)

    def guidance(self, model, judge, modality: str) -> tuple[float, dict[str, Any] | None]:
        """(scale, the validation figures that chose it, or None when ``guidance_scale`` > 0 gives it)."""
        if self.guidance_scale > 0:
            return float(self.guidance_scale), None
        seed, gen = _sampling(self.run_config)
        pairs = templates_lib.REASONING_VALIDATION_PAIRS[: self.validation_pairs]
        g = guidance_lib.choose_guidance(model, judge, modality, scales=self.guidance_scales, seed=seed + 1,
                                         heldout_seed=seed, per_class=self.validation_per_class, pairs=pairs, **gen)
        return float(g["chosen"]), g

    def judged_generation(self, model, judge, modality: str, task, *, workdir: str, step: int) -> dict[str, Any]:
        """Chooses the guidance scale, then runs ``task`` (text_to_image_accuracy / tts_accuracy) with it:
        its scores plus the scale, the validation figures and the seconds each part took."""
        seed, gen = _sampling(self.run_config)
        with _max_batch(model, self.max_batch):
            t0 = time.time()
            scale, validation = self.guidance(model, judge, modality)
            t1 = time.time()
            r = task(model, judge, per_class=self.per_class, sample_dir=self.output_dir(workdir, step),
                     guidance_scale=scale, seed=seed, **gen)
        return {**{k: r[k] for k in ("accuracy", "n", "per_class", "confusion")}, "guidance": scale,
                "guidance_validation": validation, "validation_s": round(t1 - t0, 1),
                "generation_s": round(time.time() - t1, 1)}


# ---- the evaluators ----------------------------------------------------------------------------------------------
class CaptionEvaluator(_TealEvaluator):
    """Captioning accuracy (and exact match, forced choice) on the held-out digits."""

    KIND = "caption"
    FIELDS = {"num_images": 0, "forced_choice": True, "max_batch": 0}

    def run(self, model, *, workdir, step):
        images, labels = heldout_digits()
        if self.num_images:
            images, labels = images[: self.num_images], labels[: self.num_images]
        with _max_batch(model, self.max_batch):
            cap = teal_tasks.caption_accuracy(model, images, labels, sample_dir=self.output_dir(workdir, step))
        out = {k: cap[k] for k in ("accuracy", "exact_match", "n", "per_class")}
        if self.forced_choice:
            out["forced_choice"] = teal_tasks.caption_forced_choice(model, images, labels)["accuracy"]
        return out


class TextToImageEvaluator(_TealEvaluator):
    """Text-to-image accuracy judged by the digit classifier, guidance chosen on validation; likelihood
    conditioning on held-out digits."""

    KIND = "text_to_image"
    FIELDS = {"per_class": 10, "likelihood_images": 100, **_TealEvaluator.GUIDANCE_FIELDS,
              **_TealEvaluator.JUDGE_FIELDS}

    def run(self, model, *, workdir, step):
        out: dict[str, Any] = {}
        if self.likelihood_images:
            images, labels = heldout_digits()
            lik = teal_tasks.t2i_likelihood_accuracy(model, images[: self.likelihood_images],
                                                     labels[: self.likelihood_images])
            out.update(likelihood_accuracy=lik["accuracy"], nll_true=lik["nll_true"], nll_null=lik["nll_null"],
                       nll_mean=lik["nll_mean"], likelihood_n=lik["n"])
        out.update(self.judged_generation(model, self.digit_judge(workdir), "image",
                                          teal_tasks.text_to_image_accuracy, workdir=workdir, step=step))
        return out


class TextToSpeechEvaluator(_TealEvaluator):
    """TTS accuracy judged by the spoken-word classifier, guidance chosen on validation."""

    KIND = "text_to_speech"
    FIELDS = {"per_class": 10, **_TealEvaluator.GUIDANCE_FIELDS, **_TealEvaluator.SPEECH_FIELDS}

    def run(self, model, *, workdir, step):
        return self.judged_generation(model, self.speech_judge(), "audio", teal_tasks.tts_accuracy,
                                      workdir=workdir, step=step)


class AsrEvaluator(_TealEvaluator):
    """ASR word error rate on held-out voices, split by reference length."""

    KIND = "asr"
    FIELDS = {"data_dir": "", "speech_config": "", "max_clips": 0, "max_batch": 0}

    def run(self, model, *, workdir, step):
        seconds = float(self.run_config.data.audio_seconds)
        source = self.run_config.data.get("audio_source") or {}
        if source.get("kind") == "tfds" and not self.data_dir:
            speech = heldout_speech("", "", int(round(seconds * SPEECH_RATE)), tfds_source=source)
        else:
            data_dir, cfg = speech_data(self.run_config, self.data_dir, self.speech_config)
            speech = heldout_speech(data_dir, cfg, int(round(seconds * SPEECH_RATE)))
        if self.max_clips:
            speech = {k: v[: self.max_clips] for k, v in speech.items()}
        fits = np.nonzero(speech["fits"])[0]
        with _max_batch(model, self.max_batch):
            r = teal_tasks.asr_wer(model, speech["audio"][fits].astype(np.float32) / 32768.0,
                                   [speech["text"][i] for i in fits], SPEECH_RATE,
                                   sample_dir=self.output_dir(workdir, step))
        return {**r, "clips_fit": int(len(fits)), "clips_total": int(len(speech["fits"])),
                "audio_seconds": seconds}


class ReasoningEvaluator(_TealEvaluator):
    """Sum questions over the held-out pairs answered with an image and with speech (judged), and whether the text
    LM itself knows the answers (``lm_sum_answers``)."""

    KIND = "reasoning"
    FIELDS = {"per_pair": 4, "image_guidance_from": "", "image_guidance_scale": 1.0, "speech_guidance_from": "",
              "speech_guidance_scale": 1.0, "lm_sum_answers": True, "answer_in_prompt": False, "max_batch": 0,
              **_TealEvaluator.JUDGE_FIELDS, **_TealEvaluator.SPEECH_FIELDS}
    DEPENDS = ("image_guidance_from", "speech_guidance_from")

    def _scale(self, modality: str, workdir: str, step: int) -> float:
        source = self.fields[f"{modality}_guidance_from"]
        if not source:
            return float(self.fields[f"{modality}_guidance_scale"])
        return float(read_result(workdir, source, step)["guidance"])

    def run(self, model, *, workdir, step):
        gi, gs = self._scale("image", workdir, step), self._scale("speech", workdir, step)
        seed, gen = _sampling(self.run_config)
        sample_dir = self.output_dir(workdir, step)
        out: dict[str, Any] = {"image_guidance": gi, "speech_guidance": gs}
        t0 = time.time()
        with _max_batch(model, self.max_batch):
            ri = teal_tasks.reasoning_image_accuracy(model, self.digit_judge(workdir), per_pair=self.per_pair,
                                                     sample_dir=sample_dir, answer_in_prompt=self.answer_in_prompt,
                                                     guidance_scale=gi, seed=seed, **gen)
            rs = teal_tasks.reasoning_speech_accuracy(model, self.speech_judge(), per_pair=self.per_pair,
                                                      sample_dir=sample_dir, answer_in_prompt=self.answer_in_prompt,
                                                      guidance_scale=gs, seed=seed, **gen)
            if self.lm_sum_answers and hasattr(model, "generate_text"):  # a diagnosis, not a target
                out["lm_sum_answers"] = teal_tasks.lm_sum_answers(model)["accuracy"]
        for m, r in (("image", ri), ("speech", rs)):
            out.update({f"{m}_{k}": r[k] for k in ("accuracy", "n", "per_class", "confusion")})
        out["generation_s"] = round(time.time() - t0, 1)
        return out


class TextPerplexityEvaluator(_TealEvaluator):
    """Held-out text perplexity under the base LM and the TEAL text rows, with the bitwise-logit flag."""

    KIND = "text_perplexity"
    FIELDS = {"num_texts": 200, "max_len": 128, "batch_size": 8}

    def run(self, model, *, workdir, step):
        from teal_jax.evaluate.perplexity import text_perplexity

        texts = heldout_texts(model.run_config if getattr(model, "run_config", None) is not None
                              else self.run_config, self.num_texts)
        return text_perplexity(model, texts, max_len=self.max_len, batch_size=self.batch_size)
