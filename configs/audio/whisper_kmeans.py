"""TEAL's audio input tokenizer: Whisper-small encoder, hidden state 11 (the output of block 11 of 12), k-means over
its 50-frames/s features (TEAL: 1,024 to 8,192 clusters; more clusters cut WER). Input-only: no decoder.

Point it at a transformers Whisper checkpoint directory (``WhisperModel`` / ``WhisperForConditionalGeneration``:
config.json + model.safetensors, with preprocessor_config.json beside them; e.g. a local copy of
``openai/whisper-small``) and fit the codebook over LibriSpeech::

    python -m teal_jax.train.kmeans_fit --config=configs/audio/whisper_kmeans.py:checkpoint=/ckpt/whisper-small,k=8192 \\
        --workdir=/runs/whisper_kmeans

Variants: ``checkpoint=DIR`` (required to build the tokenizer), ``k=N`` (codes, default 1,024), ``smoke`` (a tiny
random checkpoint's layer 2, 8 codes, 3 steps: what the tests build). The fit's steps, batch (clips per step) and
checkpoint interval are ``config.train.*``; clips are cut/padded to ``config.kmeans.seconds`` (TEAL's spans).
"""

from teal_jax.config import SMOKE, base_config, parse_variants
from teal_jax.data.teal.config import default_source_config


def get_config(arg: str | None = None):
    v = parse_variants(arg, (SMOKE,), config="configs/audio/whisper_kmeans.py", keyed=("checkpoint", "k"))
    c = base_config()
    c.objective = "kmeans_tokenizer"
    c.tokenizer = dict(kind="whisper", checkpoint=v.values.get("checkpoint", ""), layer=11,
                       num_codes=int(v.values.get("k", 1024)))
    c.kmeans = dict(seconds=15.0, init_batches=2)  # clip span; batches whose valid frames (~75k) seed the centres
    src = default_source_config("audio")
    src.kind = "tfds"
    src.name = "librispeech"
    src.audio_key = "speech"
    src.text_key = "text"
    src.label_key = ""
    src.train_split = "train_clean100"
    src.eval_split = "dev_clean"
    src.source_rate = 16000
    c.data.audio_source = src
    c.train.steps = 2000
    c.train.batch_size = 64  # clips per step (64 x 15 s = 48,000 frames)
    c.train.checkpoint_every = 200
    c.train.log_every = 20
    if SMOKE in v:
        c.tokenizer.layer = 2
        c.tokenizer.num_codes = int(v.values.get("k", 8))
        c.kmeans.seconds = 0.2
        c.kmeans.init_batches = 1
        c.data.audio_source = default_source_config("audio")  # spoken_words, built locally
        c.data.audio_source.config = "tiny"
        c.train.steps = 3
        c.train.batch_size = 8
        c.train.checkpoint_every = 2
        c.train.log_every = 1
    return c
