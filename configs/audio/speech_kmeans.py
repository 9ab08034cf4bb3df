"""Demo-scale semantic audio input tokenizer (HuBERT's first iteration): k-means over MFCC frames computed by the
project (13 coefficients of a 40-band log-mel + deltas + delta-deltas, frames t-2..t+2 stacked: 195 numbers per
frame) at 50 frames/s, the demo codec's rate (configs/audio/speech_tiny.py:coarse: hop 320 at 16 kHz), one code per
frame. Input-only: speech generation keeps the codec. Fitted over the demo's spoken-words train clips::

    python -m teal_jax.train.kmeans_fit --config=configs/audio/speech_kmeans.py:k=256 --workdir=runs/speech_kmeans_256 \\
        --config.data.audio_source.data_dir=runs/demo/data

Variants: ``k=N`` (codes, default 256; the issue's ablation: 64, 256, 1024), ``features=log_mel`` (the 40 log-mel
bands instead of MFCCs), ``smoke`` (tiny data, 8 codes, 3 steps: what the tests run). Front-end fields are
``config.tokenizer.*`` (``n_mels``, ``n_mfcc``, ``delta_order``, ``context``, ``n_fft``; see
teal_jax/tokenizers/semantic_demo.py), the fit's are ``config.train.*`` / ``config.kmeans.*``.
"""

from teal_jax.config import SMOKE, base_config, parse_variants
from teal_jax.data.teal.config import default_source_config


def get_config(arg: str | None = None):
    v = parse_variants(arg, (SMOKE,), config="configs/audio/speech_kmeans.py", keyed=("k", "features"))
    c = base_config()
    c.objective = "kmeans_tokenizer"
    c.tokenizer = dict(kind="mfcc", num_codes=int(v.values.get("k", 256)), features=v.values.get("features", "mfcc"),
                       sample_rate=16000, hop_length=320, n_fft=640, n_mels=40, n_mfcc=13, delta_order=2, context=2,
                       f_max=8000.0, log_floor=1e-6)
    c.kmeans = dict(seconds=1.0, init_batches=2)  # the demo's audio span (configs/teal/demo.py: 1 s, 50 frames)
    c.data.audio_source = default_source_config("audio")  # spoken_words 'small' ('' data_dir = <workdir>/data)
    c.train.steps = 400
    c.train.batch_size = 64  # clips per step: 64 x 50 frames; 2 init batches = 6,400 frames for up to 1,024 centres
    c.train.checkpoint_every = 200
    c.train.log_every = 50
    if SMOKE in v:
        c.tokenizer.num_codes = int(v.values.get("k", 8))
        c.kmeans.seconds = 0.2
        c.kmeans.init_batches = 1
        c.data.audio_source.config = "tiny"
        c.train.steps = 3
        c.train.batch_size = 8
        c.train.checkpoint_every = 2
        c.train.log_every = 1
    return c
