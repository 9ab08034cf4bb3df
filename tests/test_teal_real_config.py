"""configs/teal/llama.py end to end, tiny and offline: the real config with size overrides only prepares its data and
trains two steps through ``teal_jax.train.trainer.train`` on 8 fake devices (its fsdp mesh, bf16 compute).

What is real and what stands in:
- LM: a tiny random ``transformers.LlamaForCausalLM`` saved with safetensors, plus a SentencePiece
  ``tokenizer.model`` trained here whose vocabulary is the Llama's ``vocab_size``; read through ``hf=DIR`` (the
  config takes ``model.lm``'s shape from its config.json) and ``teal_jax.convert.llama``.
- Tokenizers: configs/image/vqgan_256.py and configs/audio/encodec_24khz.py with their sizes overridden small (the
  codec keeps 24 kHz and hop 320), randomly initialised and saved as training runs (``from_checkpoint`` reads them).
- coco_captions: the real dataset name. Its metadata files (dataset_info.json, features.json) are written from tfds'
  own ``CocoCaptions`` builder (only the ``tf.int64`` its ``_info`` names is given as numpy's, so no TensorFlow is
  imported), and ``tfds.testing.mock_data`` serves random records through the files-only reader a prepared dataset
  is opened with (``read_only_builder``: no builder code, no TensorFlow).
- librispeech: tfds' builder constructs a ``features.Audio``, whose constructor imports TensorFlow (tfds 4.9.10),
  both when it is mocked and when its prepared files are read. So ``data.audio_source.name`` points at
  ``librispeech_decoded``, registered here with librispeech's exact feature keys and ``speech`` as the decoded
  int16 PCM it holds (``Tensor`` instead of ``Audio``), mocked the same way.

The trainer opens the sources itself: ``teal_jax.data.teal.sources.open_sources`` is wrapped so that the real
function runs under ``tfds.testing.mock_data`` (the pre-tokenization that follows must not: tfds' mock also stubs
dataset building).
"""

from __future__ import annotations

import glob
import json
import os
import sys
import types
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from flax import linen as nn

from configs.audio import encodec_24khz
from configs.image import vqgan_256
from configs.teal import llama as llama_config
from teal_jax import checkpoint, lineage
from teal_jax.checkpoint import Checkpointer
from teal_jax.data import speech
from teal_jax.data import templates as T
from teal_jax.data.teal import config as TC
from teal_jax.data.teal import sources as TS
from teal_jax.data.teal import token_dataset as TT
from teal_jax.data.text_corpus import write_corpus
from teal_jax.media.image import center_crop_resize, convert_channels
from teal_jax.models.codec import Codec, CodecConfig
from teal_jax.models.vqgan import VQGAN, VQGANConfig
from teal_jax.tokenizers.audio import AudioTokenizer
from teal_jax.tokenizers.image import ImageTokenizer
from teal_jax.tokenizers.text import TextTokenizer
from teal_jax.train import teal_objective as TO

NUM_EXAMPLES = 6  # mock records per split
AUDIO_SECONDS = 0.1  # 8 frames of 320 samples at 24 kHz; the mock clips (5-49 samples at 16 kHz) all fit
SEQ_LEN = 64


class LibrispeechDecoded(tfds.core.GeneratorBasedBuilder):
    """librispeech's features with ``speech`` decoded (int16 PCM at 16 kHz), which tfds' ``Audio`` yields."""

    VERSION = tfds.core.Version("2.1.1")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "speech": tfds.features.Tensor(shape=(None,), dtype=np.int16),
            "text": tfds.features.Text(),
            "speaker_id": np.int64,
            "chapter_id": np.int64,
            "id": np.str_,
        }), supervised_keys=("speech", "text"))

    def _split_generators(self, dl_manager):
        raise NotImplementedError  # only ever mocked

    def _generate_examples(self):
        raise NotImplementedError


