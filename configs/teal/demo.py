"""TEAL on the demo data: the tiny text LM (configs/lm/tiny.py) kept frozen, adapted to scikit-learn's digits
(configs/image/digits_tiny.py tokens) and espeak-ng speech (configs/audio/speech_tiny.py tokens).

``teal_jax.demo`` fills the paths (``model.base_lm_workdir``, ``data.image_tokenizer``, ``data.audio_tokenizer``,
the sources' ``data_dir``) from its run directory; to run a stage by hand, set them on the command line:

  python -m teal_jax.main --config=configs/teal/demo.py --workdir=runs/demo/teal_stage1 \
      --config.model.base_lm_workdir=runs/demo/text_lm --config.data.image_tokenizer=runs/demo/image_tokenizer \
      --config.data.audio_tokenizer=runs/demo/audio_codec

Variants (``--config=configs/teal/demo.py:VARIANT``, comma-separated):
  ``stage2``  : LLaMA-Adapter-V2-style bias/norm tuning on top of stage 1 (``lm.use_bias=True``; set
                ``model.base_lm_workdir`` to the stage-1 run so every TEAL parameter starts from it).
  ``codebook``: non-text embeddings initialised from the tokenizers' code vectors through a learned projection
                (the paper's ablation; the demo writes the ``.npy`` files from the tokenizers).
  ``full``    : full fine-tuning (the LM is not frozen): the ablation against the frozen stages.
  ``expert``  : modality experts (CogVLM-style): the frozen LM gets its own trainable copies of the attention
                projections and the MLP used only at non-text positions (``model.stage='frozen_expert'``); text
                positions run through the original weights, so text-only inputs give the base LM's logits bit for
                bit.
  ``lora``    : LoRA (rank 8) on the frozen LM's attention projections, with stage 1's new parameters: the
                ablation where the LM itself adapts a little; unlike stage 1 and the experts it changes the text
                behaviour (the report measures by how much).
  ``smoke``   : a few steps on the tiny data (CI runs the whole demo with it: ``teal_jax.demo --variant=quick``).

Input tokenizers (docs/semantic_tokenizers.md; ``teal_jax.demo_semantic`` runs the comparison):
  ``semantic``  : captions and transcripts read semantic codes: k-means over the image tokenizer's encoder latents
                  (configs/image/digits_kmeans.py) and over MFCC frames (configs/audio/speech_kmeans.py) as separate
                  input tokenizers with their own id ranges (``image_k=N``, ``audio_k=N`` codes, default 256); set
                  ``data.image_in_tokenizer`` / ``data.audio_in_tokenizer`` to those k-means runs.
  ``continuous``: the continuous-feature baseline: the same encoders' features, unquantised, through a learned
                  projection at the condition's positions (LLaVA / LLaMA-Adapter style prefix), same k-means runs.
  ``understanding``: only the understanding tasks (caption, asr) and their evaluations: the three-way comparison
                  trains each input kind on the same tasks for the same steps.
"""

import ml_collections

from configs.lm import tiny as tiny_lm
from teal_jax.config import SMOKE, base_config, parse_variants
from teal_jax.data import templates as templates_lib
from teal_jax.data.teal import config as teal_data
from teal_jax.models.transformer import ARCHITECTURE_FIELDS, RUNTIME_FIELDS

# The demo's tokenizers (teal_jax.demo): digits_tiny:coarse (4 x 4 codes over FSQ [4, 4, 4]) and
# speech_tiny:coarse (50 frames/s, RVQ levels of 64 codes, the first level kept); one 1 s span per clip.
IMAGE_CODES, IMAGE_TOKENS = 64, 16
AUDIO_CODES, AUDIO_LEVELS, AUDIO_SECONDS, AUDIO_FRAME_RATE = 64, 4, 1.0, 50
AUDIO_FRAMES = int(AUDIO_SECONDS * AUDIO_FRAME_RATE)

_VARIANTS = ("stage2", "codebook", "full", "expert", "lora", "semantic", "continuous", "understanding", SMOKE)
# The semantic / continuous inputs: digits_kmeans.py's latents (VQGAN encoder output, 64 channels, 4 x 4 cells) and
# speech_kmeans.py's MFCC frames (13 coefficients + deltas + delta-deltas, 5 frames stacked: 195 numbers, 50 per s).
IMAGE_FEATURE_DIM, AUDIO_FEATURE_DIM = 64, 195


