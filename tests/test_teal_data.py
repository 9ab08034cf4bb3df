"""TEAL task data: pre-tokenized token datasets (exact codes, skipped long clips, idempotent), the packed task stream
(layouts/loss masks per segment, condition dropout, resume, host shards, held-out eval), config errors, generic tfds
sources through tfds.testing.mock_data, and a short trainer run on data.kind='tasks'.

The tokenizers are randomly initialised from the smoke configs and saved as checkpoints (no training), so the
objective's real path (``from_checkpoint``) is used; every code they emit is still a deterministic function of the
input, which is all the data path needs."""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from flax import linen as nn

from configs.audio import speech_tiny
from configs.image import digits_tiny
from teal_jax import lineage
from teal_jax.checkpoint import Checkpointer
from teal_jax.data import lm as lm_data
from teal_jax.data import speech
from teal_jax.data import templates as T
from teal_jax.data.teal import config as TC
from teal_jax.data.teal import sources as TS
from teal_jax.data.teal import token_dataset as TT
from teal_jax.data.teal.task_stream import TealTaskStream
from teal_jax.inference import constraints as teal_generate
from teal_jax.media.image import center_crop_resize, convert_channels
from teal_jax.models.codec import Codec, CodecConfig
from teal_jax.models.vqgan import VQGAN, VQGANConfig
from teal_jax.tokenizers.audio import AudioTokenizer
from teal_jax.tokenizers.image import ImageTokenizer
from teal_jax.tokenizers.text import TextTokenizer
from teal_jax.vocab import UnifiedVocab

SECONDS = 0.5  # 50 codec frames at 16 kHz / hop 160; many spoken-words clips are longer (skipped)
BATCH = 16  # tokenize_batch
TEXT_SIZE = 320
ALL_TASKS = {t: 1.0 for t in TC.TASKS}


# ---- fixtures -----------------------------------------------------------------------------------------------------
def _save_run(workdir, config, variables):
    """A checkpoint of randomly initialised tokenizer parameters (what from_checkpoint reads)."""
    state = {"step": np.int32(1), "params": {"model": jax.tree.map(np.asarray, variables["params"])}}
    rest = {k: jax.tree.map(np.asarray, v) for k, v in variables.items() if k != "params"}
    if rest:
        state["model_state"] = rest
    ckpt = Checkpointer(workdir, async_save=False)
    ckpt.save(1, state, {}, config)
    ckpt.wait()
    ckpt.close()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("teal_data")
    data_dir = str(root / "data")
    ic = digits_tiny.get_config("smoke")
    ic.model.image_size = ic.data.image_size = 16
    ic.model.attn_levels, ic.model.mid_attention = (), False  # fewer ops to compile; still 4x4 FSQ codes
    ic.data.data_dir = data_dir
    ac = speech_tiny.get_config("smoke")
    ac.data.data_dir = data_dir
    with jax.default_prng_impl("rbg"):  # threefry draws compile slowly on XLA:CPU
        iv = nn.unbox(jax.jit(VQGAN(VQGANConfig.from_config(ic.model)).init)(jax.random.key(0),
                                                                              jnp.zeros((1, 16, 16, 1))))
        ccfg = CodecConfig.from_config(ac.model, dtype="float32")
        codec_init = jax.jit(lambda k: Codec(ccfg).init({"params": k, "dropout": k}, jnp.zeros((1, 320, 1)),
                                                        train=False))
        av = nn.unbox(codec_init(jax.random.key(1)))
    image_run, audio_run = str(root / "image_run"), str(root / "audio_run")
    _save_run(image_run, ic, iv)
    _save_run(audio_run, ac, av)
    image_tok = ImageTokenizer.from_checkpoint(image_run)
    audio_tok = AudioTokenizer.from_checkpoint(audio_run)

    lm_cfg = lm_data.default_data_config()
    lm_cfg.num_docs, lm_cfg.vocab_size, lm_cfg.eval_fraction = 400, TEXT_SIZE, 0.05
    lm_paths = lm_data.prepare_lm_data(lm_cfg, str(root / "lm"), verbose=False)
    text_tok = TextTokenizer.load(lm_paths["tokenizer_model"])

    tokens_dir = str(root / "tokens")
    image = TT.pretokenize_images(image_tok, {"kind": "digits"}, tokens_dir, data_dir=data_dir, batch_size=BATCH)
    audio = TT.pretokenize_audio(audio_tok, {"kind": "spoken_words", "config": "tiny"}, tokens_dir, seconds=SECONDS,
                                 data_dir=data_dir, batch_size=BATCH)
    vocab = UnifiedVocab(text_size=TEXT_SIZE, image_codebook_size=image_tok.vocab_size,
                         audio_codebook_size=audio_tok.codebook_size, audio_num_levels=audio_tok.num_levels)
    return dict(root=root, data_dir=data_dir, image_run=image_run, audio_run=audio_run, image_tok=image_tok,
                audio_tok=audio_tok, lm_paths=lm_paths, text_tok=text_tok, tokens_dir=tokens_dir, image=image,
                audio=audio, vocab=vocab)


def _lm_source(env, split):
    return tfds.data_source(env["lm_paths"]["dataset"], split=split, data_dir=env["lm_paths"]["tfds_dir"])