# ---- fixtures -----------------------------------------------------------------------------------------------------
def _save_run(workdir, config, variables):
    """A checkpoint of randomly initialised tokenizer variables (what ``from_checkpoint`` reads)."""
    state = {"step": np.int32(1), "params": {"model": jax.tree.map(np.asarray, variables["params"])}}
    rest = {k: jax.tree.map(np.asarray, v) for k, v in variables.items() if k != "params"}
    if rest:
        state["model_state"] = rest
    ckpt = Checkpointer(workdir, async_save=False)
    ckpt.save(1, state, {}, config)
    ckpt.wait()
    ckpt.close()


def _fake_variables(shapes, seed: int):
    """Deterministic random variables for the shapes of an ``init`` (``eval_shape``: no init compilation): norm
    scales 1, biases and integer state 0, the rest (codebooks, EMA codebooks included) N(0, 1/fan_in)."""
    rng = np.random.default_rng(seed)

    def make(path, s):
        name = str(getattr(path[-1], "key", path[-1]))
        if not np.issubdtype(s.dtype, np.floating) or name == "bias":
            return np.zeros(s.shape, s.dtype)
        if name == "scale":
            return np.ones(s.shape, s.dtype)
        return (rng.normal(size=s.shape) / np.sqrt(max(int(np.prod(s.shape[:-1])), 1))).astype(s.dtype)

    return jax.tree_util.tree_map_with_path(make, nn.unbox(shapes))


def _tiny_vqgan_config():
    c = vqgan_256.get_config()
    c.model.update(dict(image_size=16, base_channels=8, channel_multipliers=(1, 2, 2), num_res_blocks=1,
                        attn_levels=(), mid_attention=False, latent_channels=8, norm_groups=4, codebook_size=32,
                        code_dim=4))
    return c


def _tiny_codec_config():
    c = encodec_24khz.get_config()
    c.model.update(dict(num_filters=2, hidden_size=16, num_lstm_layers=1, num_levels=4, codebook_size=16))
    return c


def _write_coco_captions_metadata(data_dir: str) -> str:
    """dataset_info.json + features.json of tfds' coco_captions (config 2014), as its preparation writes them."""
    from tensorflow_datasets.core import naming
    from tensorflow_datasets.core import splits as splits_lib
    from tensorflow_datasets.object_detection import coco

    with tfds.testing.mock_data(data_dir=data_dir), \
            mock.patch.object(coco, "tf", types.SimpleNamespace(int64=np.int64)):
        builder = tfds.builder("coco_captions", data_dir=data_dir, file_format="array_record")
        info = builder.info
        info.set_splits(splits_lib.SplitDict([tfds.core.SplitInfo(
            name=s, shard_lengths=[NUM_EXAMPLES], num_bytes=0,
            filename_template=naming.ShardedFileTemplate(data_dir=builder.data_dir, dataset_name="coco_captions",
                                                         split=s, filetype_suffix="array_record"))
            for s in ("train", "val", "test", "restval")]))
        os.makedirs(builder.data_dir, exist_ok=True)
        info.write_to_directory(builder.data_dir)
        return builder.data_dir


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    import torch
    import transformers

    root = tmp_path_factory.mktemp("teal_llama")
    hf = str(root / "hf_llama")
    corpus = write_corpus(str(root / "corpus.jsonl"), num_docs=200)
    text_tok = TextTokenizer.train([corpus], 320, str(root / "spm"))
    torch.manual_seed(0)
    lm = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=text_tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, rms_norm_eps=1e-5,
        tie_word_embeddings=False))  # 2,048 positions: the config's default seq_len must fit the context
    lm.save_pretrained(hf, safe_serialization=True)
    os.replace(text_tok.path, os.path.join(hf, "tokenizer.model"))  # where a HF Llama directory keeps it

    ic, ac = _tiny_vqgan_config(), _tiny_codec_config()
    iv = _fake_variables(jax.eval_shape(VQGAN(VQGANConfig.from_config(ic.model)).init, jax.random.key(0),
                                        jnp.zeros((1, 16, 16, 3))), seed=1)
    ccfg = CodecConfig.from_config(ac.model, dtype="float32")
    av = _fake_variables(jax.eval_shape(lambda: Codec(ccfg).init(
        {"params": jax.random.key(0), "dropout": jax.random.key(1)}, jnp.zeros((1, 640, 1)), train=False)), seed=2)
    image_run, audio_run = str(root / "vqgan_run"), str(root / "encodec_run")
    _save_run(image_run, ic, iv)
    _save_run(audio_run, ac, av)

    data_dir = str(root / "tfds")
    coco_dir = _write_coco_captions_metadata(data_dir)
    return dict(root=root, hf=hf, image_run=image_run, audio_run=audio_run, image_cfg=ic, audio_cfg=ac,
                data_dir=data_dir, coco_dir=coco_dir, text_vocab=text_tok.vocab_size)


