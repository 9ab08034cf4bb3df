"""TEAL adaptation of a (frozen) text LM to the unified vocabulary (objective 'teal').

Model: ``TealLM`` built from ``config.model`` (``lm``: the TransformerConfig fields, the LM's vocab_size being the
text range; ``vocab``: the UnifiedVocab fields except text_size; ``embedding_init``; ``stage``). Base weights:
``model.base_lm_workdir`` (a checkpoint of objective 'lm', or of objective 'teal' to continue e.g. stage 1 ->
stage 2, in which case every TEAL parameter is taken), or ``model.base_lm_hf`` (a HF Llama directory, through
``teal_jax.convert.llama.import_llama``); otherwise random, unless ``model.require_base_lm`` names the field that
must be set (configs/teal/llama.py). ``trainable()`` follows ``model.stage``.

Batches: ``tokens`` [B, T+1] unified ids, ``loss_mask`` [B, T+1] (1 on target tokens), optional ``segment_ids`` /
``positions`` (packing), ``modality`` [B, T+1] (derived from the ids when absent) and ``loss_weight`` [B, T+1]
(per-token weights, e.g. ``data.loss_normalization='example'``).

Loss: next-token cross-entropy over the whole unified vocabulary, each target weighted by
``loss_weights[modality(target)]`` (times its ``loss_weight``) and normalised by the sum of those weights (all
weights 1: the plain token mean, as lm_loss), plus optional z-loss. Metrics are unweighted token means: per
modality (loss/accuracy over that modality's targets) and the text perplexity over the *text rows only*:
``exp(mean over text targets of logsumexp(logits[:text_size]) - logit)``, which for a frozen LM is exactly the
original LM's perplexity.

Data: ``data.kind='tasks'`` (:mod:`teal_jax.data.teal`): image/audio datasets pre-tokenized once by the
trained tokenizers (``data.image_tokenizer`` / ``data.audio_tokenizer``: workdirs of image_vq / audio_codec runs) into
tfds token datasets under ``data.tokens_dir``, then a packed, exactly resumable stream of caption / t2i / asr / tts /
lm / reasoning examples (``data.tasks`` weights) built by :mod:`teal_jax.data.templates`; ``prepare`` runs the
pre-tokenization and checks ``model.vocab`` against the tokenizers. :func:`teal_task_config` fills these fields.
``data.kind='synthetic'`` (:class:`teal_jax.data.teal.synthetic.SyntheticTealTasks`): a deterministic stream of
class-conditioned "image"/"audio" code patterns paired with two text ids, laid out by the same templates and packed
by the same packer (captioning, text-to-image, ASR, TTS; tests, smoke runs).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import linen as nn

from teal_jax import lineage
from teal_jax import vocab as vocab_lib
from teal_jax.config import base_config
from teal_jax.data.teal import config as teal_data_config
from teal_jax.data.teal import synthetic
from teal_jax.models import lora
from teal_jax.models import teal as teal_lib
from teal_jax.models.param_count import count_params, format_counts
from teal_jax.models.transformer import TransformerConfig
from teal_jax.train import chunked_loss
from teal_jax.train.objective import Objective
from teal_jax.vocab import UnifiedVocab

MODALITIES = vocab_lib.MODALITY_NAMES[: vocab_lib.PADDING]  # loss weights and metrics: text special image audio
DATA_KINDS = ("synthetic", "tasks")  # teal_jax.data.teal: synthetic.SyntheticTealTasks | task_stream.TealTaskStream


# ---- config ----------------------------------------------------------------------------------------------------------
def synthetic_config(stage: str = "frozen_stage1") -> ml_collections.ConfigDict:
    """A tiny TEAL config on the synthetic task stream (tests, smoke runs)."""
    c = base_config()
    c.objective = "teal"
    c.model.lm = ml_collections.ConfigDict(dict(
        vocab_size=64, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64,
        tie_embeddings=False, use_bias=stage == "frozen_stage2", attention_impl="xla", max_decode_len=256))
    c.model.vocab = ml_collections.ConfigDict(dict(
        image_codebook_size=32, audio_codebook_size=16, audio_num_levels=2, audio_scheme="interleave",
        audio_keep_levels=1, pad_multiple=128))
    c.model.embedding_init = "random"
    c.model.image_code_dim = 0
    c.model.audio_code_dim = 0
    c.model.image_codebook = ml_collections.config_dict.placeholder(str)  # .npy [K, C] for codebook init
    c.model.audio_codebook = ml_collections.config_dict.placeholder(str)  # .npy [levels, K, C]
    c.model.stage = stage
    c.model.base_lm_workdir = ml_collections.config_dict.placeholder(str)
    c.model.base_lm_hf = ml_collections.config_dict.placeholder(str)
    c.model.z_loss = 0.0
    c.model.loss_weights = ml_collections.ConfigDict(dict(text=1.0, special=1.0, image=1.0, audio=1.0))
    c.data.kind = "synthetic"
    c.data.seq_len = 48
    c.data.image_shape = (3, 3)
    c.data.audio_frames = 3
    c.data.num_classes = 10
    c.data.tasks = synthetic.TASKS
    c.data.code_noise = 0.1  # fraction of codes replaced by random ones
    c.data.cond_dropout = 0.1  # t2i/tts: the condition is replaced by <null> (classifier-free guidance training)
    c.train.steps = 200
    c.train.batch_size = 8
    c.train.log_every = 20
    c.train.eval_every = 100
    c.train.eval_batches = 2
    c.train.checkpoint_every = 100
    c.train.compute_dtype = "float32"
    c.optimizer.lr = 3e-3
    c.optimizer.warmup_steps = 10
    return c


def teal_task_config(config: ml_collections.ConfigDict | None = None, *, base_lm_workdir: str | None = None,
                     image_tokenizer: str = "", audio_tokenizer: str = "", fill_vocab: bool = True,
                     **data_fields) -> ml_collections.ConfigDict:
    """A TEAL config on real task data (``data.kind='tasks'``): ``config`` (default :func:`synthetic_config`) with
    ``config.data`` replaced by :func:`teal_jax.data.teal.config.default_task_data_config` updated with the tokenizer
    workdirs and ``data_fields`` (any field of it, e.g. ``tasks=dict(...)``, ``audio_seconds=0.5``, ``seq_len=512``,
    ``image_source=dict(kind='tfds', name='coco_captions', text_key='captions/text', label_key='')``).

    ``base_lm_workdir`` sets ``model.base_lm_workdir`` (its SentencePiece model and text documents are then found
    from it). With ``fill_vocab``, ``model.vocab``'s image/audio sizes are read from the tokenizer runs' saved configs,
    so they match by construction (``prepare`` checks them either way)."""
    from teal_jax.data.teal.prepare import tokenizer_run_vocab

    c = ml_collections.ConfigDict(synthetic_config().to_dict() if config is None else config.to_dict())
    data = teal_data_config.default_task_data_config()
    data.image_tokenizer, data.audio_tokenizer = image_tokenizer or "", audio_tokenizer or ""
    data.seq_len = int(c.data.get("seq_len", data.seq_len)) if config is not None else data.seq_len
    for key, value in data_fields.items():
        if key not in data:
            raise ValueError(f"teal_task_config: unknown data field {key!r}; known: {sorted(data)}")
        if key in ("image_source", "audio_source", "tasks"):
            sub = data[key]
            for k, v in dict(value).items():
                if key != "tasks" and k not in sub:
                    raise ValueError(f"teal_task_config: unknown field {key}.{k}; known: {sorted(sub)}")
                sub[k] = float(v) if key == "tasks" else v
        else:
            data[key] = value
    c.data = data
    if base_lm_workdir is not None:
        c.model.base_lm_workdir = base_lm_workdir
    if fill_vocab:
        if image_tokenizer:
            c.model.vocab.image_codebook_size = tokenizer_run_vocab(image_tokenizer, "image")["codebook_size"]
        if audio_tokenizer:
            sizes = tokenizer_run_vocab(audio_tokenizer, "audio")
            c.model.vocab.audio_codebook_size = sizes["codebook_size"]
            c.model.vocab.audio_num_levels = sizes["num_levels"]
            if c.model.vocab.get("audio_scheme") == "first_levels":
                c.model.vocab.audio_keep_levels = min(int(c.model.vocab.audio_keep_levels), sizes["num_levels"])
    return c


NONTEXT_INITS = ("random", "match_lm")


def match_lm_scale(params: Any, init_std: float) -> Any:
    """Rescales the randomly initialised non-text input rows and output columns (N(0, init_std)) to the spread of
    the base LM's own: rows to the std of the LM's input embedding table, head columns to the std of its output
    head (the embedding table when tied). New rows then start where the LM's text rows live instead of far
    below them (a trained tiny LM's rows are several times init_std)."""
    lm = nn.unbox(params["lm"])
    emb_std = jnp.std(jnp.asarray(lm["embed"]["embedding"], jnp.float32))  # traced: init may run under jit
    head = lm["lm_head"]["kernel"] if "lm_head" in lm else lm["embed"]["embedding"]
    head_std = jnp.std(jnp.asarray(head, jnp.float32))
    out = dict(params)
    for key in params:
        if key == "lm" or key.endswith("_codebook") or key.endswith("_proj") or key.endswith("_span_pos"):
            continue
        factor = (head_std if key.endswith("_head") else emb_std) / init_std
        leaf = params[key]
        value = jnp.asarray(teal_lib._unbox(leaf)) * factor
        out[key] = leaf.replace_boxed(value) if teal_lib._is_box(leaf) else value
    return out


# ---- loss --------------------------------------------------------------------------------------------------------
def teal_token_stats(logits: jax.Array, targets: jax.Array, vocab: UnifiedVocab, z: bool = True) -> dict:
    """logits [B, T, V], targets [B, T] -> float32 [B, T] statistics (:func:`chunked_loss.token_stats` plus
    ``text_ce``: the cross-entropy over the text rows only, clipped targets). A target no model can emit (an
    input-only id: the condition of caption / asr, never a loss position) has a -inf logit; its statistics are
    taken at id 0 instead, so the masked-out positions stay finite (inf * 0 would be NaN)."""
    targets = jnp.where(targets < vocab.output_size, targets, 0)
    stats = chunked_loss.token_stats(logits, targets, z)
    text_logits = logits[..., : vocab.text_size]
    safe_targets = jnp.clip(targets, 0, vocab.text_size - 1)
    stats["text_ce"] = jax.nn.logsumexp(text_logits, -1) - jnp.take_along_axis(
        text_logits, safe_targets[..., None], -1)[..., 0]
    return stats


def teal_loss(logits: jax.Array, batch: dict[str, jax.Array], vocab: UnifiedVocab,
              loss_weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
              z_loss: float = 0.0) -> tuple[jax.Array, dict[str, jax.Array]]:
    """logits [B, T, V] for inputs tokens[:, :-1] -> (loss, metrics). loss_weights by target modality
    (text, special, image, audio)."""
    stats = teal_token_stats(logits, batch["tokens"][:, 1:], vocab, bool(z_loss))
    return teal_loss_from_stats(stats, batch, vocab, loss_weights, z_loss)


def teal_loss_from_stats(stats: dict[str, jax.Array], batch: dict[str, jax.Array], vocab: UnifiedVocab,
                         loss_weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
                         z_loss: float = 0.0) -> tuple[jax.Array, dict[str, jax.Array]]:
    """:func:`teal_loss` from per-target statistics (:func:`teal_token_stats`, whole or chunked)."""
    tokens = batch["tokens"]
    seg = batch.get("segment_ids")
    seg = jnp.ones_like(tokens) if seg is None else seg
    mask = batch.get("loss_mask", jnp.ones(tokens.shape, jnp.float32))[:, 1:].astype(jnp.float32)
    mask = mask * (seg[:, 1:] == seg[:, :-1]) * (seg[:, 1:] > 0)
    modality = batch.get("modality")
    modality = vocab.modality_of_jax(tokens) if modality is None else modality
    tmod = modality[:, 1:]
    # Padding ids (modality 4) get weight 0.
    w_table = jnp.asarray(tuple(loss_weights) + (0.0,), jnp.float32)
    # Optional per-token weights (data.loss_normalization='example': 1 / the example's number of targets).
    per_token = batch.get("loss_weight")
    per_token = mask if per_token is None else mask * per_token[:, 1:].astype(jnp.float32)
    weights = per_token * w_table[jnp.clip(tmod, 0, 4)]
    ce = stats["ce"]
    nll = (ce * weights).sum() / jnp.maximum(weights.sum(), 1e-8)
    loss = nll
    metrics = {"nll": nll}
    if z_loss:
        z = stats["lse"]
        zl = (z * z * mask).sum() / jnp.maximum(mask.sum(), 1.0)
        loss = loss + z_loss * zl
        metrics["z_loss"] = zl
    correct = stats["correct"]
    metrics["accuracy"] = (correct * mask).sum() / jnp.maximum(mask.sum(), 1.0)
    for m, name in enumerate(MODALITIES):
        sel = mask * (tmod == m)
        n = jnp.maximum(sel.sum(), 1.0)
        metrics[f"loss/{name}"] = (ce * sel).sum() / n
        metrics[f"accuracy/{name}"] = (correct * sel).sum() / n
        metrics[f"targets/{name}"] = sel.sum() / jnp.maximum(mask.sum(), 1.0)
    # Text perplexity over the text rows only (the frozen LM's own distribution).
    text_sel = mask * (tmod == vocab_lib.TEXT)
    text_nll = (stats["text_ce"] * text_sel).sum() / jnp.maximum(text_sel.sum(), 1.0)
    metrics["text_nll"] = text_nll
    metrics["text_ppl"] = jnp.exp(text_nll)
    metrics["loss"] = loss
    return loss, metrics


# ---- base weights ------------------------------------------------------------------------------------------------
def check_base_lm_given(model_cfg: ml_collections.ConfigDict) -> None:
    """``model.require_base_lm`` ('base_lm_hf' | 'base_lm_workdir'; '' = off): a config meant for a pretrained LM
    fails naming that field when no base is set, instead of training on a random frozen LM."""
    need = model_cfg.get("require_base_lm") or ""
    if not need:
        return
    if need not in ("base_lm_hf", "base_lm_workdir"):
        raise ValueError(f"config.model.require_base_lm={need!r}: choose 'base_lm_hf', 'base_lm_workdir' or ''")
    if not (model_cfg.get("base_lm_hf") or model_cfg.get("base_lm_workdir")):
        what = ("a HF Llama checkpoint directory (config.json + model.safetensors)" if need == "base_lm_hf"
                else "the workdir of the run to continue (e.g. the stage-1 TEAL run)")
        raise ValueError(f"config.model.{need} is not set: this config adapts a pretrained LM "
                         f"(config.model.require_base_lm={need!r}); pass --config.model.{need}=<{what}>")


def _load_base(model_cfg: ml_collections.ConfigDict, ours: TransformerConfig) -> tuple[str, Any] | None:
    """('lm', lm_params) or ('teal', teal_params) from the configured base, or None."""
    workdir, hf = model_cfg.get("base_lm_workdir"), model_cfg.get("base_lm_hf")
    if workdir and hf:
        raise ValueError("set only one of config.model.base_lm_workdir and config.model.base_lm_hf")
    if workdir:
        try:
            kind, base_cfg, params = lineage.load_base(workdir)
        except ValueError as e:
            raise ValueError(f"config.model.base_lm_workdir: {e}") from e
        lm_fields = base_cfg.model if kind == "lm" else base_cfg.model.lm
        ours.check_same_architecture(TransformerConfig.from_config(lm_fields), workdir)
        return kind, params
    if hf:
        from teal_jax.convert.llama import import_llama  # imported lazily: only HF runs need it

        base_cfg, params = import_llama(hf)
        ours.check_same_architecture(base_cfg, hf)
        return "lm", params
    return None


def _load_codebooks(cfg: teal_lib.TealConfig, model_cfg: ml_collections.ConfigDict) -> dict[str, np.ndarray] | None:
    if cfg.embedding_init != "codebook":
        return None
    out = {}
    for m in teal_lib.NONTEXT_MODALITIES:
        if not cfg.rows(m):
            continue
        path = model_cfg.get(f"{m}_codebook")
        if not path:
            raise ValueError(f"config.model.embedding_init='codebook' needs config.model.{m}_codebook (a .npy of "
                             "the tokenizer's code vectors)")
        out[m] = teal_lib.codebook_array(cfg, m, np.load(path))
    return out


def _features(batch) -> tuple[jax.Array | None, jax.Array | None]:
    """The continuous input features of a batch (``features_image`` / ``features_audio`` ``[B, T + 1, dim]``, present
    when the run feeds a modality as continuous features), cut to the model's inputs."""
    return tuple(None if batch.get(k) is None else batch[k][:, :-1] for k in ("features_image", "features_audio"))


class TealObjective(Objective):
    def __init__(self, config: ml_collections.ConfigDict, *, codebooks: dict[str, Any] | None = None):
        super().__init__(config)
        self.teal_config = teal_lib.TealConfig.from_config(config)
        self.vocab = self.teal_config.vocab
        self.model = teal_lib.TealLM(self.teal_config)
        self.stage = config.model.get("stage", "frozen_stage1")
        self.lora = lora.LoraConfig.from_config(config.model)  # LoRA on the text LM (rank 0: off)
        if self.stage not in teal_lib.STAGES:
            raise ValueError(f"config.model.stage={self.stage!r}: choose one of {teal_lib.STAGES}")
        check_base_lm_given(config.model)
        lm_cfg = self.teal_config.lm
        if self.stage == "frozen_expert" and not (lm_cfg.expert_attention or lm_cfg.expert_mlp):
            raise ValueError("config.model.stage='frozen_expert' trains the LM's modality experts, but "
                             "config.model.lm.expert_attention and config.model.lm.expert_mlp are both False")
        self.nontext_init = config.model.get("nontext_init", "random")
        if self.nontext_init not in NONTEXT_INITS:
            raise ValueError(f"config.model.nontext_init={self.nontext_init!r}: choose one of {NONTEXT_INITS}")
        if self.stage == "frozen_stage2" and not self.teal_config.lm.use_bias:
            print("note: config.model.stage='frozen_stage2' with config.model.lm.use_bias=False tunes norms only")
        lw = config.model.get("loss_weights", {}) or {}
        unknown = sorted(set(lw) - set(MODALITIES))
        if unknown:
            raise ValueError(f"config.model.loss_weights has unknown modalities {unknown}; known {MODALITIES}")
        self.loss_weights = tuple(float(lw.get(m, 1.0)) for m in MODALITIES)
        self.z_loss = float(config.model.get("z_loss", 0.0))
        self.loss_chunk_size = int(config.train.get("loss_chunk_size", 0))  # > 0: no full [B, T, V] logits
        self.seq_len = int(config.data.seq_len)
        self.data_kind = config.data.get("kind", "synthetic")
        if self.data_kind not in DATA_KINDS:
            raise ValueError(f"config.data.kind={self.data_kind!r}: choose one of {DATA_KINDS}")
        self._tasks: dict[str, Any] | None = None  # prepare_task_data's result (data.kind='tasks')
        self._streams: dict[tuple, Any] = {}  # constructed task streams (the trainer asks for 'eval' at every eval)
        if self.data_kind == "tasks":
            teal_data_config.validate_task_data_config(config.data)
        self._codebooks = codebooks
        self._base: Any = False  # False: not loaded yet
        self._printed = False

    def _load_host_arrays(self) -> None:
        """Reads the base LM and codebooks once, on the host. ``init`` may run under jit/eval_shape, where file
        readers that build jax arrays (safetensors' flax mode) would be traced: evaluate them eagerly."""
        with jax.ensure_compile_time_eval():
            if self._base is False:
                self._base = _load_base(self.config.model, self.teal_config.lm)
            if self._codebooks is None:
                self._codebooks = _load_codebooks(self.teal_config, self.config.model)

    def prepare(self, workdir: str) -> None:
        super().prepare(workdir)
        self._load_host_arrays()
        if self.data_kind == "tasks":
            self._prepare_tasks()

    def _prepare_tasks(self) -> dict[str, Any]:
        """Checks the vocabulary against the tokenizers and pre-tokenizes what is missing (idempotent)."""
        from teal_jax.data.teal.prepare import prepare_task_data

        self._tasks = prepare_task_data(self.config, self.workdir, self.vocab, verbose=jax.process_index() == 0)
        self._streams = {}
        return self._tasks

    # ---- model -------------------------------------------------------------------------------------------------
    def init(self, rng, batch):
        self._load_host_arrays()
        codebooks = self._codebooks
        tokens = jnp.asarray(batch["tokens"])[:, :-1]
        variables = teal_lib.init_teal(self.model, rng, tokens, codebooks)
        params = variables["params"]
        if self._base:
            kind, base = self._base
            params = teal_lib.merge_lm_params(params, base if kind == "lm" else base["lm"])
            if kind == "lm" and self.nontext_init == "match_lm" and self.teal_config.embedding_init == "random":
                params = match_lm_scale(params, self.teal_config.lm.init_std)
            if kind == "teal":
                params = teal_lib.merge_nontext_params(params, base)
        params = {**params, "lm": lora.init_adapters(params["lm"], self.lora, jax.random.fold_in(rng, 1))}
        if not self._printed:
            self._printed = True
            unboxed = nn.unbox(params)
            counts = count_params(unboxed, self.trainable({"model": unboxed})["model"], group_of=teal_lib.param_group)
            print(f"TEAL parameters (stage {self.stage}):\n" + format_counts(counts))
        return {"model": params}, {}

    def trainable(self, params):
        mask = teal_lib.trainable_mask(params["model"], self.stage)
        if self.lora.enabled:  # the text LM's own weights freeze; its LoRA factors train
            mask = lora.trainable_mask(params["model"], mask, lm_path=("lm",))
        return {"model": mask}

    def _forward(self, params, batch, rng=None):
        tokens = batch["tokens"]
        seg, pos = batch.get("segment_ids"), batch.get("positions")
        return lora.apply(self.model, self.lora, {"params": params["model"]}, tokens[:, :-1],
                          None if pos is None else pos[:, :-1], None if seg is None else seg[:, :-1], None,
                          *_features(batch), rng=rng, lm_path=("lm",))

    def _loss(self, params, batch, rng, z_loss):
        if not self.loss_chunk_size:
            return teal_loss(self._forward(params, batch, rng), batch, self.vocab, self.loss_weights, z_loss)
        tokens = batch["tokens"]
        seg, pos = batch.get("segment_ids"), batch.get("positions")
        variables = {"params": params["model"]}

        def hidden(m, t, p, s, fi, fa):
            return m.lm.hidden(m.embed(t, None, fi, fa), p, s, m.expert_mask(t))

        def logits(h):
            return lora.apply(self.model, self.lora, variables, h, method=teal_lib.TealLM.logits_from_hidden,
                              rng=rng, lm_path=("lm",))

        h = lora.apply(self.model, self.lora, variables, tokens[:, :-1], None if pos is None else pos[:, :-1],
                       None if seg is None else seg[:, :-1], *_features(batch), method=hidden, rng=rng,
                       lm_path=("lm",))
        stats = chunked_loss.chunked_token_stats(
            h, tokens[:, 1:], logits, lambda lg, tg: teal_token_stats(lg, tg, self.vocab, bool(z_loss)),
            self.loss_chunk_size)
        return teal_loss_from_stats(stats, batch, self.vocab, self.loss_weights, z_loss)

    def grads(self, params, model_state, batch, rng, step):
        def loss_fn(p):
            return self._loss(p, batch, rng, self.z_loss)

        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return grads, model_state, metrics

    def eval_metrics(self, params, model_state, batch):
        _, metrics = self._loss(params, batch, None, 0.0)
        metrics = dict(metrics)
        metrics["loss"] = metrics.pop("nll")
        return metrics

    # ---- data --------------------------------------------------------------------------------------------------
    def make_data(self, split, *, batch_size, process_index, process_count):
        seed = self.config.seed + (0 if split == "train" else 1_000_003)
        if self.data_kind == "tasks":
            import copy

            from teal_jax.data.teal.prepare import make_task_stream

            key = (split, batch_size, process_index, process_count)
            if key not in self._streams:  # construction reads every record's label and text: once per split
                prepared = self._tasks if self._tasks is not None else self._prepare_tasks()
                self._streams[key] = make_task_stream(
                    self.config, prepared, self.vocab, split, batch_size=batch_size, process_index=process_index,
                    process_count=process_count, seed=seed, verbose=process_index == 0)
            return copy.copy(self._streams[key])  # shares the read-only records; its own position (batch 0)
        return synthetic.SyntheticTealTasks(self.vocab, self.config.data, batch_size=batch_size,
                                            seq_len=self.seq_len + 1, seed=seed, process_index=process_index)

    def tokens_per_example(self, batch) -> int:
        return self.seq_len

    def flops_per_example(self, batch) -> float:
        lm = self.teal_config.lm
        head = 6.0 * lm.embed_dim * self.vocab.head_size  # the non-text output head (forward + backward)
        return self.seq_len * (lm.flops_per_token(self.seq_len) + head)