def _stream(env, split="train", *, tasks=None, seq_len=256, batch_size=4, seed=0, p=0, n=1, dropout=0.5,
            vocab=None, loss_normalization="token"):
    token_split = "train" if split == "train" else "test"
    return TealTaskStream(
        vocab=vocab or env["vocab"], text_tokenizer=env["text_tok"], tasks=tasks or ALL_TASKS, split=split,
        batch_size=batch_size, seq_len=seq_len, seed=seed, image=TT.token_source(env["image"], token_split),
        audio=TT.token_source(env["audio"], token_split), lm_docs=_lm_source(env, "train" if split == "train" else
                                                                              "eval"),
        cond_dropout=dropout, process_index=p, process_count=n, loss_normalization=loss_normalization)


def _speech_source(env, split):
    return tfds.data_source("spoken_words/tiny", split=split, data_dir=env["data_dir"])


# ---- pre-tokenization ---------------------------------------------------------------------------------------------
def test_image_tokens_are_the_tokenizers_codes_of_every_digit(env):
    tok, man = env["image_tok"], env["image"]
    for split in TS.SPLITS:
        src = tfds.data_source("digits_images/16px", split=split, data_dir=env["data_dir"])
        tokens = TT.token_source(man, split)
        assert len(tokens) == len(src) == man["records"][split] and man["skipped"][split] == 0
        want = np.asarray(tok.encode(np.stack([src[i]["image"] for i in range(BATCH)]))).reshape(BATCH, -1)
        got = np.stack([tokens[i]["codes"] for i in range(BATCH)])
        assert got.dtype == np.int32 and got.shape == (BATCH, 16)
        np.testing.assert_array_equal(got, want)
        for i in range(0, len(src), 37):
            r = tokens[i]
            assert int(r["index"]) == i and int(r["label"]) == int(src[i]["label"])
            assert r["text"].decode() == T.DIGITS[int(src[i]["label"])]
    assert 1 < len(np.unique(got)) and got.max() < tok.vocab_size


def test_augmented_image_copies_are_jittered_train_records_with_their_originals_labels(env, tmp_path):
    """augment_copies=2: train holds every image then two jittered copies (same label/text/index, mostly other
    codes), the held-out split none; the copies are a pure function of the record, and the count is in the name."""
    from teal_jax.data.image_pipeline import random_affine

    src = {s: tfds.data_source("digits_images/16px", split=s, data_dir=env["data_dir"]) for s in TS.SPLITS}
    sources = {s: [src[s][i] for i in range(8)] for s in TS.SPLITS}
    tok = env["image_tok"]
    build = lambda copies, d: TT.pretokenize_images(  # noqa: E731
        tok, {"kind": "digits", "augment_copies": copies}, str(tmp_path / d), sources=sources, batch_size=BATCH,
        verbose=False)
    plain, aug, again = build(0, "a"), build(2, "b"), build(2, "c")
    assert plain["dataset"] != aug["dataset"] == again["dataset"]
    assert aug["records"] == {"train": 24, "test": 8} and plain["records"] == {"train": 8, "test": 8}
    base = TT.token_source(plain, "train")
    by_index = {}
    for r in TT.token_source(aug, "train"):
        by_index.setdefault(int(r["index"]), []).append(r)
    assert sorted(by_index) == list(range(8)) and all(len(v) == 3 for v in by_index.values())
    changed = 0
    for i, recs in by_index.items():
        orig = base[i]
        assert all(int(r["label"]) == int(orig["label"]) and r["text"] == orig["text"] for r in recs)
        codes = [tuple(np.asarray(r["codes"]).tolist()) for r in recs]
        assert tuple(np.asarray(orig["codes"]).tolist()) in codes  # the original is kept
        changed += len(set(codes)) - 1
    assert changed >= 8  # most jittered copies tokenize differently
    b = [tuple(np.asarray(r["codes"]).tolist()) for r in TT.token_source(aug, "train")]
    c = [tuple(np.asarray(r["codes"]).tolist()) for r in TT.token_source(again, "train")]
    assert sorted(b) == sorted(c)  # deterministic
    held = [tuple(np.asarray(r["codes"]).tolist()) for r in TT.token_source(aug, "test")]
    assert sorted(held) == sorted(tuple(np.asarray(r["codes"]).tolist()) for r in TT.token_source(plain, "test"))
    # the jitter itself: a shifted/rotated copy of the same size, equal for the same generator state
    img = np.asarray(src["train"][0]["image"])
    a1, a2 = (random_affine(img, np.random.default_rng(3)) for _ in range(2))
    assert a1.shape == img.shape and a1.dtype == np.uint8 and np.array_equal(a1, a2) and not np.array_equal(a1, img)
    with pytest.raises(ValueError, match="augment_copies"):
        build(-1, "d")


def test_audio_tokens_are_the_codecs_codes_of_fixed_spans_and_long_clips_are_skipped(env, capsys):
    tok, man = env["audio_tok"], env["audio"]
    frames, samples = T.audio_span(SECONDS, tok.sample_rate, tok.config.hop_length)
    assert man["code_shape"] == [frames, tok.num_levels] and man["span"]["frames"] == frames
    for split in TS.SPLITS:
        src, tokens = _speech_source(env, split), TT.token_source(man, split)
        kept = [i for i in range(len(src)) if len(src[i]["audio"]) <= samples]
        assert 0 < len(kept) < len(src)  # some clips are longer than the span
        assert man["skipped"][split] == len(src) - len(kept) and man["records"][split] == len(kept) == len(tokens)
        assert [int(tokens[j]["index"]) for j in range(len(tokens))] == kept
        for j in range(0, len(kept), 5):
            r, s = tokens[j], src[kept[j]]
            assert r["text"] == s["text"] and int(r["label"]) == int(s["label"])
        clips = np.stack([T.fit_audio(src[i]["audio"], samples) for i in kept[:BATCH]])
        want, _ = tok.encode(clips, tok.sample_rate)
        got = np.stack([tokens[j]["codes"] for j in range(BATCH)])
        assert got.shape == (BATCH, frames, tok.num_levels)
        np.testing.assert_array_equal(got, np.asarray(want))