def _tiny(env, arg: str = ""):
    """The real config (``hf=`` the tiny Llama) with size overrides, the tokenizer runs and the mock data dirs."""
    c = llama_config.get_config(",".join(p for p in (arg, f"hf={env['hf']}") if p))
    ic, ac = env["image_cfg"].model, env["audio_cfg"].model
    c.model.vocab.image_codebook_size = ic.codebook_size
    c.model.vocab.audio_codebook_size, c.model.vocab.audio_num_levels = ac.codebook_size, ac.num_levels
    c.data.image_tokenizer, c.data.audio_tokenizer = env["image_run"], env["audio_run"]
    c.data.image_source.data_dir = env["data_dir"]
    c.data.audio_source.name = "librispeech_decoded"  # librispeech's layout (module docstring)
    c.data.audio_seconds = AUDIO_SECONDS
    c.data.seq_len = SEQ_LEN
    c.data.tokenize_batch = 8
    c.train.update(dict(steps=2, batch_size=8, log_every=1, eval_every=0, checkpoint_every=1,
                        async_checkpoints=False))
    return c


@pytest.fixture
def mocked_sources(env, monkeypatch):
    """The real ``open_sources`` under ``tfds.testing.mock_data`` (once per source); returns what it opened."""
    real, opened = TS.open_sources, {}

    def open_mocked(source, modality, **kwargs):
        key = (modality, TC.source_dict(source, modality)["name"])
        if key not in opened:
            with tfds.testing.mock_data(num_examples=NUM_EXAMPLES, data_dir=env["data_dir"]):
                opened[key] = real(source, modality, **kwargs)
        return opened[key]

    monkeypatch.setattr(TS, "open_sources", open_mocked)
    return opened


@pytest.fixture
def loaded_tokenizers(monkeypatch):
    """Every Image/AudioTokenizer loaded from a run, in order (the test reuses the trainer's compiled encoders)."""
    loaded = []
    for cls in (ImageTokenizer, AudioTokenizer):
        def load(klass, *args, _orig=cls.from_checkpoint.__func__, **kwargs):
            loaded.append(_orig(klass, *args, **kwargs))
            return loaded[-1]

        monkeypatch.setattr(cls, "from_checkpoint", classmethod(load))
    return loaded


def _same_tree(a, b) -> bool:
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    return ta == tb and all(np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(x, y)
                            for x, y in zip(la, lb, strict=True))


# ---- the config ---------------------------------------------------------------------------------------------------
def test_defaults_follow_the_tokenizer_configs_and_fit_the_sequence():
    c = llama_config.get_config()
    vq, codec = vqgan_256.get_config().model, encodec_24khz.get_config().model
    v = c.model.vocab
    assert (v.image_codebook_size, v.audio_codebook_size, v.audio_num_levels) == (
        vq.codebook_size, codec.codebook_size, codec.num_levels)
    assert (v.audio_scheme, v.audio_keep_levels) == ("first_levels", 2)
    assert c.model.lm.vocab_size == 32_000 and c.model.lm.num_layers == 22  # TinyLlama-1.1B
    assert c.model.stage == "frozen_stage1" and c.model.require_base_lm == "base_lm_hf"
    assert c.train.compute_dtype == "bfloat16" and tuple(c.mesh.shape) == (1, -1, 1)
    src = c.data.image_source
    assert (src.kind, src.name, src.text_key, src.label_key) == ("tfds", "coco_captions", "captions/text", "")
    src = c.data.audio_source
    assert (src.kind, src.name, src.audio_key, src.text_key, src.label_key, src.source_rate) == (
        "tfds", "librispeech", "speech", "text", "", 16000)
    # 16 x 16 image ids; 12 s x 75 Hz x 2 levels = 1,800 audio ids; + specials and a 128-token text.
    lengths = llama_config.check_fits(c)
    assert lengths == {"caption": 5 + 256 + 128, "t2i": 4 + 128 + 256, "asr": 5 + 1800 + 128, "tts": 4 + 128 + 1800}
    assert max(lengths.values()) <= c.data.seq_len + 1 <= c.model.lm.max_decode_len + 1
    s2 = llama_config.get_config("stage2")
    assert (s2.model.stage, s2.model.lm.use_bias, s2.model.require_base_lm) == ("frozen_stage2", True,
                                                                                 "base_lm_workdir")
    assert s2.optimizer.lr < c.optimizer.lr


