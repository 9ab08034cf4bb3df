"""TEAL at real scale: a pretrained HF Llama (TinyLlama-1.1B shape by default) kept frozen, the 256x256 VQGAN image
tokenizer (configs/image/vqgan_256.py) and the EnCodec-24kHz-shaped codec (configs/audio/encodec_24khz.py), trained on
COCO captions (tfds ``coco_captions``, Karpathy splits) and LibriSpeech (tfds ``librispeech``).

Before stage 1 you need:
  * a HF Llama checkpoint directory: ``config.json`` + ``model.safetensors`` (or a safetensors index) and, for the
    text tokenizer, its SentencePiece ``tokenizer.model`` (else set ``data.text_tokenizer``);
  * an image tokenizer run:  python -m teal_jax.main --config=configs/image/vqgan_256.py --workdir=runs/vqgan_256
  * an audio codec run:      python -m teal_jax.main --config=configs/audio/encodec_24khz.py --workdir=runs/encodec
    (any ``audio_codec`` workdir with 32 levels x 1,024 codes at 24 kHz fits, e.g. transformers' EnCodec weights read
    by ``teal_jax.convert.encodec.load_encodec`` and saved as such a run);
  * ``coco_captions`` and ``librispeech`` prepared by tfds in array_record format under one data dir (the sources'
    ``data_dir``, '' = tfds' default). coco_captions is read from its files without TensorFlow or builder code;
    tfds' librispeech builds a ``features.Audio``, whose constructor imports TensorFlow (tfds 4.9), also when only
    its prepared files are read: write its TF-free copy once with ``python -m teal_jax.data.tfds_decoded
    --data_dir=DIR --name=librispeech --out_name=librispeech_decoded`` and add
    ``--config.data.audio_source.name=librispeech_decoded`` (docs/teal.md, "Real-scale configuration").

Stage 1 (frozen LM; new rows, heads and projections train), then stage 2 (bias/norm tuning on top of stage 1):

  python -m teal_jax.main --config=configs/teal/llama.py:hf=/ckpt/TinyLlama-1.1B --workdir=runs/teal_llama/stage1 \
      --config.data.image_tokenizer=runs/vqgan_256 --config.data.audio_tokenizer=runs/encodec \
      --config.data.tokens_dir=runs/teal_llama/tokens
  python -m teal_jax.main --config=configs/teal/llama.py:stage2,hf=/ckpt/TinyLlama-1.1B \
      --workdir=runs/teal_llama/stage2 --config.model.base_lm_workdir=runs/teal_llama/stage1 \
      --config.data.image_tokenizer=runs/vqgan_256 --config.data.audio_tokenizer=runs/encodec \
      --config.data.tokens_dir=runs/teal_llama/tokens

The first run tokenizes COCO and LibriSpeech once into ``data.tokens_dir`` (datasets named by a digest of tokenizer
and source); the shared ``tokens_dir`` lets stage 2 reuse them (the default, ``<workdir>/tokens``, would tokenize
again). Add ``--config.data.image_source.data_dir=DIR --config.data.audio_source.data_dir=DIR`` for a tfds data dir
other than tfds' default.

Variants (``--config=configs/teal/llama.py:VARIANT``, comma-separated):
  ``hf=DIR``: ``model.lm``'s shape is read from ``DIR/config.json`` (without it: TinyLlama-1.1B's, which must then
              match the checkpoint); in stage 1 it also sets ``model.base_lm_hf=DIR``. Without ``hf=`` set
              ``--config.model.base_lm_hf=DIR``: a missing base LM is an error naming the field (never a silently
              random frozen LM).
  ``stage2``: LLaMA-Adapter-V2-style bias/norm tuning (``lm.use_bias=True``, stage ``frozen_stage2``); every TEAL
              parameter starts from the stage-1 run named by ``model.base_lm_workdir`` (required).

Sequence budget (``data.seq_len`` 2,048 = TinyLlama's context). An image is 16 x 16 = 256 ids. Audio uses
``audio_scheme='first_levels'`` with 2 of EnCodec's 32 RVQ levels: 75 frames/s x 2 = 150 ids per second, EnCodec's
lowest trained bitrate (1.5 kbit/s; the first levels carry most of the signal), where interleaving all 32 levels would
cost 2,400 ids/s. Every clip is one 12 s span (900 frames, 1,800 ids; the token datasets store all 32 levels, the
model sees the first 2); longer clips are skipped and counted in the token manifest (train_clean100's utterances average
~12.7 s, so a large share is skipped: add splits, or keep 1 level, 75 ids/s, for spans up to ~24 s). The
longest ASR/TTS example with a ``TEXT_BUDGET``-token transcript is 1,933 tokens; ``get_config`` checks that every task
fits (``check_fits``) and the task stream re-checks the real texts when it starts.

Everything else mirrors configs/teal/demo.py: random non-text rows (the paper found codebook initialisation close),
example loss normalization, 10% condition dropout for guidance, caption/t2i/asr/tts tasks (no labels, so no reasoning
tasks; ``lm`` needs ``data.lm_data_dir``). Sized for 8 x 80 GB GPUs (fsdp over all devices, 8 rows of 2,048 per device
as configs/lm/tinyllama_1b.py on one GPU); on fewer devices raise ``train.grad_accum``.
"""