def test_pretokenization_is_idempotent_and_keyed_by_its_inputs(env, capsys):
    files = lambda: {os.path.join(r, f): os.path.getmtime(os.path.join(r, f))  # noqa: E731
                     for r, _, fs in os.walk(env["tokens_dir"]) for f in fs}
    before = files()
    again = TT.pretokenize_images(env["image_tok"], {"kind": "digits"}, env["tokens_dir"], data_dir=env["data_dir"],
                                  batch_size=BATCH)
    assert again == env["image"]
    assert "records" not in capsys.readouterr().out  # nothing was built
    assert files() == before
    # Another source (here: a subset of the records) is another dataset, built beside the first one.
    digits = {s: tfds.data_source("digits_images/16px", split=s, data_dir=env["data_dir"]) for s in TS.SPLITS}
    subset = {s: [digits[s][i] for i in range(20)] for s in TS.SPLITS}
    small = TT.pretokenize_images(env["image_tok"], {"kind": "digits"}, env["tokens_dir"], sources=subset,
                                  batch_size=BATCH)
    assert small["dataset"] != env["image"]["dataset"] and small["records"] == {"train": 20, "test": 20}
    assert all(before[f] == t for f, t in files().items() if f in before)  # the first dataset is untouched
    big, sub = TT.token_source(env["image"], "test"), TT.token_source(small, "test")
    np.testing.assert_array_equal(np.stack([sub[i]["codes"] for i in range(20)]),
                                  np.stack([big[i]["codes"] for i in range(20)]))
    # Another tokenizer (one parameter changed) has another fingerprint, hence another dataset name.
    tok = env["image_tok"]
    params = jax.tree.map(np.array, tok.variables["params"])  # copies
    leaf = jax.tree_util.tree_leaves(params)[0]
    leaf.reshape(-1)[0] += 1.0
    changed = ImageTokenizer(tok.config, params)
    assert TT.tokenizer_fingerprint(changed) != TT.tokenizer_fingerprint(tok)
    assert TT.tokenizer_fingerprint(ImageTokenizer(tok.config, tok.variables["params"])) == \
        TT.tokenizer_fingerprint(tok)


# ---- the task stream ------------------------------------------------------------------------------------------------
def _segments(batch, b):
    """[(segment id, tokens, mask, positions)] of row b; asserts ids are 1, 2, ... then padding."""
    seg = batch["segment_ids"][b]
    ids = [s for s in np.unique(seg) if s > 0]
    assert ids == list(range(1, len(ids) + 1))
    n = int((seg > 0).sum())
    assert np.all(seg[:n] > 0) and np.all(seg[n:] == 0) and np.all(batch["tokens"][b, n:] == 0)
    assert np.all(batch["loss_mask"][b, n:] == 0)
    out = []
    for s in ids:
        sel = np.nonzero(seg == s)[0]
        assert np.all(np.diff(sel) == 1)  # contiguous
        np.testing.assert_array_equal(batch["positions"][b, sel], np.arange(len(sel)))
        out.append((s, batch["tokens"][b, sel].tolist(), batch["loss_mask"][b, sel].tolist()))
    return out


def _parse(v, tok, toks, mask, hw, alen):
    """Independent statement of the layouts: (task, condition span ids, target span ids); asserts the loss mask is
    1 exactly on the target."""
    is_text = lambda i: 0 <= i < v.text_size  # noqa: E731
    is_img = lambda i: v.image_offset <= i < v.audio_offset  # noqa: E731
    is_aud = lambda i: v.audio_offset <= i < v.used_size  # noqa: E731
    marker = {v.special_id(f"<task:{t}>"): t for t in ("caption", "t2i", "asr", "tts")}
    if toks[0] == v.null:
        task = {v.boi: "t2i", v.boa: "tts"}[toks[1]]
        cond_end, cond = 2, None
    else:
        assert toks[0] == tok.bos_id
        task = marker.get(toks[1], "lm")
        if task == "lm":
            cond_end, cond = 1, None
        elif task in ("caption", "asr"):
            opener, closer, n, ok = ((v.boi, v.eoi, hw, is_img) if task == "caption" else (v.boa, v.eoa, alen, is_aud))
            assert toks[2] == opener and toks[3 + n] == closer and all(ok(i) for i in toks[3:3 + n])
            cond_end, cond = 4 + n, toks[3:3 + n]
        else:
            opener = v.boi if task == "t2i" else v.boa
            k = toks.index(opener)
            assert all(is_text(i) for i in toks[2:k])
            cond_end, cond = k + 1, toks[2:k]
    assert mask == [0.0] * cond_end + [1.0] * (len(toks) - cond_end)
    tgt = toks[cond_end:]
    if task in ("caption", "asr", "lm"):
        assert all(is_text(i) for i in tgt)
        assert tgt[-1] == tok.eos_id or task == "lm" and tok.eos_id not in tgt  # lm: cut documents have no eos
        tgt = tgt[:-1] if tgt[-1] == tok.eos_id else tgt
    elif task == "t2i":
        assert len(tgt) == hw + 1 and tgt[-1] == v.eoi and all(is_img(i) for i in tgt[:-1])
        tgt = tgt[:-1]
    else:
        assert len(tgt) == alen + 1 and tgt[-1] == v.eoa and all(is_aud(i) for i in tgt[:-1])
        tgt = tgt[:-1]
    return task, cond, tgt