def test_bad_input_is_a_clear_error(env, tmp_path):
    c = llama_config.get_config()
    with pytest.raises(ValueError, match=r"config\.model\.base_lm_hf is not set"):
        TO.TealObjective(c)
    with pytest.raises(ValueError, match=r"config\.model\.base_lm_workdir is not set"):
        TO.TealObjective(llama_config.get_config("stage2"))
    with pytest.raises(ValueError, match="unknown variant"):
        llama_config.get_config("stage3")
    with pytest.raises(ValueError, match="has no config.json"):
        llama_config.get_config(f"hf={tmp_path}")
    c.data.seq_len = 1024  # 12 s of audio does not fit
    with pytest.raises(ValueError, match=r"config\.data\.seq_len=1024: .*'asr': 1933"):
        llama_config.check_fits(c)
    c.data.seq_len = 4096  # longer than the LM's context
    with pytest.raises(ValueError, match=r"config\.data\.seq_len=4096 exceeds .*max_decode_len=2048"):
        llama_config.check_fits(c)
    # TinyLlama's shape against another checkpoint: named field by field.
    c = llama_config.get_config()
    c.model.base_lm_hf = env["hf"]
    with pytest.raises(ValueError, match=rf"does not match config\.model\.lm: vocab_size: base {env['text_vocab']} "
                                         r"vs config\.model\.lm 32000"):
        TO.TealObjective(c)._load_host_arrays()
    # The tiny config itself: rows too short for its own examples.
    t = _tiny(env)
    lengths = llama_config.check_fits(t, env["image_cfg"].model, env["audio_cfg"].model, text_tokens=32)
    assert lengths["asr"] == 5 + 8 * 2 + 32 and lengths["caption"] == 5 + 16 + 32
    t.data.seq_len = 16
    with pytest.raises(ValueError, match=r"config\.data\.seq_len=16"):
        llama_config.check_fits(t, env["image_cfg"].model, env["audio_cfg"].model, text_tokens=32)