import json
import os

import ml_collections
import numpy as np

from configs.audio import encodec_24khz
from configs.image import vqgan_256
from configs.lm import tinyllama_1b
from teal_jax.config import base_config, parse_variants
from teal_jax.data import templates as templates_lib
from teal_jax.data.teal import config as teal_data
from teal_jax.models.transformer import ARCHITECTURE_FIELDS, RUNTIME_FIELDS

_VARIANTS = {"stage2"}
# Longest caption / transcript (Llama tokens) the default seq_len leaves room for; COCO captions are ~10-20 words,
# a 12 s LibriSpeech transcript ~35-45. The stream checks the real texts at start-up.
TEXT_BUDGET = 128


def _parse(arg: str | None) -> tuple[set[str], str | None]:
    variants = parse_variants(arg, _VARIANTS, config="configs/teal/llama.py", keyed=("hf",))
    return variants, variants.values.get("hf")


def _lm_shape_from_hf(hf_dir: str) -> dict:
    """The architecture fields of ``hf_dir/config.json`` (the importer's reading, so they match by construction)."""
    from teal_jax.convert.llama import config_from_hf

    path = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(path):
        raise ValueError(f"teal llama: hf={hf_dir!r} has no config.json (expected a HF Llama checkpoint directory)")
    with open(path) as f:
        cfg = config_from_hf(json.load(f), path)
    return {k: getattr(cfg, k) for k in (*ARCHITECTURE_FIELDS, "max_decode_len")}


def tokenizer_configs(image_model=None, audio_model=None):
    """``(VQGANConfig, CodecConfig)`` of the tokenizers (default: the model sections of vqgan_256 / encodec_24khz)."""
    from teal_jax.models.codec import CodecConfig
    from teal_jax.models.vqgan import VQGANConfig

    image = VQGANConfig.from_config(image_model if image_model is not None else vqgan_256.get_config().model)
    audio = CodecConfig.from_config(audio_model if audio_model is not None else encodec_24khz.get_config().model,
                                    dtype="float32")
    return image, audio


def example_lengths(config: ml_collections.ConfigDict, image_model=None, audio_model=None,
                    text_tokens: int = TEXT_BUDGET) -> dict[str, int]:
    """Tokens of the longest example of every enabled caption/t2i/asr/tts task with a ``text_tokens``-long text,
    laid out by the templates the stream uses (the image/audio spans have a fixed length)."""
    from teal_jax.vocab import UnifiedVocab

    image_cfg, audio_cfg = tokenizer_configs(image_model, audio_model)
    vocab = UnifiedVocab.from_config(config.model.vocab, text_size=int(config.model.lm.vocab_size))
    tpl = templates_lib.Templates(vocab, 1, 2)  # only the counts matter
    h, w = image_cfg.token_grid
    image = vocab.image_to_unified(np.zeros((h, w), np.int64)).tolist()
    frames, _ = templates_lib.audio_span(float(config.data.audio_seconds), audio_cfg.sample_rate,
                                         audio_cfg.hop_length)
    audio = vocab.audio_to_unified(np.zeros((frames, vocab.audio_num_levels), np.int64)).tolist()
    text = [3] * int(text_tokens)
    spans = {"image": image, "audio": audio}
    weights = teal_data.task_weights(config.data.tasks)
    return {t: len(tpl.span_example(t, text, spans[templates_lib.TASK_SPANS[t]])[0])
            for t in templates_lib.SPAN_TASKS if weights.get(t, 0.0) > 0}


