"""``config.data`` of ``data.kind='tasks'``: every field with its default, the stream's task names and weights, checks.

The task names come from :mod:`teal_jax.data.templates` (the layouts ``caption t2i asr tts lm`` and the reasoning
tasks ``reason_t2i reason_tts``); this module only groups them by the modality their records come from. Nothing here
reads a file: a config can be checked (and configs/teal/*.py can build one) without tfds or grain.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections

from teal_jax import paths
from teal_jax.data import templates as templates_lib

# Every task of the stream, in the order the task draw indexes them (part of what a seed means: keep it stable).
TASKS = (*templates_lib.TASKS, *templates_lib.REASONING_TASKS)
IMAGE_TASKS = tuple(t for t in TASKS if templates_lib.TASK_SPANS[templates_lib.layout(t)] == "image")
AUDIO_TASKS = tuple(t for t in TASKS if templates_lib.TASK_SPANS[templates_lib.layout(t)] == "audio")
MODALITY_TASKS = {"image": IMAGE_TASKS, "audio": AUDIO_TASKS}  # the tasks each token dataset feeds
DROPPABLE_TASKS = tuple(t for t in TASKS if templates_lib.layout(t) in templates_lib.GENERATION_TASKS)
SOURCE_KINDS = {"image": ("digits", "tfds"), "audio": ("spoken_words", "tfds")}
LOSS_NORMALIZATIONS = ("token", "example")


def log(verbose: bool, msg: str) -> None:
    """One progress line of the TEAL data path (``[teal data] ...``) when ``verbose``."""
    if verbose:
        print(f"[teal data] {msg}", flush=True)


def task_modality(task: str) -> str:
    """Where a stream task's records come from: 'image', 'audio' or 'text' (lm: the LM's documents)."""
    return templates_lib.TASK_SPANS[templates_lib.layout(task)]


def default_source_config(modality: str) -> ml_collections.ConfigDict:
    """Every field of ``config.data.image_source`` (modality 'image') / ``audio_source`` ('audio')."""
    if modality == "image":
        return ml_collections.ConfigDict(dict(
            kind="digits",  # 'digits' | 'tfds'
            name="",  # tfds: dataset name, e.g. 'coco_captions' or 'coco_captions/2017'
            data_dir="",  # '' = the tokenizer run's data dir (digits) / tfds' default dir (tfds)
            config="",  # unused for digits (the tokenizer's image size picks the builder config)
            image_key="image",
            text_key="",  # tfds: e.g. 'captions/text'; digits: '' = the digit word of the label
            label_key="label",  # '' = no labels (-1)
            train_split="train",
            eval_split="test",
            augment_copies=0,  # train split: this many extra randomly jittered copies of every image (small affine:
            # +-10 deg, 0.9-1.1 scale, +-8% shift; image_pipeline.random_affine), tokenized once with the rest
        ))
    if modality == "audio":
        return ml_collections.ConfigDict(dict(
            kind="spoken_words",  # 'spoken_words' | 'tfds'
            name="",  # tfds: e.g. 'librispeech'
            data_dir="",  # '' = the codec run's data dir (spoken_words) / tfds' default dir (tfds)
            config="small",  # spoken_words builder config: 'small' | 'medium' | 'tiny'
            audio_key="audio",  # librispeech: 'speech'
            text_key="text",
            label_key="label",  # '' = no labels (-1)
            train_split="train",
            eval_split="test",
            source_rate=16000,  # the dataset's sample rate (resampled to the codec's)
        ))
    raise ValueError(f"modality={modality!r}: choose 'image' or 'audio'")


def default_task_data_config() -> ml_collections.ConfigDict:
    """Every ``config.data`` field of ``data.kind='tasks'`` with its default (see docs/teal.md)."""
    return ml_collections.ConfigDict(dict(
        kind="tasks",
        text_tokenizer="",  # SentencePiece .model; '' = the base LM's (model.base_lm_workdir)
        lm_data_dir="",  # an LM data dir (holding lm_data.json); '' = the base LM run's data dir
        image_tokenizer="",  # workdir of an image_vq run; '' = no image tasks
        audio_tokenizer="",  # workdir of an audio_codec run; '' = no audio tasks
        # Input-only tokenizers (docs/semantic_tokenizers.md): the workdir of a kmeans_tokenizer run whose codes
        # (ids in model.vocab.{image,audio}_in_size) write the condition of caption / asr; '' = the output tokenizer
        # above reads the condition too. *_in_features=True feeds that run's encoder features unquantised instead
        # (the continuous-feature baseline; needs model.{image,audio}_in_dim).
        image_in_tokenizer="",
        audio_in_tokenizer="",
        image_in_features=False,
        audio_in_features=False,
        image_source=default_source_config("image"),
        audio_source=default_source_config("audio"),
        audio_seconds=1.0,  # every clip is one span of this length (longer clips are skipped)
        tokens_dir="",  # '' = <workdir>/tokens
        tokenize_batch=32,  # fixed batch of the tokenizer calls during pre-tokenization
        tasks=ml_collections.ConfigDict(dict(caption=1.0, t2i=1.0, asr=1.0, tts=1.0, lm=0.5, reason_t2i=0.25,
                                             reason_tts=0.25)),
        cond_dropout=0.1,  # t2i/tts/reasoning (train split): condition replaced by <null> with this probability
        loss_normalization="token",  # 'token': every target token weighs the same; 'example': every example's
        # targets weigh 1 in all (a two-token caption counts as much as a 65-token image), batches carry loss_weight
        seq_len=256,  # rows are seq_len + 1 tokens
    ))


def task_weights(tasks: Any) -> dict[str, float]:
    """``config.data.tasks`` as ``{task: weight}``: a mapping of weights, or a list of task names (weight 1 each)."""
    if tasks is None:
        return dict(default_task_data_config().tasks.items())
    if isinstance(tasks, str):
        tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    if isinstance(tasks, (list, tuple)):
        return {str(t): 1.0 for t in tasks}
    items = tasks.items() if hasattr(tasks, "items") else None
    if items is None:
        raise ValueError(f"config.data.tasks={tasks!r}: expected a mapping task -> weight or a list of tasks")
    return {str(t): float(w) for t, w in items}


def validate_task_data_config(data) -> None:
    """Typos fail early: a ``config.data`` field close to a known one (e.g. ``image_tokenizr``), an unknown field of
    a source, or an unknown task raises ValueError naming it. Other extra fields are left to whoever reads them."""
    import difflib

    known = list(default_task_data_config().keys())
    for key in sorted(set(data.keys()) - set(known)):
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.8)
        if close:
            raise ValueError(f"config.data.{key} is not a field of data.kind='tasks'; did you mean "
                             f"config.data.{close[0]}?")
    for m in templates_lib.SPAN_MODALITIES:
        source_dict(data.get(f"{m}_source"), m)
    bad = sorted(set(task_weights(data.get("tasks"))) - set(TASKS))
    if bad:
        raise ValueError(f"config.data.tasks has unknown tasks {bad}; known: {TASKS}")


def source_dict(source: Mapping[str, Any] | None, modality: str) -> dict[str, Any]:
    """A validated source dict: the defaults of ``modality`` ('image' | 'audio') overridden by ``source``'s
    non-None fields. An unknown field, a kind other than :data:`SOURCE_KINDS` of the modality, or ``kind='tfds'``
    without a ``name`` raises ValueError naming ``config.data.<modality>_source``."""
    base = default_source_config(modality).to_dict()
    given = dict(source.to_dict() if hasattr(source, "to_dict") else (source or {}))
    unknown = sorted(set(given) - set(base))
    if unknown:
        raise ValueError(f"config.data.{modality}_source has unknown fields {unknown}; known: {sorted(base)}")
    base.update({k: v for k, v in given.items() if v is not None})
    kinds = SOURCE_KINDS[modality]
    if base["kind"] not in kinds:
        raise ValueError(f"config.data.{modality}_source.kind={base['kind']!r}: choose one of {kinds}")
    if base["kind"] == "tfds" and not base["name"]:
        raise ValueError(f"config.data.{modality}_source.kind='tfds' needs config.data.{modality}_source.name")
    return base


def resolve_tokens_dir(data_cfg, workdir: str | None) -> str:
    """The absolute token dir: ``data.tokens_dir``, else ``<workdir>/tokens``; neither raises ValueError."""
    d = data_cfg.get("tokens_dir") or (paths.local_cache_dir(workdir, "tokens") if workdir else None)
    if not d:
        raise ValueError("no token dir: set config.data.tokens_dir or call prepare(workdir) first")
    return paths.require_local(d, "data.tokens_dir")