def _check_batches(env, stream, batches, token_split, pairs, lm_split):
    v, tok = stream.vocab, env["text_tok"]
    img_src, aud_src = TT.token_source(env["image"], token_split), TT.token_source(env["audio"], token_split)
    lm_src = _lm_source(env, lm_split)
    hw, alen = 16, env["audio"]["code_shape"][0] * v.audio_levels_used
    seen = set()
    for batch, draws in batches:
        assert all(batch[k].shape == (stream.batch_size, stream.row) for k in batch)
        np.testing.assert_array_equal(batch["modality"], v.modality_of(batch["tokens"]))
        by_seg = {(d["row"], d["segment"]): d for d in draws}
        for b in range(stream.batch_size):
            segs = _segments(batch, b)
            assert segs, "every row holds at least one example"
            for s, toks, mask in segs:
                d = by_seg.pop((b, s))
                task, cond, tgt = _parse(v, tok, toks, mask, hw, alen)
                seen.add(d["task"])
                if d["dropped"]:
                    seen.add(d["task"] + "/dropped")
                assert task == T.layout(d["task"])
                assert (toks[0] == v.null) == d["dropped"]
                if d["task"] == "lm":
                    doc = tok.encode(lm_src[d["index"]]["text"].decode())
                    assert tgt == doc[: len(tgt)] and (len(tgt) == len(doc) or len(toks) == stream.row)
                    continue
                m = "image" if d["task"] in TC.IMAGE_TASKS else "audio"
                rec = (img_src if m == "image" else aud_src)[d["index"]]
                span = (v.image_to_unified(rec["codes"].reshape(1, -1)) if m == "image"
                        else v.audio_to_unified(rec["codes"])).tolist()
                assert (cond if task in ("caption", "asr") else tgt) == span
                text = tgt if task in ("caption", "asr") else cond
                if d["dropped"]:  # <null> + opener: the sampler's unconditional prompt, then the target
                    prompt = stream.templates.prompt(task, [5])
                    assert toks == teal_generate.null_prompt(v, prompt) + span + [toks[-1]]
                elif d["task"].startswith("reason_"):
                    a, b_ = d["pair"]
                    assert (a, b_) in pairs and int(rec["label"]) == a + b_
                    assert tok.decode(text) == T.sum_question(a, b_, m)
                else:
                    assert tok.decode(text) in rec["text"].decode().split("\n")
        assert not by_seg, "every draw is a segment"
    return seen


def test_train_rows_pack_whole_examples_with_loss_on_targets_only(env):
    stream = _stream(env, "train", dropout=0.5)
    batches = []
    for _ in range(6):
        batch = next(stream)
        batches.append((batch, stream.last_draws))
    seen = _check_batches(env, stream, batches, "train", T.REASONING_TRAIN_PAIRS, "train")
    assert set(TC.TASKS) <= seen  # every task appears
    assert {"t2i/dropped", "tts/dropped"} & seen  # condition dropout happens on the train split
    mask = np.concatenate([b["loss_mask"] for b, _ in batches])
    assert 0 < mask.mean() < 1


def test_example_loss_normalization_weighs_every_example_the_same(env):
    """'example': every example's target weights sum to 1 (whatever its target length), zero elsewhere; the rows
    themselves are those of 'token' (same seed: same draws)."""
    by_token, by_example = _stream(env, "train"), _stream(env, "train", loss_normalization="example")
    for _ in range(3):
        a, b = next(by_token), next(by_example)
        assert "loss_weight" not in a
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        w, mask, seg = b["loss_weight"], b["loss_mask"], b["segment_ids"]
        assert np.all(w[mask == 0] == 0) and np.all(w[mask > 0] > 0)
        lengths = set()
        for row in range(w.shape[0]):
            for s in set(seg[row][seg[row] > 0].tolist()):
                sel = seg[row] == s
                np.testing.assert_allclose(w[row][sel].sum(), 1.0, rtol=1e-6)
                lengths.add(int(mask[row][sel].sum()))
        assert max(lengths) >= 4 * min(lengths), lengths  # short text answers and long image/audio spans alike
    with pytest.raises(ValueError, match="loss_normalization"):
        _stream(env, "train", loss_normalization="sample")


def test_eval_draws_only_held_out_records_and_eval_pairs(env):
    stream = _stream(env, "eval", dropout=0.5)
    batches = [(next(stream), stream.last_draws) for _ in range(4)]
    seen = _check_batches(env, stream, batches, "test", T.REASONING_EVAL_PAIRS, "eval")
    assert {"reason_t2i", "reason_tts", "caption", "asr"} <= seen
    assert not any(s.endswith("/dropped") for s in seen)  # no condition dropout in evaluation
    n_test = {m: env[m]["records"]["test"] for m in ("image", "audio")}
    for m in ("image", "audio"):
        np.testing.assert_array_equal(stream.records[m].indices, np.arange(n_test[m]))


def test_resume_is_exact_and_batches_are_a_function_of_seed_host_and_index(env):
    a = _stream(env, seed=3)
    first = next(a)
    next(a)
    state = a.get_state()
    want = [next(a) for _ in range(2)]
    b = _stream(env, seed=3)
    b.set_state(state)
    for w in want:
        got = next(b)
        for k in w:
            np.testing.assert_array_equal(got[k], w[k])
    np.testing.assert_array_equal(next(_stream(env, seed=3))["tokens"], first["tokens"])
    assert not np.array_equal(next(_stream(env, seed=4))["tokens"], first["tokens"])
    assert not np.array_equal(next(_stream(env, seed=3, p=1, n=2))["tokens"], first["tokens"])