def check_fits(config: ml_collections.ConfigDict, image_model=None, audio_model=None,
               text_tokens: int = TEXT_BUDGET) -> dict[str, int]:
    """ValueError naming ``config.data.seq_len`` when an example (a ``text_tokens`` text) does not fit a row, or
    the rows are longer than the LM's context; returns :func:`example_lengths`."""
    seq_len = int(config.data.seq_len)
    context = int(config.model.lm.max_decode_len)
    if seq_len > context:
        raise ValueError(f"config.data.seq_len={seq_len} exceeds the LM's context config.model.lm.max_decode_len="
                         f"{context} (a frozen LM never saw later positions)")
    lengths = example_lengths(config, image_model, audio_model, text_tokens)
    too_long = {t: n for t, n in lengths.items() if n > seq_len + 1}
    if too_long:
        raise ValueError(f"config.data.seq_len={seq_len}: a row holds {seq_len + 1} tokens but these examples need "
                         f"{too_long} (with a {text_tokens}-token text, config.data.audio_seconds="
                         f"{config.data.audio_seconds}); raise config.data.seq_len or shorten the audio span")
    return lengths


def get_config(arg: str | None = None):
    variants, hf = _parse(arg)
    stage2 = "stage2" in variants
    c = base_config()
    c.objective = "teal"

    base = tinyllama_1b.get_config().model
    # Runtime fields the LM config does not set keep TransformerConfig's defaults.
    c.model.lm = ml_collections.ConfigDict({k: base[k] for k in ARCHITECTURE_FIELDS + RUNTIME_FIELDS if k in base})
    if hf:
        c.model.lm.update(_lm_shape_from_hf(hf))
    c.model.lm.use_bias = stage2
    vq, codec = tokenizer_configs()
    c.model.vocab = ml_collections.ConfigDict(dict(
        image_codebook_size=vq.num_codes,  # 16,384 l2-normalised 8-d codes
        audio_codebook_size=codec.codebook_size,  # 1,024 per level
        audio_num_levels=codec.num_levels,  # 32: what the codec emits (and the token datasets store)
        audio_scheme="first_levels",
        audio_keep_levels=2,  # 150 ids/s (module docstring)
        pad_multiple=128,
        # TEAL's own input side (docs/semantic_tokenizers.md): k-means codes of Whisper / CLIP features as separate
        # input tokenizers: set data.audio_in_tokenizer / image_in_tokenizer to the kmeans_fit runs and these to k.
        image_in_size=0,
        audio_in_size=0))
    c.model.image_in_dim = c.model.audio_in_dim = 0  # > 0: continuous features of that width (the baseline)
    c.model.embedding_init = "random"
    c.model.image_code_dim = 0
    c.model.audio_code_dim = 0
    c.model.image_codebook = ml_collections.config_dict.placeholder(str)
    c.model.audio_codebook = ml_collections.config_dict.placeholder(str)
    c.model.stage = "frozen_stage2" if stage2 else "frozen_stage1"
    c.model.base_lm_hf = ml_collections.config_dict.placeholder(str)
    c.model.base_lm_workdir = ml_collections.config_dict.placeholder(str)
    if hf and not stage2:
        c.model.base_lm_hf = hf
    # Which base the objective insists on (teal_objective): stage 1 the HF checkpoint, stage 2 the stage-1 run.
    c.model.require_base_lm = "base_lm_workdir" if stage2 else "base_lm_hf"
    c.model.z_loss = 0.0
    c.model.loss_weights = ml_collections.ConfigDict(dict(text=1.0, special=1.0, image=1.0, audio=1.0))

    c.data = teal_data.default_task_data_config()  # every field, so each can be overridden on the command line
    c.data.image_source.update(dict(kind="tfds", name="coco_captions", text_key="captions/text", label_key="",
                                    train_split="train", eval_split="val"))
    c.data.audio_source.update(dict(kind="tfds", name="librispeech", config="", audio_key="speech", text_key="text",
                                    label_key="", train_split="train_clean100", eval_split="dev_clean",
                                    source_rate=16000))
    c.data.audio_seconds = 12.0
    c.data.tasks = ml_collections.ConfigDict(dict(caption=1.0, t2i=1.0, asr=1.0, tts=1.0, lm=0.0, reason_t2i=0.0,
                                                  reason_tts=0.0))
    c.data.cond_dropout = 0.1
    c.data.loss_normalization = "example"
    c.data.tokenize_batch = 64
    c.data.seq_len = 2048

    c.train.steps = 5_000 if stage2 else 20_000
    c.train.batch_size = 64
    c.train.log_every = 50
    c.train.eval_every = 2_000
    c.train.eval_batches = 16
    c.train.checkpoint_every = 2_000
    c.train.compute_dtype = "bfloat16"
    c.optimizer.lr = 2e-4 if stage2 else 1e-3
    c.optimizer.warmup_steps = 200 if stage2 else 1_000
    c.optimizer.weight_decay = 0.0  # new rows start small; decay would only pull them to zero
    c.optimizer.clip_norm = 1.0
    c.mesh.shape = (1, -1, 1)  # fsdp over every device: parameters and Adam state sharded, batch split 'data'+'fsdp'
    c.sample = ml_collections.ConfigDict(dict(prompts=("",), max_new_tokens=64, temperature=0.7, top_k=0, top_p=0.9,
                                              seed=0, guidance_scale=1.0, task="text"))  # task: text|image|speech
    # LibriSpeech dev_clean WER at every eval (teal_jax/evaluate/teal_evaluators.py; the clips that fit the span).
    c.evals.asr = ml_collections.ConfigDict(dict(kind="asr", every_steps=c.train.eval_every, max_clips=200,
                                                 max_batch=32))
    # FID of text-to-image samples: COCO val captions -> generated images vs the val images (teal_jax/evaluate/fid.py).
    # On demand (every_steps 0): it needs the converted FID Inception weights, --config.evals.fid.inception_weights=
    # PATH (docs/evaluation.md). 1,000 images is a trend line (FID is biased upward at small N; papers use 10k-30k).
    c.evals.fid = ml_collections.ConfigDict(dict(kind="fid", every_steps=0, inception_weights="", num_images=1000,
                                                 batch_size=50, max_batch=32))
    # The field's own measures (teal_jax/evaluate/, docs/evaluation.md), on demand (--mode=eval; every_steps=2000 to
    # run one during training). COCO Karpathy-test BLEU-4 / CIDEr of greedy captions, read from the run's
    # coco_captions source (its 'test' split is Karpathy's 5,000 images; 500 here, all with .max_images=0).
    c.evals.coco_caption = ml_collections.ConfigDict(dict(kind="coco_caption", every_steps=0, split="test",
                                                          max_images=500, batch_size=32))
    # LibriSpeech test-clean WER after Whisper's English normaliser (jiwer), from the run's audio source; on demand:
    # --config.evals.librispeech_wer.spelling_file=.../normalizer.json (Whisper's spelling table) for the full rules.
    c.evals.librispeech_wer = ml_collections.ConfigDict(dict(kind="asr_wer", every_steps=0, split="test_clean",
                                                             spelling_file="", max_utterances=0, batch_size=16))
    # ScienceQA by likelihood (TEAL's benchmark): on demand, --config.evals.scienceqa.data=.../problems.json
    # --config.evals.scienceqa.image_root=.../images/test (the question's image goes in front of the prompt).
    c.evals.scienceqa = ml_collections.ConfigDict(dict(kind="multiple_choice", every_steps=0, data="", split="test",
                                                       image_root="", normalize="chars", batch_size=16))
    # The frozen LM's text behaviour on standard tasks (EleutherAI's lm-evaluation-harness in process, over the TEAL
    # model's text ids; pip install 'teal_jax[eval]'): on demand; the harness downloads the tasks' datasets.
    c.evals.lm_harness = ml_collections.ConfigDict(dict(kind="lm_harness", every_steps=0,
                                                        tasks=("hellaswag", "arc_easy", "piqa", "lambada_openai"),
                                                        num_fewshot=0, limit=0, batch_size=16))
    check_fits(c)
    return c