def get_config(arg: str | None = None):
    variants = parse_variants(arg, _VARIANTS, config="configs/teal/demo.py", keyed=("image_k", "audio_k"),
                              exclusive=[("semantic", "continuous")])
    quick = SMOKE in variants
    c = base_config()
    c.objective = "teal"

    lm = tiny_lm.get_config().model
    if quick:  # the quick text LM of teal_jax.demo
        lm.vocab_size = 512
        lm.num_layers = 2
    c.model.lm = ml_collections.ConfigDict({k: lm[k] for k in ARCHITECTURE_FIELDS + RUNTIME_FIELDS})
    c.model.lm.max_decode_len = 512
    c.model.lm.use_bias = "stage2" in variants
    c.model.lm.expert_attention = "expert" in variants
    c.model.lm.expert_mlp = "expert" in variants
    c.model.vocab = ml_collections.ConfigDict(dict(
        image_codebook_size=IMAGE_CODES,
        audio_codebook_size=AUDIO_CODES,
        audio_num_levels=AUDIO_LEVELS,
        audio_scheme="first_levels",  # one id per 10 ms frame: the coarsest RVQ level carries the words
        audio_keep_levels=1,
        pad_multiple=128,
        image_in_size=0,  # input-only ids (variants semantic / continuous)
        audio_in_size=0))
    c.model.embedding_init = "codebook" if "codebook" in variants else "random"
    c.model.image_code_dim = 3 if "codebook" in variants else 0  # FSQ grid values (3 levels)
    c.model.audio_code_dim = 64 if "codebook" in variants else 0  # the codec's latent width (hidden_size)
    c.model.image_codebook = ml_collections.config_dict.placeholder(str)
    c.model.audio_codebook = ml_collections.config_dict.placeholder(str)
    c.model.stage = ("full" if "full" in variants else "frozen_stage2" if "stage2" in variants
                     else "frozen_expert" if "expert" in variants else "frozen_stage1")
    # Learned span positions (the grid cell of an image code, the frame of an audio code): h*w and frames*levels.
    c.model.image_span_len = IMAGE_TOKENS
    c.model.audio_span_len = AUDIO_FRAMES
    # New rows and head columns start at the spread of the LM's own (a trained tiny LM's rows are far above 0.02).
    c.model.nontext_init = "match_lm"
    c.model.base_lm_workdir = ml_collections.config_dict.placeholder(str)
    c.model.base_lm_hf = ml_collections.config_dict.placeholder(str)
    c.model.z_loss = 0.0
    c.model.loss_weights = ml_collections.ConfigDict(dict(text=1.0, special=1.0, image=1.0, audio=1.0))

    c.data = teal_data.default_task_data_config()  # every field, so each can be overridden on the command line
    # 'medium': 42 training voices, 5,371 training clips that fit the 1 s span ('small': 8 voices, 938 clips);
    # the held-out split (4 unseen voices) is the same.
    c.data.audio_source.config = "tiny" if quick else "medium"
    c.data.audio_seconds = AUDIO_SECONDS
    # lm: the frozen LM's text path has nothing to learn; its documents (the longest examples) only keep the new head
    # columns below the text ones at text positions, so they get a small share.
    c.data.tasks = ml_collections.ConfigDict(dict(caption=1.0, t2i=1.0, asr=1.0, tts=1.0, lm=0.1, reason_t2i=1.0,
                                                  reason_tts=1.0))
    c.data.cond_dropout = 0.1
    # Every example weighs the same: a two-token caption/transcript is not drowned by 65-token images and 101-token
    # speech spans in the shared embedding rows (with token weighting the captions stayed at chance).
    c.data.loss_normalization = "example"
    # 1,541 training digits are few for 64-token codes: jittered copies (tokenized once) against memorising them.
    c.data.image_source.augment_copies = 1 if quick else 4
    c.data.seq_len = 128  # the longest example (1 s of speech + its transcript) is ~60 ids
    c.model.image_in_dim = c.model.audio_in_dim = 0  # continuous input features' widths (variant continuous)
    if "semantic" in variants:
        c.model.vocab.image_in_size = int(variants.values.get("image_k", 256))
        c.model.vocab.audio_in_size = int(variants.values.get("audio_k", 256))
    if "continuous" in variants:  # the ids are span positions; the features come with the batch
        c.model.vocab.image_in_size, c.model.vocab.audio_in_size = IMAGE_TOKENS, AUDIO_FRAMES
        c.model.image_in_dim, c.model.audio_in_dim = IMAGE_FEATURE_DIM, AUDIO_FEATURE_DIM
        c.data.image_in_features = c.data.audio_in_features = True

    # The demo's 30-minute budget on 2 CPU cores sets the step counts (docs/teal.md: measured stage wall times).
    c.train.steps = 12 if quick else 1000
    c.train.batch_size = 8 if quick else 16
    c.train.log_every = 4 if quick else 50
    c.train.eval_every = 12 if quick else 500
    c.train.eval_batches = 2 if quick else 4
    c.train.checkpoint_every = 200
    c.train.compute_dtype = "float32"  # CPUs have no fast bf16
    # Only new rows, heads and span positions train in stage 1: 1e-2 (measured 1,000 steps: captioning 76% at 1e-2).
    c.optimizer.lr = 1e-2
    c.optimizer.warmup_steps = 4 if quick else 50
    c.optimizer.weight_decay = 0.0  # new rows start small; decay would only pull them to zero
    if "stage2" in variants:
        c.train.steps = 8 if quick else 200
        c.train.eval_every = 8 if quick else 200
        c.optimizer.lr = 1e-3
    if "full" in variants:
        c.optimizer.lr = 1e-3
    if "expert" in variants:  # the experts start as copies of trained LM weights: a gentler rate
        c.optimizer.lr = 5e-3
    if "lora" in variants:  # teal_jax/models/lora.py: B starts at zero, so step 0 is stage 1's model
        c.model.lora = ml_collections.ConfigDict(dict(rank=8, alpha=16.0, targets=r"attn/(q|k|v|o)_proj",
                                                      dropout=0.0))
        c.optimizer.lr = 5e-3
    # Generation settings of the demo's evaluation (Chameleon's temperature/top-p; text answers are greedy).
    c.sample = ml_collections.ConfigDict(dict(prompts=("",), max_new_tokens=64, temperature=0.7, top_k=0, top_p=0.9,
                                              seed=0, guidance_scale=1.0, task="text"))  # task: text|image|speech
    c.evals = demo_evals(quick)
    if "understanding" in variants:
        c.data.tasks = ml_collections.ConfigDict(dict(caption=1.0, t2i=0.0, asr=1.0, tts=0.0, lm=0.0, reason_t2i=0.0,
                                                      reason_tts=0.0))
        c.train.steps = 12 if quick else 600
        c.train.eval_every = c.train.steps
        c.train.checkpoint_every = c.train.steps
        c.evals = ml_collections.ConfigDict({k: c.evals[k].to_dict() for k in ("caption", "asr")})
    return c