def test_host_shards_are_disjoint_and_hosts_draw_only_their_records(env):
    hosts = [_stream(env, p=p, n=2) for p in range(2)]
    for m in ("image", "audio"):
        a, b = (set(h.records[m].indices.tolist()) for h in hosts)
        assert not a & b and a | b == set(range(env[m]["records"]["train"]))
    la, lb = (set(h.lm_indices.tolist()) for h in hosts)
    assert not la & lb and la | lb == set(range(len(_lm_source(env, "train"))))
    for h in hosts:
        for _ in range(2):
            next(h)
            for d in h.last_draws:
                m = "image" if d["task"] in TC.IMAGE_TASKS else "audio" if d["task"] in TC.AUDIO_TASKS else None
                allowed = h.lm_indices if m is None else h.records[m].indices
                assert d["index"] in set(allowed.tolist())


def test_task_weights_and_first_levels_scheme(env):
    v = UnifiedVocab(text_size=TEXT_SIZE, image_codebook_size=env["image_tok"].vocab_size,
                     audio_codebook_size=env["audio_tok"].codebook_size, audio_num_levels=env["audio_tok"].num_levels,
                     audio_scheme="first_levels", audio_keep_levels=1)
    stream = _stream(env, tasks={"tts": 3.0, "asr": 1.0, "t2i": 0.0}, seq_len=80, vocab=v, batch_size=8)
    batches = [(next(stream), stream.last_draws) for _ in range(3)]
    _check_batches(env, stream, batches, "train", (), "train")
    tasks = [d["task"] for _, draws in batches for d in draws]
    assert set(tasks) == {"tts", "asr"} and tasks.count("tts") > tasks.count("asr")


# ---- errors --------------------------------------------------------------------------------------------------------
def test_an_example_longer_than_a_row_is_a_clear_error(env):
    with pytest.raises(ValueError, match=r"a (asr|tts|reason_tts) example needs \d+ tokens.*config.data.seq_len=120"):
        _stream(env, seq_len=120)
    with pytest.raises(ValueError, match="unknown tasks"):
        _stream(env, tasks={"translate": 1.0})
    with pytest.raises(ValueError, match="needs audio token records"):
        TealTaskStream(vocab=env["vocab"], text_tokenizer=env["text_tok"], tasks={"asr": 1.0}, split="train",
                          batch_size=2, seq_len=256, seed=0)
    with pytest.raises(ValueError, match="text tokenizer .* has \\d+ pieces but .* has 64"):
        _stream(env, vocab=UnifiedVocab(text_size=64, image_codebook_size=200, audio_codebook_size=64,
                                        audio_num_levels=4))


def _task_config(env, **data):
    from teal_jax.train import teal_objective as TO

    fields = dict(text_tokenizer=env["lm_paths"]["tokenizer_model"], lm_data_dir=env["lm_paths"]["data_dir"],
                  tokens_dir=env["tokens_dir"], audio_source=dict(config="tiny"), audio_seconds=SECONDS,
                  tokenize_batch=BATCH)
    c = TO.teal_task_config(image_tokenizer=env["image_run"], audio_tokenizer=env["audio_run"], **{**fields, **data})
    c.model.lm.vocab_size = TEXT_SIZE
    return c


def test_vocab_tokenizer_mismatch_and_missing_tokenizer_are_clear_errors(env, tmp_path):
    from teal_jax.train import teal_objective as TO

    c = _task_config(env)
    assert c.model.vocab.image_codebook_size == 200 and c.model.vocab.audio_codebook_size == 64
    assert c.model.vocab.audio_num_levels == 4
    c.model.vocab.image_codebook_size = 256
    with pytest.raises(ValueError, match=r"image_codebook_size=256 but the image tokenizer at .* has 200 codes"):
        TO.TealObjective(c).prepare(str(tmp_path))
    c = _task_config(env)
    c.model.vocab.audio_num_levels = 2
    with pytest.raises(ValueError, match=r"audio_num_levels=2 but the audio tokenizer .* emits 4 levels"):
        TO.TealObjective(c).prepare(str(tmp_path))
    c = _task_config(env)
    c.data.image_tokenizer = str(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"config.data.image_tokenizer=.*nowhere.*no such directory"):
        TO.TealObjective(c).prepare(str(tmp_path))
    c.data.image_tokenizer = env["audio_run"]
    with pytest.raises(ValueError, match="objective 'audio_codec', expected 'image_vq'"):
        TO.TealObjective(c).prepare(str(tmp_path))
    (tmp_path / "empty").mkdir()
    c.data.image_tokenizer = str(tmp_path / "empty")
    with pytest.raises(ValueError, match=r"config.data.image_tokenizer=.*empty.*no checkpoint"):
        TO.TealObjective(c).prepare(str(tmp_path))
    c = _task_config(env)
    c.data.text_tokenizer = ""
    with pytest.raises(FileNotFoundError, match="no text tokenizer: config.data.text_tokenizer is ''"):
        TO.TealObjective(c).prepare(str(tmp_path))
    with pytest.raises(ValueError, match="unknown data field"):
        TO.teal_task_config(tokenz_dir="x")
    c = _task_config(env)
    c.data.image_tokenizr = "x"
    with pytest.raises(ValueError, match=r"config.data.image_tokenizr .* did you mean config.data.image_tokenizer"):
        TO.TealObjective(c)
    c = _task_config(env)
    c.data.image_source.imagekey = "picture"
    with pytest.raises(ValueError, match=r"config.data.image_source has unknown fields \['imagekey'\]"):
        TO.TealObjective(c)
    c = _task_config(env, tasks=dict(captions=1.0))
    with pytest.raises(ValueError, match=r"unknown tasks \['captions'\]"):
        TO.TealObjective(c)
    c = _task_config(env, seq_len=60)
    with pytest.raises(ValueError, match=r"example needs \d+ tokens .*config.data.seq_len=60"):
        TO.TealObjective(c).make_data("train", batch_size=2, process_index=0, process_count=1)