# ---- data preparation + training ------------------------------------------------------------------------------------
def test_stage1_prepares_mock_coco_and_librispeech_and_keeps_the_llama_frozen(env, mocked_sources,
                                                                                loaded_tokenizers, tmp_path,
                                                                                devices):
    from teal_jax.convert.llama import import_llama
    from teal_jax.train import trainer as trainer_lib

    c = _tiny(env)
    workdir = str(tmp_path / "stage1")
    with jax.default_prng_impl("rbg"):  # the cheapest compile of the init and the step
        metrics = trainer_lib.train(c, workdir, devices=devices)
    assert np.isfinite(metrics["loss"]), metrics
    assert metrics["targets/image"] > 0 and metrics["targets/audio"] > 0 and metrics["targets/text"] > 0

    # The sources were opened by the real names, coco_captions from its files (no builder code).
    assert set(mocked_sources) == {("image", "coco_captions"), ("audio", "librispeech_decoded")}
    coco = mocked_sources[("image", "coco_captions")]
    libri = mocked_sources[("audio", "librispeech_decoded")]
    assert all(len(coco[s]) == len(libri[s]) == NUM_EXAMPLES for s in TS.SPLITS)
    assert coco["train"].dataset_info.data_dir == env["coco_dir"]  # coco_captions/2014/1.1.0: read from its files
    assert (coco["train"].split, coco["test"].split, libri["test"].split) == ("train", "val", "dev_clean")

    # Token datasets: every mock record, the tokenizers' exact codes, all captions / the transcript.
    manifests = {}
    for path in glob.glob(os.path.join(workdir, "tokens", "*.json")):
        with open(path) as f:
            m = json.load(f)
        manifests[m["modality"]] = m
    itok = next(t for t in loaded_tokenizers if isinstance(t, ImageTokenizer))
    atok = next(t for t in loaded_tokenizers if isinstance(t, AudioTokenizer))
    frames, samples = T.audio_span(AUDIO_SECONDS, 24_000, 320)
    assert manifests["image"]["code_shape"] == [16] and manifests["audio"]["code_shape"] == [frames, 4]
    assert manifests["image"]["source"]["name"] == "coco_captions"
    adapter = speech.RecordAdapter(audio_key="speech", text_key=None, label_key=None, source_rate=16_000,
                                   sample_rate=24_000)
    for m in ("image", "audio"):
        assert manifests[m]["records"] == {s: NUM_EXAMPLES for s in TS.SPLITS}
        assert manifests[m]["skipped"] == {s: 0 for s in TS.SPLITS}
    for split in TS.SPLITS:
        tokens, src = TT.token_source(manifests["image"], split), coco[split]
        images = np.zeros((8, 16, 16, 3), np.uint8)  # the tokenize_batch the config uses
        images[:NUM_EXAMPLES] = [center_crop_resize(convert_channels(src[i]["image"], 3), 16)
                                 for i in range(NUM_EXAMPLES)]
        want = np.asarray(itok.encode(images)).reshape(8, -1)[:NUM_EXAMPLES]
        assert len(np.unique(want)) > 1  # random tokenizer weights, yet not a constant code
        np.testing.assert_array_equal(np.stack([tokens[i]["codes"] for i in range(NUM_EXAMPLES)]), want)
        for i in range(NUM_EXAMPLES):
            assert tokens[i]["text"].decode().split("\n") == [str(t) for t in src[i]["captions"]["text"]]
            assert int(tokens[i]["label"]) == -1 and int(tokens[i]["index"]) == i
        tokens, src = TT.token_source(manifests["audio"], split), libri[split]
        clips = np.zeros((8, samples), np.int16)
        clips[:NUM_EXAMPLES] = [T.fit_audio(adapter.map(src[i])["audio"], samples) for i in range(NUM_EXAMPLES)]
        want = np.asarray(atok.encode(clips, 24_000)[0])[:NUM_EXAMPLES]
        assert want.shape == (NUM_EXAMPLES, frames, 4) and len(np.unique(want)) > 1
        np.testing.assert_array_equal(np.stack([tokens[i]["codes"] for i in range(NUM_EXAMPLES)]), want)
        assert [tokens[i]["text"].decode() for i in range(NUM_EXAMPLES)] == [
            str(src[i]["text"]) for i in range(NUM_EXAMPLES)]

    # The frozen Llama is bit-identical to the checkpoint after both steps; the new rows moved.
    _, hf_params = import_llama(env["hf"])
    _, p1, _ = checkpoint.load_params(workdir, 1)
    _, p2, _ = checkpoint.load_params(workdir, 2)
    assert _same_tree(p1["model"]["lm"], hf_params) and _same_tree(p2["model"]["lm"], hf_params)
    for name in ("image_embed", "audio_embed", "image_head", "audio_head"):
        assert not np.array_equal(p1["model"][name], p2["model"][name]), name

    # The stream the trainer read: packed rows of the four tasks over the unified vocabulary.
    obj = TO.TealObjective(c)
    obj.prepare(workdir)
    stream = obj.make_data("train", batch_size=8, process_index=0, process_count=1)
    batch = next(stream)
    assert batch["tokens"].shape == batch["loss_mask"].shape == (8, SEQ_LEN + 1)
    assert {d["task"] for d in stream.last_draws} <= set(T.SPAN_TASKS)
    vocab = obj.vocab
    assert (batch["modality"] == 2).any() and (batch["modality"] == 3).any()
    audio_ids = batch["tokens"][batch["modality"] == 3]
    assert audio_ids.max() < vocab.audio_offset + 2 * vocab.audio_codebook_size  # first 2 levels only

    # Stage 2 continues the run: its text tokenizer is found through it (the HF directory stage 1 named) and every
    # TEAL parameter starts from it.
    c2 = _tiny(env, "stage2")
    c2.model.base_lm_workdir = workdir
    assert c2.model.base_lm_hf is None and c2.model.lm.use_bias and c2.model.stage == "frozen_stage2"
    assert lineage.text_tokenizer(c2) == os.path.join(env["hf"], "tokenizer.model")
    obj2 = TO.TealObjective(c2)
    obj2._load_host_arrays()
    assert obj2._base[0] == "teal" and _same_tree(obj2._base[1], p2["model"])


