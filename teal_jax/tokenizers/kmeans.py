"""Semantic (feature-quantising) tokenizers: a frozen encoder, one of its hidden layers, and a k-means codebook.

TEAL reads audio through Whisper-small's layer-11 features clustered by k-means, and images through BEiT-v2's
semantic codes (here: k-means over a CLIP/SigLIP vision tower's patch features, the stand-in; BEiT-v2's VQ-KD
tokenizer is not in transformers). Such a tokenizer is input-only: ``decode`` raises.

Protocol (what the image/audio tokenizers offer and ``data/teal/token_dataset.py`` pre-tokenizes with):
  * :class:`AudioKMeansTokenizer`: ``encode(waveform, sample_rate) -> (codes int32 [batch, frames, 1], frames
    int32 [batch])`` (one frame per 20 ms: ``config.hop_length`` = 320 samples at 16 kHz), ``encode_files``,
    ``codebook_size`` / ``vocab_size``, ``num_levels`` (1), ``sample_rate``, ``frame_rate``, ``code_vectors()``.
    Each clip is cut into Whisper windows (30 s for real checkpoints), each window zero-padded and encoded whole, as
    ``WhisperFeatureExtractor`` + ``WhisperEncoder`` do; only the frames that cover the clip are kept.
  * :class:`ImageKMeansTokenizer`: ``encode(images) -> int32 [batch, grid, grid]`` (patch tokens; the class token
    is dropped), ``encode_files``, ``vocab_size``, ``token_grid``, ``config.image_size`` / ``config.in_channels``.
  * ``config`` (a frozen dataclass: encoder shape, layer, k, front end) and ``variables`` (encoder params and
    codebook) are what ``tokenizer_fingerprint`` hashes, so a new codebook or layer makes a new token dataset.

Codebook fit (:func:`fit_kmeans`): mini-batch k-means with per-centre running means (Sculley 2010; scikit-learn's
``MiniBatchKMeans`` update without reassignment): every batch is assigned to its nearest centres, and centre ``c``
becomes ``(counts_c * c + sum of its new rows) / (counts_c + n_c)``. Initial centres are ``k`` distinct feature rows
of the first batches, drawn with a seeded numpy generator. One jitted step computes the features and the update on
device, rows sharded over the mesh's batch axes ('data', 'fsdp'; the sums are all-reduced by XLA), codebook
replicated. The state (codebook, counts, step) is saved with the project's :class:`~teal_jax.checkpoint.Checkpointer`
(sealed, verified) every ``checkpoint_every`` steps; a second call with the same workdir resumes from the newest
step that verifies, and ends bit-identical to an uninterrupted fit (batches are a function of the step). Each step
reports ``inertia`` (mean squared distance to the assigned centre), ``usage`` (fraction of codes used in the batch),
``perplexity`` (exp of the entropy of the batch's code histogram) and ``total_usage`` (codes ever assigned).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from teal_jax.media.audio import read_wav, resample
from teal_jax.media.image import check_pixels
from teal_jax.models.vit import ViT, ViTConfig
from teal_jax.models.whisper import LogMelConfig, WhisperEncoder, WhisperEncoderConfig, log_mel
from teal_jax.tokenizers.audio import AudioTokenizer
from teal_jax.tokenizers.image import ImageTokenizer, _prepare

_HIGHEST = jax.lax.Precision.HIGHEST


# ---- k-means core ------------------------------------------------------------------------------------------------
def init_codebook(features: np.ndarray, num_codes: int, seed: int) -> np.ndarray:
    """float32 ``[num_codes, D]``: ``num_codes`` distinct rows of ``features [N, D]`` (seeded draw)."""
    x = np.asarray(features, np.float32)
    if x.ndim != 2:
        raise ValueError(f"init_codebook: features must be [rows, dim], got shape {x.shape}")
    if x.shape[0] < num_codes:
        raise ValueError(f"k-means init: {x.shape[0]} feature rows for {num_codes} codes; use more or larger "
                         "init batches (kmeans.init_batches) or fewer codes")
    idx = np.random.default_rng(seed).choice(x.shape[0], num_codes, replace=False)
    return x[np.sort(idx)]


def assign(codebook: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Nearest centre of each row: ``x [..., D]`` -> (codes int32 [...], squared distance float32 [...]).

    ``||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2`` in float32 with 'highest' matmul precision."""
    x = x.astype(jnp.float32)
    c = codebook.astype(jnp.float32)
    d = (jnp.sum(x * x, -1, keepdims=True) - 2.0 * jnp.einsum("...d,kd->...k", x, c, precision=_HIGHEST)
         + jnp.sum(c * c, -1))
    codes = jnp.argmin(d, axis=-1).astype(jnp.int32)
    return codes, jnp.maximum(jnp.take_along_axis(d, codes[..., None], -1)[..., 0], 0.0)