def demo_evals(smoke: bool) -> ml_collections.ConfigDict:
    """The demo's held-out evaluation (teal_jax/evaluate/teal_evaluators.py; run by the demo's evaluate stage and
    ``--mode=eval``, not during training: ``every_steps=0``). Every generation call runs batches of one shape: the
    held-out reasoning set of one modality (15 sum pairs x ``per_pair``), which the guidance validation set matches
    (smoke: 10 digit prompts + 5 sum questions; default: 30 + 30), so each guidance scale compiles once per modality.
    The digit judge trains 150 (smoke) / 1,000 steps, the speech judge 50 / 500 (the codec stage usually trained
    it already, in the same cache directory)."""
    per_pair = 1 if smoke else 4
    batch = len(templates_lib.REASONING_EVAL_PAIRS) * per_pair
    v_per_class = 1 if smoke else 3
    digit = dict(digit_judge_dir="", digit_judge_steps=150 if smoke else 1000)
    speech = dict(data_dir="", speech_config="", speech_judge_dir="", speech_judge_steps=50 if smoke else 500)
    guidance = dict(guidance_scale=0.0, guidance_scales=(1.0, 2.0, 3.0), validation_per_class=v_per_class,
                    validation_pairs=batch - 10 * v_per_class, max_batch=batch)
    e = ml_collections.ConfigDict()
    e.caption = dict(kind="caption", every_steps=0, num_images=20 if smoke else 0, forced_choice=True)
    e.t2i = dict(kind="text_to_image", every_steps=0, per_class=2 if smoke else 10,
                 likelihood_images=20 if smoke else 100, **guidance, **digit)
    e.asr = dict(kind="asr", every_steps=0, data_dir="", speech_config="")
    e.tts = dict(kind="text_to_speech", every_steps=0, per_class=2 if smoke else 10, **guidance, **speech)
    e.reasoning = dict(kind="reasoning", every_steps=0, per_pair=per_pair, image_guidance_from="t2i",
                       speech_guidance_from="tts", lm_sum_answers=True, max_batch=batch, **digit, **speech)
    e.text = dict(kind="text_perplexity", every_steps=0, num_texts=40 if smoke else 200, max_len=128, batch_size=8)
    return e