@pytest.mark.slow  # ~1 min (a Whisper k-means fit on locally synthesised speech); CI covers the same data path at
# demo scale (tests/test_teal_data.py::test_input_tokenizers_write_the_conditions)
def test_real_config_reads_asr_conditions_through_a_whisper_kmeans_input_tokenizer(env, mocked_sources, tmp_path,
                                                                                   devices):
    """docs/semantic_tokenizers.md's real-scale recipe on a tiny random Whisper: fit its k-means tokenizer, point
    configs/teal/llama.py at it (data.audio_in_tokenizer, model.vocab.audio_in_size): the asr conditions are the
    Whisper k-means codes of the same librispeech records, the tts targets stay EnCodec codes, and training runs."""
    from _hf_encoders import save_tiny_whisper

    from configs.audio import whisper_kmeans
    from teal_jax.tokenizers import kmeans
    from teal_jax.train import kmeans_fit
    from teal_jax.train import teal_objective as TO
    from teal_jax.train import trainer as trainer_lib
    from teal_jax.vocab import AUDIO

    hf = str(tmp_path / "whisper")
    save_tiny_whisper(hf)
    kc = whisper_kmeans.get_config(f"smoke,checkpoint={hf}")
    fit = str(tmp_path / "whisper_kmeans")
    kmeans_fit.fit_from_config(kc, fit, data_dir=str(tmp_path / "speech"), log=lambda _: None)
    c = _tiny(env)
    c.data.audio_in_tokenizer = fit
    c.model.vocab.audio_in_size = int(kc.tokenizer.num_codes)
    workdir = str(tmp_path / "stage1")
    obj = TO.TealObjective(c)
    obj.prepare(workdir)
    v = obj.vocab
    assert obj._tasks["audio_in"]["records"] == obj._tasks["audio"]["records"]
    stream = obj.make_data("train", batch_size=8, process_index=0, process_count=1)
    batch = next(stream)
    lo, hi = v.input_range(AUDIO)
    tok = kmeans.from_checkpoint(fit)
    libri = mocked_sources[("audio", "librispeech_decoded")]["train"]
    adapter = speech.RecordAdapter(audio_key="speech", text_key=None, label_key=None, source_rate=16_000,
                                   sample_rate=16_000)
    _, samples = T.audio_span(AUDIO_SECONDS, tok.sample_rate, tok.config.hop_length)
    seen = 0
    for d in stream.last_draws:
        row = batch["tokens"][d["row"]][batch["segment_ids"][d["row"]] == d["segment"]]
        if d["task"] == "asr":
            clip = T.fit_audio(adapter.map(libri[d["index"]])["audio"], samples)
            want = np.asarray(tok.encode(clip[None], 16_000)[0]).reshape(-1)
            np.testing.assert_array_equal(row[(row >= lo) & (row < hi)] - lo, want)
            seen += 1
        if d["task"] == "tts":
            assert not ((row >= lo) & (row < hi)).any() and ((row >= v.audio_offset) & (row < v.output_size)).any()
    assert seen
    with jax.default_prng_impl("rbg"):
        metrics = trainer_lib.train(c, workdir, devices=devices)
    assert np.isfinite(metrics["loss"])


def test_no_tensorflow_was_imported():
    """Runs last: mocking, reading, tokenizing and training never imported TensorFlow."""
    assert "tensorflow" not in sys.modules
