"""EnCodec-24kHz-shaped codec: ratios [8, 5, 4, 2] (hop 320, 75 frames/s), 32 filters, 128-d latent, 2-layer LSTM,
causal reflect padding, up to 32 RVQ levels x 1,024 codes (1.5-24 kbit/s through quantizer dropout), multi-scale
STFT discriminator from step 0 (EnCodec's loss weights: mel/STFT 1, L1 0.1, adversarial 3, feature matching 3).

The same shape as transformers' ``EncodecModel`` default config: ``teal_jax.convert.encodec.load_encodec`` imports
those weights into it. Training it needs accelerators; on a CPU use configs/audio/speech_tiny.py.
"""

from teal_jax.config import base_config, parse_variants


def get_config(arg: str | None = None):
    parse_variants(arg, (), config="configs/audio/encodec_24khz.py")  # no variants: any is an error
    c = base_config()
    c.objective = "audio_codec"
    m = c.model
    m.sample_rate = 24000
    m.channels = 1
    m.num_filters = 32
    m.hidden_size = 128
    m.ratios = (8, 5, 4, 2)
    m.num_residual_layers = 1
    m.num_lstm_layers = 2
    m.causal = True
    m.pad_mode = "reflect"
    m.activation = "elu"
    m.num_levels = 32
    m.codebook_size = 1024
    m.code_dim = None
    m.l2_normalize = False
    m.use_ema = True
    m.ema_decay = 0.99
    m.restart_after = 100
    m.quantizer_dropout = 1.0  # EnCodec draws a bandwidth per batch; per example here
    m.loss = dict(mel_weight=1.0, mel_scales=(64, 128, 256, 512, 1024, 2048), mel_bands=(8, 16, 32, 64, 64, 64),
                  stft_weight=1.0, l1_weight=0.1, quantizer_weight=1.0)
    m.disc = dict(enabled=True, n_ffts=(2048, 1024, 512, 256, 128), channels=32, periods=(), loss="hinge",
                  start_step=0, adv_weight=3.0, fm_weight=3.0)

    c.data.kind = "tfds"
    c.data.name = "librispeech"
    c.data.train_split = "train_clean100"
    c.data.eval_split = "dev_clean"
    c.data.audio_key = "speech"
    c.data.text_key = "text"
    c.data.label_key = ""
    c.data.source_rate = 16000
    c.data.data_dir = ""
    c.data.crop_seconds = 1.0
    c.data.eval_crop_seconds = 4.0
    c.data.wav_samples = 4

    c.train.steps = 300_000
    c.train.batch_size = 64
    c.train.log_every = 100
    c.train.eval_every = 5000
    c.train.checkpoint_every = 5000
    c.train.compute_dtype = "bfloat16"
    c.optimizer.lr = 3e-4
    c.optimizer.warmup_steps = 1000
    c.optimizer.b1 = 0.5
    c.optimizer.b2 = 0.9
    c.optimizer.weight_decay = 0.0
    c.optimizers.disc = dict(lr=3e-4, weight_decay=0.0)
    return c