def kmeans_update(state: dict, x: jax.Array, mask: jax.Array) -> tuple[dict, dict]:
    """One mini-batch step. ``state = {'codebook' [k, D], 'counts' [k], 'step' []}``, ``x [N, D]``, ``mask [N]``
    (False rows are ignored) -> (new state, metrics)."""
    codebook, counts = state["codebook"], state["counts"]
    k = codebook.shape[0]
    codes, dist = assign(codebook, x)
    w = mask.astype(jnp.float32)
    n = jax.ops.segment_sum(w, codes, k)
    sums = jax.ops.segment_sum(x.astype(jnp.float32) * w[:, None], codes, k)
    new_counts = counts + n
    # running mean of every row a centre has ever been assigned: (counts c + sums) / (counts + n)
    moved = codebook + (sums - n[:, None] * codebook) / jnp.maximum(new_counts, 1.0)[:, None]
    new_codebook = jnp.where((n > 0)[:, None], moved, codebook)
    total = jnp.maximum(jnp.sum(w), 1.0)
    p = n / total
    entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
    metrics = {"inertia": jnp.sum(dist * w) / total, "usage": jnp.mean((n > 0).astype(jnp.float32)),
               "perplexity": jnp.exp(entropy), "total_usage": jnp.mean((new_counts > 0).astype(jnp.float32))}
    return {"codebook": new_codebook, "counts": new_counts, "step": state["step"] + 1}, metrics


# ---- the tokenizers ----------------------------------------------------------------------------------------------
class _KMeansTokenizer:
    """Shared part: encoder params + codebook, the jitted feature and encode functions, the fit."""

    kind = ""

    def __init__(self, config, encoder_params: Any, codebook: np.ndarray | None = None):
        self.config = config
        self.codebook = None if codebook is None else np.asarray(codebook, np.float32)
        if self.codebook is not None and self.codebook.shape[0] != config.num_codes:
            raise ValueError(f"codebook has {self.codebook.shape[0]} codes; config.num_codes={config.num_codes}")
        self.encoder_params = encoder_params
        self._features = jax.jit(self._feature_fn)
        self._assign = jax.jit(lambda cb, f: assign(cb, f)[0])

    @property
    def variables(self) -> dict:
        """What the fingerprint hashes: the encoder's params and the codebook."""
        v = {"params": {"encoder": self.encoder_params}}
        if self.codebook is not None:
            v["params"]["codebook"] = self.codebook
        return v

    @property
    def vocab_size(self) -> int:
        return self.config.num_codes

    @property
    def codebook_size(self) -> int:
        return self.config.num_codes

    def _need_codebook(self) -> np.ndarray:
        if self.codebook is None:
            raise ValueError(f"this {type(self).__name__} has no codebook yet: fit it (fit_kmeans) or load one "
                             "(from_checkpoint)")
        return self.codebook

    def decode(self, *args, **kwargs):
        raise ValueError(f"{type(self).__name__} is input-only (encoder features + k-means): its codes cannot be "
                         "decoded; use a reconstruction tokenizer (ImageTokenizer / AudioTokenizer) for outputs")

    def _feature_fn(self, params, inputs, lengths):  # -> ([batch, n, D] features, [batch, n] valid)
        raise NotImplementedError

    def batch_features(self, inputs: np.ndarray, lengths: np.ndarray | None = None) -> tuple[jax.Array, jax.Array]:
        """Prepared inputs (see subclasses) -> (features ``[batch, n, D]``, valid ``bool [batch, n]``)."""
        return self._features(self.encoder_params, inputs, lengths)

    def with_codebook(self, codebook: np.ndarray):
        return type(self)(self.config, self.encoder_params, codebook, **self._kwargs())

    def _kwargs(self) -> dict:
        return {}

    def run_config(self) -> ml_collections.ConfigDict:
        return ml_collections.ConfigDict({"kind": self.kind, "num_codes": self.config.num_codes,
                                          "layer": self.config.layer})