def test_text_tokenizer_and_documents_are_found_through_the_base_lm(env, tmp_path):
    """data.text_tokenizer / lm_data_dir '' = those of model.base_lm_workdir (its saved config names the data dir)."""
    from teal_jax.config import base_config

    lm_run = str(tmp_path / "lm_run")
    cfg = base_config()
    cfg.data = lm_data.default_data_config()
    cfg.data.data_dir = env["lm_paths"]["data_dir"]
    ckpt = Checkpointer(lm_run, async_save=False)
    ckpt.save(1, {"step": np.int32(1), "params": {"model": {"w": np.zeros(2, np.float32)}}}, {}, cfg)
    ckpt.wait()
    ckpt.close()
    c = _task_config(env, text_tokenizer="", lm_data_dir="")
    c.model.base_lm_workdir = lm_run
    assert lineage.text_tokenizer(c) == os.path.abspath(env["lm_paths"]["tokenizer_model"])
    assert lineage.lm_data(c) == {"dataset": env["lm_paths"]["dataset"], "tfds_dir": env["lm_paths"]["tfds_dir"]}
    c.model.base_lm_workdir = None
    assert lineage.lm_data(c) is None
    c.data.lm_data_dir = str(tmp_path)
    with pytest.raises(FileNotFoundError, match="has no lm_data.json"):
        lineage.lm_data(c)


# ---- generic tfds sources (tfds.testing.mock_data) -------------------------------------------------------------------
class CocoLike(tfds.core.GeneratorBasedBuilder):
    """coco_captions-shaped features: RGB images of any size, several captions each."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "captions": tfds.features.Sequence({"id": np.int64, "text": tfds.features.Text()}),
        }))

    def _split_generators(self, dl_manager):
        raise NotImplementedError  # only ever mocked

    def _generate_examples(self):
        raise NotImplementedError


class LibriLike(tfds.core.GeneratorBasedBuilder):
    """librispeech-shaped decoded records: int64 PCM ``speech`` + ``text`` (tfds' Audio feature needs TensorFlow)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "speech": tfds.features.Tensor(shape=(None,), dtype=np.int64),
            "text": tfds.features.Text(),
            "speaker_id": np.int64,
        }))

    def _split_generators(self, dl_manager):
        raise NotImplementedError

    def _generate_examples(self):
        raise NotImplementedError


def test_generic_tfds_sources_through_mock_data(env, tmp_path):
    coco = {"kind": "tfds", "name": "coco_like", "data_dir": str(tmp_path), "text_key": "captions/text",
            "label_key": "", "eval_split": "val"}
    libri = {"kind": "tfds", "name": "libri_like", "data_dir": str(tmp_path), "audio_key": "speech",
             "text_key": "text", "label_key": "", "eval_split": "test_clean", "source_rate": 16000}
    with tfds.testing.mock_data(num_examples=5):
        img_src = TS.open_sources(coco, "image")
        aud_src = TS.open_sources(libri, "audio")
    tok, atok = env["image_tok"], env["audio_tok"]
    tokens_dir = str(tmp_path / "tokens")
    man = TT.pretokenize_images(tok, coco, tokens_dir, sources=img_src, batch_size=BATCH)
    aman = TT.pretokenize_audio(atok, libri, tokens_dir, seconds=SECONDS, sources=aud_src, batch_size=BATCH)
    frames, samples = T.audio_span(SECONDS, atok.sample_rate, atok.config.hop_length)
    for split in TS.SPLITS:
        tokens, src = TT.token_source(man, split), img_src[split]
        assert len(tokens) == len(src) == 5
        imgs = np.stack([center_crop_resize(convert_channels(src[i]["image"], 1), 16) for i in range(5)])
        want = np.asarray(tok.encode(np.concatenate([imgs, np.zeros((BATCH - 5, 16, 16, 1), np.uint8)])))[:5]
        np.testing.assert_array_equal(np.stack([tokens[i]["codes"] for i in range(5)]), want.reshape(5, -1))
        for i in range(5):
            caps = [str(c) for c in src[i]["captions"]["text"]]
            assert tokens[i]["text"].decode().split("\n") == caps and int(tokens[i]["label"]) == -1
        atokens, asrc = TT.token_source(aman, split), aud_src[split]
        assert len(atokens) + aman["skipped"][split] == 5
        clips = [speech.RecordAdapter(audio_key="speech", label_key=None).map(asrc[int(atokens[j]["index"])])["audio"]
                 for j in range(len(atokens))]
        batch = np.zeros((BATCH, samples), np.int16)
        batch[: len(clips)] = np.stack([T.fit_audio(c, samples) for c in clips])
        want = np.asarray(atok.encode(batch, atok.sample_rate)[0])[: len(clips)]
        np.testing.assert_array_equal(np.stack([atokens[j]["codes"] for j in range(len(atokens))]), want)
        assert [atokens[j]["text"].decode() for j in range(len(atokens))] == [
            str(asrc[int(atokens[j]["index"])]["text"]) for j in range(len(atokens))]
    # Unlabelled sources feed caption/t2i/asr/tts; reasoning needs labels and says so.
    kw = dict(vocab=env["vocab"], text_tokenizer=env["text_tok"], split="train", batch_size=2, seq_len=256, seed=0,
              image=TT.token_source(man, "train"), audio=TT.token_source(aman, "train"))
    stream = TealTaskStream(tasks={"caption": 1.0, "t2i": 1.0, "asr": 1.0, "tts": 1.0}, **kw)
    next(stream)
    assert {d["task"] for d in stream.last_draws} <= set(T.SPAN_TASKS)
    with pytest.raises(ValueError, match="reason_t2i.*no labelled image record"):
        TealTaskStream(tasks={"reason_t2i": 1.0}, **kw)


