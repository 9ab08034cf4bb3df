"""Tiny speech codec for the espeak-ng spoken-words data at 16 kHz, sized for a 2-core CPU (see docs/audio_codec.md for
the measured figures).

16 kHz, hop 160 (100 frames/s), 4 RVQ levels x 64 codes (factorised 8-d euclidean codes, k-means initialised on the
first batch, dead-code restart, quantizer dropout 0.5 so one model serves 0.6-2.4 kbit/s), 0.5 s crops, spectral
losses only (no discriminator: it costs more than the 2 cores can give).
Architecture: the frame-rate ('Vocos-style') codec: log-STFT-magnitude encoder (n_fft 640) and iSTFT decoder with
ConvNeXt trunks of width 128 (4 encoder, 8 decoder blocks) at 100 frames/s. On a CPU this trains far better per second
than the SEANet conv stacks, whose time goes into thin full-rate convolutions (the ``seanet`` variant keeps them).
Variants (``--config=configs/audio/speech_tiny.py:VARIANT``, comma-separated):
  ``seanet``: the SEANet encoder/decoder (strides 8, 5, 4, 16 filters, no LSTM) instead of the frame-rate one.
  ``gan``  : adds the multi-scale STFT discriminator (hinge + feature matching) from step 400.
  ``smoke``: 10 steps of a smaller model on the 'tiny' data config, for tests.
  ``coarse``: 50 frames/s (hop 320, n_fft 1280: the same 4-hop, now 80 ms, Hann window), same 4 levels x 64 codes
           (1.2 kbit/s; 0.3 kbit/s at 1 level): half the tokens per second of audio for the TEAL LM.
"""

from teal_jax.config import SMOKE, base_config, parse_variants

VARIANTS = ("coarse", "gan", "seanet", SMOKE)


def get_config(arg: str | None = None):
    variants = parse_variants(arg, VARIANTS, config="configs/audio/speech_tiny.py")
    smoke = SMOKE in variants
    c = base_config()
    c.objective = "audio_codec"
    m = c.model
    m.sample_rate = 16000
    m.channels = 1
    coarse = "coarse" in variants
    # hop 160 (320 coarse); the SEANet decoder's order (its encoder downsamples by 8, 5, 4 (, 2))
    m.ratios = (2, 4, 5, 8) if coarse else (4, 5, 8)
    m.hidden_size = 64
    m.causal = False
    m.pad_mode = "reflect"
    m.encoder = "seanet" if "seanet" in variants else "stft"
    m.decoder = "seanet" if "seanet" in variants else "istft"
    # frame-rate codec
    m.n_fft = 4 * 320 if coarse else 4 * 160  # 4 hops: 80 ms / 40 ms Hann windows
    m.frame_dim = 32 if smoke else 128
    m.frame_mlp_ratio = 3
    m.frame_kernel_size = 7
    m.encoder_frame_layers = 1 if smoke else 4
    m.decoder_frame_layers = 2 if smoke else 8
    # SEANet codec (variant 'seanet')
    m.num_filters = 16
    m.num_residual_layers = 1
    m.num_lstm_layers = 0
    m.activation = "elu"
    # residual VQ
    m.num_levels = 4
    m.codebook_size = 64
    m.code_dim = 8
    m.l2_normalize = False
    m.kmeans_init = True
    m.kmeans_iters = 10
    m.restart_after = 20
    m.quantizer_dropout = 0.5
    m.beta = 0.25
    m.loss = dict(mel_weight=1.0, stft_weight=1.0, l1_weight=0.1, quantizer_weight=1.0)
    m.disc = dict(enabled="gan" in variants, n_ffts=(256, 512, 1024), channels=16, periods=(), loss="hinge",
                  start_step=400, adv_weight=1.0, fm_weight=1.0)

    c.data.kind = "spoken_words"
    c.data.config = "tiny" if smoke else "small"
    c.data.data_dir = ""  # "" = <workdir>/data
    c.data.crop_seconds = 0.5
    c.data.eval_crop_seconds = 1.0
    c.data.classifier_steps = 50 if smoke else 500
    c.data.wav_samples = 4

    c.train.steps = 10 if smoke else 1200  # 2,400 gave the same held-out figures (docs/audio_codec.md)
    c.train.batch_size = 8 if smoke else 16
    c.train.log_every = 5 if smoke else 50
    c.train.eval_every = c.train.steps
    c.train.eval_batches = 2
    c.train.checkpoint_every = 10 if smoke else 600
    c.train.compute_dtype = "float32"  # CPUs have no fast bf16

    c.optimizer.lr = 2e-3
    c.optimizer.warmup_steps = 50
    c.optimizer.decay = "cosine"
    c.optimizer.end_lr_ratio = 0.05
    c.optimizer.weight_decay = 0.0
    c.optimizer.b1 = 0.8
    c.optimizer.b2 = 0.99
    c.optimizer.clip_norm = 1.0
    c.optimizers.disc = dict(lr=2e-4, weight_decay=0.0)
    return c