def _valid_layer(layer: int, num_layers: int, what: str) -> int:
    if not 0 <= int(layer) <= num_layers:
        raise ValueError(f"layer={layer}: {what} has hidden states 0..{num_layers} (0 = embeddings, i = output of "
                         f"block i, {num_layers} = after the final norm)")
    return int(layer)


@dataclasses.dataclass(frozen=True)
class AudioKMeansConfig:
    encoder: WhisperEncoderConfig
    front_end: LogMelConfig
    layer: int
    num_codes: int

    @property
    def hop_length(self) -> int:
        """Waveform samples per code (Whisper: conv2's stride 2 over mel frames of ``front_end.hop_length``)."""
        return 2 * self.front_end.hop_length

    @property
    def sample_rate(self) -> int:
        return self.front_end.sample_rate


class AudioKMeansTokenizer(_KMeansTokenizer):
    """Whisper encoder layer ``layer`` + k-means (see the module docstring)."""

    kind = "whisper"
    num_levels = 1
    prepare = AudioTokenizer.prepare  # the one waveform rule (to_mono_float, resampling, ragged batches)
    _clip = AudioTokenizer._clip

    def __init__(self, config: AudioKMeansConfig, encoder_params: Any, codebook: np.ndarray | None = None):
        _valid_layer(config.layer, config.encoder.num_layers, "this Whisper encoder")
        window = config.front_end.window_samples
        if window != config.encoder.mel_frames * config.front_end.hop_length:
            raise ValueError(f"front end window {window} samples ({window // config.front_end.hop_length} mel "
                             f"frames) != the encoder's 2 * max_source_positions = {config.encoder.mel_frames} mel "
                             "frames (preprocessor_config.json chunk_length vs config.json max_source_positions)")
        if config.front_end.n_mels != config.encoder.num_mel_bins:
            raise ValueError(f"front end n_mels={config.front_end.n_mels} != encoder num_mel_bins="
                             f"{config.encoder.num_mel_bins}")
        super().__init__(config, encoder_params, codebook)

    @classmethod
    def from_pretrained(cls, hf_dir: str, *, layer: int, num_codes: int, codebook=None) -> AudioKMeansTokenizer:
        """The encoder of a transformers Whisper checkpoint directory (config.json + model.safetensors)."""
        from teal_jax.convert.whisper import import_whisper_encoder

        enc, fe, params = import_whisper_encoder(hf_dir)
        return cls(AudioKMeansConfig(enc, fe, int(layer), int(num_codes)), params, codebook)

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def feature_dim(self) -> int:
        return self.config.encoder.d_model

    @property
    def frame_rate(self) -> float:
        return self.config.sample_rate / self.config.hop_length

    def _feature_fn(self, params, x, lengths):
        """``x`` float32 [batch, samples] at ``sample_rate`` -> layer features [batch, ceil(samples / hop), D]."""
        cfg = self.config
        b, s = x.shape
        w = cfg.front_end.window_samples
        nw = -(-s // w)
        windows = jnp.pad(x, ((0, 0), (0, nw * w - s))).reshape(b * nw, w)
        # each window is zero-padded past the clip's end as WhisperFeatureExtractor pads (the max - 8 floor is
        # per window)
        if lengths is not None:
            t = jnp.arange(nw * w).reshape(nw, w)[None]
            windows = jnp.where(t < lengths[:, None, None], windows.reshape(b, nw, w), 0.0).reshape(b * nw, w)
        mel = log_mel(windows, cfg.front_end)
        h = WhisperEncoder(cfg.encoder).apply({"params": params}, mel, layer=cfg.layer)
        frames = -(-s // cfg.hop_length)
        h = h.reshape(b, nw * h.shape[1], h.shape[2])[:, :frames]
        n = jnp.full((b,), s) if lengths is None else lengths
        valid = jnp.arange(frames)[None, :] < -(-n[:, None] // cfg.hop_length)
        return h, valid

    def code_vectors(self) -> np.ndarray:
        """float32 ``[1, num_codes, D]``: the centres (one level), for a codebook-initialised joint embedding."""
        return self._need_codebook()[None]

    def encode(self, waveform, sample_rate: int, *, channels_last: bool = True) -> tuple[jax.Array, np.ndarray]:
        """Waveform(s) (as :meth:`AudioTokenizer.encode`) -> (codes ``int32 [batch, frames, 1]``, real frames)."""
        codebook = self._need_codebook()
        feats, frames = self.encode_features(waveform, sample_rate, channels_last=channels_last)
        return self._assign(codebook, feats)[..., None], frames

    def encode_features(self, waveform, sample_rate: int, *,
                        channels_last: bool = True) -> tuple[jax.Array, np.ndarray]:
        """Waveform(s) -> (features ``float32 [batch, frames, feature_dim]``, real frames): what :meth:`encode`
        quantises, unquantised (the continuous-feature baseline reads these). Needs no codebook."""
        x, lengths = self.prepare(waveform, sample_rate, channels_last=channels_last)
        feats, _ = self._features(self.encoder_params, jnp.asarray(x), jnp.asarray(lengths))
        frames = np.asarray([math.ceil(n / self.config.hop_length) for n in lengths], np.int32)
        return feats.astype(jnp.float32), frames

    def encode_files(self, paths: Sequence[str | os.PathLike]) -> tuple[jax.Array, np.ndarray]:
        """Reads WAV files (any PCM rate/channels) and encodes them as one ragged batch."""
        if not paths:
            raise ValueError("encode_files: no paths given")
        clips = []
        for p in paths:
            x, rate = read_wav(p)  # raises ValueError naming the file
            if x.shape[0] == 0:
                raise ValueError(f"{os.fspath(p)}: empty audio (0 samples)")
            clips.append(resample(x.mean(axis=1), rate, self.sample_rate))
        return self.encode(clips, self.sample_rate)


@dataclasses.dataclass(frozen=True)
class ImageKMeansConfig:
    encoder: ViTConfig
    layer: int
    num_codes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def image_size(self) -> int:
        return self.encoder.image_size

    @property
    def in_channels(self) -> int:
        return self.encoder.num_channels


class ImageKMeansTokenizer(_KMeansTokenizer):
    """CLIP/SigLIP vision tower layer ``layer`` patch features + k-means (see the module docstring). Images are
    prepared as :class:`ImageTokenizer` prepares them (channels, center crop + bicubic resize), then normalised with
    the checkpoint's mean/std (not bit-identical to transformers' PIL-based image processor when resizing)."""

    kind = "clip"
    has_decoder = False
    encode_files = ImageTokenizer.encode_files  # the one file rule (read_image, crop/resize, mixed channels)

    def __init__(self, config: ImageKMeansConfig, encoder_params: Any, codebook: np.ndarray | None = None,
                 *, resize: bool = True):
        _valid_layer(config.layer, config.encoder.num_layers, "this vision tower")
        self.resize = resize
        super().__init__(config, encoder_params, codebook)

    @classmethod
    def from_pretrained(cls, hf_dir: str, *, layer: int, num_codes: int, codebook=None) -> ImageKMeansTokenizer:
        """The vision tower of a transformers CLIP/SigLIP checkpoint directory."""
        from teal_jax.convert.clip import import_vision_tower

        enc, params, info = import_vision_tower(hf_dir)
        return cls(ImageKMeansConfig(enc, int(layer), int(num_codes), info["mean"], info["std"]), params, codebook)

    def _kwargs(self) -> dict:
        return {"resize": self.resize}

    @property
    def feature_dim(self) -> int:
        return self.config.encoder.hidden_size

    @property
    def token_grid(self) -> tuple[int, int]:
        return (self.config.encoder.grid, self.config.encoder.grid)

    def _feature_fn(self, params, images, lengths):
        del lengths
        cfg = self.config
        x = (_prepare(images, cfg.in_channels, cfg.image_size, self.resize) + 1.0) / 2.0
        x = (x - jnp.asarray(cfg.mean, jnp.float32)) / jnp.asarray(cfg.std, jnp.float32)
        h = ViT(cfg.encoder).apply({"params": params}, x, layer=cfg.layer)
        if cfg.encoder.class_token:
            h = h[:, 1:]
        return h, jnp.ones(h.shape[:2], bool)

    def code_vectors(self) -> np.ndarray:
        """float32 ``[num_codes, D]``: the centres."""
        return self._need_codebook()

    def encode_features(self, images) -> jax.Array:
        """Images (as :meth:`encode`) -> features ``float32 [batch, h*w, feature_dim]`` (row-major cells): what
        :meth:`encode` quantises, unquantised (the continuous-feature baseline). Needs no codebook."""
        images = images if isinstance(images, jax.Array) else np.asarray(images)
        check_pixels(images)
        feats, _ = self._features(self.encoder_params, images, None)
        return feats.astype(jnp.float32)

    def encode(self, images) -> jax.Array:
        """Images (``[batch, H, W(, C)]`` uint8 or float in [0, 1]) -> codes ``int32 [batch, *token_grid]``."""
        codebook = self._need_codebook()
        feats = self.encode_features(images)
        return self._assign(codebook, feats).reshape(feats.shape[0], *self.token_grid)


# ---- building from a config --------------------------------------------------------------------------------------
DEMO_KINDS = ("mfcc", "vqgan")  # teal_jax/tokenizers/semantic_demo.py


def tokenizer_from_config(section: ml_collections.ConfigDict | dict, codebook=None) -> _KMeansTokenizer:
    """``config.tokenizer`` = ``{kind: 'whisper'|'clip', checkpoint: <transformers dir>, layer, num_codes}``, or a
    demo-scale kind ('mfcc', 'vqgan': :mod:`teal_jax.tokenizers.semantic_demo`)."""
    s = dict(section)
    if s.get("kind") in DEMO_KINDS:
        from teal_jax.tokenizers import semantic_demo

        return semantic_demo.tokenizer_from_section(s, codebook)
    for f in ("kind", "checkpoint", "layer", "num_codes"):
        if f not in s or s[f] in ("", None):
            raise ValueError(f"config.tokenizer.{f} is missing or empty")
    cls = {"whisper": AudioKMeansTokenizer, "clip": ImageKMeansTokenizer}.get(s["kind"])
    if cls is None:
        raise ValueError(f"config.tokenizer.kind={s['kind']!r}: choose 'whisper' (audio) or 'clip' (images: CLIP or "
                         "SigLIP vision towers), or at demo scale 'mfcc' (audio frames) or 'vqgan' (the latents of "
                         "an image_vq run)")
    if not os.path.isdir(s["checkpoint"]):
        raise FileNotFoundError(f"config.tokenizer.checkpoint={s['checkpoint']!r}: no such directory (a "
                                "transformers checkpoint directory: config.json + model.safetensors)")
    if int(s["num_codes"]) < 2:
        raise ValueError(f"config.tokenizer.num_codes={s['num_codes']} must be >= 2")
    return cls.from_pretrained(s["checkpoint"], layer=int(s["layer"]), num_codes=int(s["num_codes"]),
                               codebook=codebook)


def from_checkpoint(workdir: str, step: int | None = None) -> _KMeansTokenizer:
    """The tokenizer of a finished (or interrupted) :func:`fit_kmeans` run: its config's encoder + the codebook."""
    from teal_jax import checkpoint

    config, params, _ = checkpoint.load_params(workdir, step)
    if config.get("objective") != "kmeans_tokenizer":
        raise ValueError(f"{workdir}: checkpoint of objective {config.get('objective')!r}, expected "
                         "'kmeans_tokenizer'")
    return tokenizer_from_config(config.tokenizer, codebook=params["codebook"])


# ---- the fit -----------------------------------------------------------------------------------------------------
def _check_same_fit(saved: ml_collections.ConfigDict, config: ml_collections.ConfigDict, workdir: str) -> None:
    """A resumed fit must be the same fit: same encoder checkpoint, layer, number of codes and every other field of
    ``config.tokenizer`` (a demo kind's front end)."""
    a_sec, b_sec = dict(saved.get("tokenizer", {})), dict(config.get("tokenizer", {}))
    norm = lambda v: list(v) if isinstance(v, (list, tuple)) else v  # the saved config went through JSON
    first = ("kind", "checkpoint", "layer", "num_codes")
    for f in (*first, *sorted((set(a_sec) | set(b_sec)) - set(first))):
        a, b = norm(a_sec.get(f)), norm(b_sec.get(f))
        if a != b:
            raise ValueError(f"{workdir} holds a k-means fit with tokenizer.{f}={a!r}; this config has {b!r}: "
                             "use another workdir (or the saved value) to resume")


def _to_global(x: np.ndarray | None, sharding) -> jax.Array | None:
    return None if x is None else jax.make_array_from_process_local_data(sharding, np.asarray(x))


def fit_kmeans(tokenizer: _KMeansTokenizer, batches: Callable[[int], Any], *, steps: int, workdir: str,
               config: ml_collections.ConfigDict, seed: int = 0, init_batches: int = 1, checkpoint_every: int = 100,
               mesh: jax.sharding.Mesh | None = None, log: Callable[[str], None] = print,
               log_every: int = 10) -> tuple[_KMeansTokenizer, list[dict]]:
    """Fits ``tokenizer``'s codebook; returns (the tokenizer with it, per-step metrics of this call).

    ``batches(i)`` returns this host's rows of batch ``i`` (deterministic in ``i``: resumption replays it):
    float waveforms ``[b, samples]`` or ``(waveforms, lengths)`` for audio, images ``[b, H, W(, C)]`` for images; ``b``
    must divide over the mesh's batch shards. The first ``init_batches`` batches seed the centres. ``config`` is
    saved with every checkpoint (``objective='kmeans_tokenizer'``, ``tokenizer`` section) so that
    :func:`from_checkpoint` can rebuild the tokenizer. Resumes from ``workdir``'s newest verified step.
    """
    from teal_jax import checkpoint
    from teal_jax.parallel import sharding as sh

    if config.get("objective") != "kmeans_tokenizer":
        raise ValueError(f"config.objective={config.get('objective')!r}: a k-means fit saves "
                         "objective='kmeans_tokenizer'")
    if steps < 1 or init_batches < 1 or checkpoint_every < 1:
        raise ValueError(f"steps={steps}, init_batches={init_batches}, checkpoint_every={checkpoint_every} must be "
                         ">= 1")
    mesh = sh.make_mesh((-1, 1, 1)) if mesh is None else mesh
    rows, rep = sh.batch_sharding(mesh), sh.replicated(mesh)
    k = tokenizer.config.num_codes

    def split(b):
        x, n = (b if isinstance(b, tuple) else (b, None))
        return np.asarray(x), (None if n is None else np.asarray(n, np.int32))

    def features(params, x, n):
        f, valid = tokenizer._feature_fn(params, x, n)
        return f.reshape(-1, f.shape[-1]), valid.reshape(-1)

    feat_fn = jax.jit(features, in_shardings=(rep, rows, rows), out_shardings=(rep, rep))

    def step_fn(state, params, x, n):
        return kmeans_update(state, *features(params, x, n))

    state_sh = {"codebook": rep, "counts": rep, "step": rep}
    step = jax.jit(step_fn, in_shardings=(state_sh, rep, rows, rows), out_shardings=(state_sh, rep),
                   donate_argnums=0)
    params = jax.device_put(tokenizer.encoder_params, rep)

    def as_saved(s):  # checkpoint.load_params reads 'params' and 'model_state'
        return {"step": s["step"], "params": {"codebook": s["codebook"]}, "model_state": {"counts": s["counts"]}}

    ckpt = checkpoint.Checkpointer(workdir, keep=2)
    history: list[dict] = []
    try:
        with sh.set_mesh(mesh):
            abstract = None
            if ckpt.all_steps():
                _check_same_fit(checkpoint.read_config(workdir), config, workdir)
                sds = lambda shape: jax.ShapeDtypeStruct(shape, jnp.float32, sharding=rep)
                abstract = as_saved({"step": jax.ShapeDtypeStruct((), jnp.int32, sharding=rep),
                                     "codebook": sds((k, tokenizer.feature_dim)), "counts": sds((k,))})
            restored = ckpt.restore_latest(abstract, say=log) if abstract is not None else None
            if restored is not None:
                start, saved, _, _ = restored
                state = {"codebook": saved["params"]["codebook"], "counts": saved["model_state"]["counts"],
                         "step": saved["step"]}
                log(f"k-means: resumed at step {start} from {workdir}")
            else:
                start = 0
                feats = []
                for i in range(init_batches):
                    x, n = split(batches(i))
                    f, valid = feat_fn(params, _to_global(x, rows), _to_global(n, rows))
                    feats.append(np.asarray(f)[np.asarray(valid)])
                cb = init_codebook(np.concatenate(feats), k, seed)
                state = {"codebook": jax.device_put(cb, rep), "counts": jax.device_put(np.zeros((k,), np.float32), rep),
                         "step": jax.device_put(np.int32(0), rep)}
            for i in range(start, steps):
                x, n = split(batches(i))
                state, metrics = step(state, params, _to_global(x, rows), _to_global(n, rows))
                m = {key: float(v) for key, v in metrics.items()}
                history.append({"step": i + 1, **m})
                if (i + 1) % log_every == 0 or i + 1 == steps:
                    log(f"k-means step {i + 1}/{steps}: " + ", ".join(f"{a} {b:.4g}" for a, b in m.items()))
                if (i + 1) % checkpoint_every == 0 or i + 1 == steps:
                    ckpt.save(i + 1, as_saved(state), {"next_batch": i + 1}, config)
    finally:
        ckpt.close()
    return tokenizer.with_codebook(np.asarray(state["codebook"])), history