def test_generic_tfds_kind_over_prepared_files_gives_the_builtin_sources_codes(env, tmp_path):
    """kind='tfds' reads a prepared dataset from its files (no builder code) and yields the same records."""
    generic = {"kind": "tfds", "name": "spoken_words/tiny", "data_dir": env["data_dir"], "audio_key": "audio",
               "text_key": "text", "label_key": "label"}
    man = TT.pretokenize_audio(env["audio_tok"], generic, str(tmp_path), seconds=SECONDS, batch_size=BATCH)
    assert man["dataset"] != env["audio"]["dataset"]  # another source description, another dataset
    assert man["records"] == env["audio"]["records"] and man["skipped"] == env["audio"]["skipped"]
    for split in TS.SPLITS:
        a, b = TT.token_source(man, split), TT.token_source(env["audio"], split)
        for j in range(len(a)):
            np.testing.assert_array_equal(a[j]["codes"], b[j]["codes"])
            assert (a[j]["text"], int(a[j]["label"]), int(a[j]["index"])) == (b[j]["text"], int(b[j]["label"]),
                                                                              int(b[j]["index"]))
    with pytest.raises(ValueError, match="cannot open tfds dataset 'spoken_words/tiny' split 'validation'"):
        TS.open_sources({**generic, "eval_split": "validation"}, "audio")


# ---- through the trainer -------------------------------------------------------------------------------------------
def test_trainer_runs_on_task_data_and_reuses_the_token_datasets(env, tmp_path, devices):
    from teal_jax.train import teal_objective as TO
    from teal_jax.train import trainer as trainer_lib

    c = _task_config(env, seq_len=80, tasks=dict(reason_t2i=0.5, reason_tts=0.5, lm=0.5))
    c.model.vocab.audio_scheme, c.model.vocab.audio_keep_levels = "first_levels", 1  # 50 ids per clip
    c.train.steps, c.train.batch_size, c.train.log_every = 3, 8, 1
    c.train.eval_every, c.train.checkpoint_every, c.train.async_checkpoints = 0, 1000, False
    manifests = [os.path.join(env["tokens_dir"], f) for f in os.listdir(env["tokens_dir"]) if f.endswith(".json")]
    stamps = {f: os.path.getmtime(f) for f in manifests}
    with jax.default_prng_impl("rbg"):  # one device and rbg keys: the cheapest compile of the step and the init
        metrics = trainer_lib.train(c, str(tmp_path / "teal"), devices=jax.devices()[:1])
    assert np.isfinite(metrics["loss"]) and metrics["targets/image"] > 0 and metrics["targets/audio"] > 0
    assert {f: os.path.getmtime(f) for f in manifests} == stamps  # same tokenizers + sources: nothing rebuilt
    obj = TO.TealObjective(c)
    obj.prepare(str(tmp_path / "teal"))
    assert obj._tasks["image"]["dataset"] == env["image"]["dataset"]
    assert obj._tasks["audio"]["dataset"] == env["audio"]["dataset"]
    ev = obj.make_data("eval", batch_size=4, process_index=0, process_count=1)
    batch = next(ev)
    assert batch["tokens"].shape == (4, 81) and ev.split == "eval"
    next(ev)
    again = obj.make_data("eval", batch_size=4, process_index=0, process_count=1)  # every evaluation: batch 0 on
    np.testing.assert_array_equal(next(again)["tokens"], batch["tokens"])
    test_idx = set(range(env["image"]["records"]["test"]))
    assert all(d["index"] in test_idx for d in ev.last_draws if d["task"] in TC.IMAGE_TASKS)


@pytest.fixture(scope="module")
def input_runs(env):
    """Fitted smoke k-means input tokenizers over the env's data: MFCC frames (8 codes) and the image tokenizer's
    encoder latents (8 codes)."""
    from configs.audio import speech_kmeans
    from configs.image import digits_kmeans
    from teal_jax.train import kmeans_fit

    runs = {}
    for m, c in (("audio", speech_kmeans.get_config("smoke")),
                 ("image", digits_kmeans.get_config(f"smoke,checkpoint={env['image_run']}"))):
        runs[m] = str(env["root"] / f"{m}_kmeans")
        kmeans_fit.fit_from_config(c, runs[m], data_dir=env["data_dir"], log=lambda _: None)
    return runs


def _input_config(env, input_runs, features: bool):
    from teal_jax.tokenizers import kmeans

    c = _task_config(env, seq_len=80, tasks=dict(caption=1.0, asr=1.0, t2i=0.0, tts=0.0, lm=0.0, reason_t2i=0.0,
                                                 reason_tts=0.0),
                     image_in_tokenizer=input_runs["image"], audio_in_tokenizer=input_runs["audio"],
                     image_in_features=features, audio_in_features=features)
    c.model.vocab.audio_scheme, c.model.vocab.audio_keep_levels = "first_levels", 1
    image, audio = kmeans.from_checkpoint(input_runs["image"]), kmeans.from_checkpoint(input_runs["audio"])
    if features:  # span positions: 4 x 4 latent cells, 25 MFCC frames (hop 320) per 0.5 s
        c.model.vocab.image_in_size = int(np.prod(image.token_grid))
        c.model.vocab.audio_in_size = int(SECONDS * audio.frame_rate)
        c.model.image_in_dim, c.model.audio_in_dim = image.feature_dim, audio.feature_dim
    else:
        c.model.vocab.image_in_size, c.model.vocab.audio_in_size = image.vocab_size, audio.vocab_size
    return c


@pytest.mark.parametrize("features", [False, True])
def test_input_tokenizers_write_the_conditions(env, input_runs, tmp_path, features):
    """data.{image,audio}_in_tokenizer (a kmeans_tokenizer run): the same records pre-tokenized by the input
    tokenizer write every caption / asr condition (ids of the input-only ranges, never the output codes); with
    *_in_features the batch carries the encoder's features at exactly those ids."""
    from teal_jax.tokenizers import kmeans
    from teal_jax.train import teal_objective as TO
    from teal_jax.vocab import AUDIO, IMAGE

    c = _input_config(env, input_runs, features)
    obj = TO.TealObjective(c)
    obj.prepare(str(tmp_path / "teal"))
    v = obj.vocab
    stream = obj.make_data("train", batch_size=4, process_index=0, process_count=1)
    batch = next(stream)
    toks = batch["tokens"]
    out_codes = (toks >= v.image_offset) & (toks < v.output_size)
    assert not out_codes.any()  # caption / asr only: every image/audio id is an input id
    for m, modality in (("image", IMAGE), ("audio", AUDIO)):
        lo, hi = v.input_range(modality)
        inside = (toks >= lo) & (toks < hi)
        assert inside.any() and not batch["loss_mask"][inside].any()
        assert (batch["modality"][inside] == modality).all()
        if not features:
            assert f"features_{m}" not in batch
            continue
        feats = batch[f"features_{m}"]
        assert feats.shape == toks.shape + (getattr(c.model, f"{m}_in_dim"),)
        assert not feats[~inside].any() and np.abs(feats[inside]).sum(-1).min() > 0
    # the stored conditions are the input tokenizer's own output on the same record
    d = next(d for d in stream.last_draws if d["task"] == "caption")
    img = TS.open_sources({"kind": "digits"}, "image", data_dir=env["data_dir"], image_size=16)["train"][d["index"]]
    x = center_crop_resize(convert_channels(np.asarray(img["image"]), 1), 16)[None]
    tok = kmeans.from_checkpoint(input_runs["image"])
    seg = (batch["segment_ids"][d["row"]] == d["segment"])
    row_ids = toks[d["row"]][seg]
    lo, hi = v.input_range(IMAGE)
    if features:
        np.testing.assert_array_equal(row_ids[(row_ids >= lo) & (row_ids < hi)] - lo, np.arange(16))
        got = batch["features_image"][d["row"]][seg][(row_ids >= lo) & (row_ids < hi)]
        np.testing.assert_allclose(got, np.asarray(tok.encode_features(x))[0], rtol=1e-5, atol=1e-5)
    else:
        np.testing.assert_array_equal(row_ids[(row_ids >= lo) & (row_ids < hi)] - lo,
                                      np.asarray(tok.encode(x)).reshape(-1))


def test_continuous_inputs_train_and_caption(env, input_runs, tmp_path, devices):
    """The continuous-feature baseline end to end: two trainer steps (finite loss: input ids are masked targets
    with -inf logits), then teal_jax.load -> caption / transcribe through the input tokenizer, whose features reach
    the sampler's prefill (greedy captions equal the argmax of a full forward with the features)."""
    import teal_jax
    from teal_jax.train import trainer as trainer_lib

    c = _input_config(env, input_runs, True)
    c.train.steps, c.train.batch_size, c.train.log_every = 2, 8, 1
    c.train.eval_every, c.train.checkpoint_every, c.train.async_checkpoints = 0, 1000, False
    run = str(tmp_path / "teal")
    with jax.default_prng_impl("rbg"):
        metrics = trainer_lib.train(c, run, devices=jax.devices()[:1])
    assert np.isfinite(metrics["loss"])
    model = teal_jax.load(run)
    assert set(model.in_tokenizers) == {"image", "audio"}
    images = TS.open_sources({"kind": "digits"}, "image", data_dir=env["data_dir"], image_size=16)["test"]
    x = np.stack([center_crop_resize(convert_channels(np.asarray(images[i]["image"]), 1), 16) for i in range(3)])
    captions = model.caption(x, max_new_tokens=1)
    ids, feats = model.condition_ids("image", x)
    prompts, prefill = model.condition_prompts("caption", ids, feats)
    logits = model.logits(np.asarray(prompts), features_image=np.stack(prefill["features_image"]))
    first = np.argmax(logits[:, -1, : model.vocab.text_size], -1)
    assert captions == [model.text_tokenizer.decode([int(t)]) if int(t) != model.text_tokenizer.eos_id else ""
                        for t in first]
    no_feats = model.logits(np.asarray(prompts))
    t = model.vocab.text_size
    assert np.abs(no_feats[:, -1, :t] - logits[:, -1, :t]).max() > 1e-4  # the features matter
    clip = np.zeros(8000, np.float32)
    assert len(model.transcribe([clip, clip], 16000, max_new_tokens=2)) == 2


def test_no_tensorflow_was_imported():
    """Runs last: building, reading and streaming the token datasets never imported TensorFlow."""
    assert "tensorflow" not in sys.modules
