"""Separate input-only tokenizers: the vocabulary's input ranges, TealLM's input rows / continuous features, the
sampler's prefill inputs and the task stream's condition side (tiny configs, in-memory sources)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from teal_jax.data import templates as templates_lib
from teal_jax.data.teal.task_stream import TealTaskStream
from teal_jax.inference import sampler
from teal_jax.inference.teal import sample_ids
from teal_jax.models import teal as T
from teal_jax.models.transformer import TransformerConfig
from teal_jax.vocab import AUDIO, IMAGE, PADDING, SPECIAL, TEXT, UnifiedVocab

BASE = dict(text_size=96, image_codebook_size=40, audio_codebook_size=12, audio_num_levels=2)
IMAGE_IN, AUDIO_IN = 10, 6
VOCAB = UnifiedVocab(**BASE)
VOCAB_IN = UnifiedVocab(**BASE, image_in_size=IMAGE_IN, audio_in_size=AUDIO_IN)
IMAGE_DIM, AUDIO_DIM = 5, 3


def _lm_config(**kw):
    base = dict(vocab_size=96, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=48,
                dtype="float32", qk_norm=True, max_decode_len=128)
    base.update(kw)
    return TransformerConfig(**base)


def _init(model, rng, toks):
    return nn.unbox(jax.jit(model.init)(rng, toks)["params"])


# ---- 1. vocabulary ----------------------------------------------------------------------------------------------
_LAYOUT = ("special_offset", "image_offset", "audio_offset", "output_size", "image_in_offset", "audio_in_offset",
           "used_size", "size", "nontext_size", "head_size")


@pytest.mark.parametrize("extra", [dict(), dict(audio_scheme="first_levels", audio_keep_levels=1),
                                   dict(audio_codebook_size=0)])
def test_zero_input_sizes_are_exactly_the_old_layout(extra):
    old = UnifiedVocab(**{**BASE, **extra})
    new = UnifiedVocab(**{**BASE, **extra}, image_in_size=0, audio_in_size=0)
    assert old == new
    for name in _LAYOUT:
        assert getattr(new, name) == getattr(old, name), name
    # nothing after the emit-able ids but padding
    assert new.output_size == new.used_size == new.image_in_offset == new.audio_in_offset
    assert new.ranges() == old.ranges()
    for m in (TEXT, SPECIAL, IMAGE, AUDIO, PADDING):
        np.testing.assert_array_equal(new.modality_mask(m), old.modality_mask(m))
    np.testing.assert_array_equal(new.valid_mask(), ~old.modality_mask(PADDING))
    ids = np.arange(new.size)
    np.testing.assert_array_equal(new.modality_of(ids), old.modality_of(ids))
    # one tokenizer reads and writes: the input range is the output range
    assert new.input_range(IMAGE) == (new.image_offset, new.audio_offset)
    assert new.input_range(AUDIO) == (new.audio_offset, new.output_size)
    with pytest.raises(ValueError, match="no input-only image range"):
        new.input_to_unified(IMAGE, [0])
    with pytest.raises(ValueError, match="no input-only audio range"):
        new.input_to_unified(AUDIO, [0])


def test_input_ranges_layout_modality_and_masks():
    v = VOCAB_IN
    out_end = 96 + v.num_specials + 40 + 2 * 12
    assert v.output_size == out_end == VOCAB.output_size == VOCAB.used_size
    assert v.image_in_offset == out_end
    assert v.audio_in_offset == out_end + IMAGE_IN
    assert v.used_size == out_end + IMAGE_IN + AUDIO_IN
    assert v.size == 256 and v.size % v.pad_multiple == 0
    assert v.head_size == out_end - 96
    assert v.nontext_size == v.used_size - 96
    assert v.input_range(IMAGE) == (out_end, out_end + IMAGE_IN)
    assert v.input_range(AUDIO) == (out_end + IMAGE_IN, out_end + IMAGE_IN + AUDIO_IN)
    with pytest.raises(ValueError):
        v.input_range(TEXT)
    assert v.input_range("image") == v.input_range(IMAGE) and v.input_range("audio") == v.input_range(AUDIO)
    with pytest.raises(ValueError, match="'image'"):
        v.input_range("text")

    # expected modality of every id, written range by range
    want = np.full(v.size, PADDING, np.int32)
    want[:96] = TEXT
    want[v.special_offset : v.image_offset] = SPECIAL
    want[v.image_offset : v.audio_offset] = IMAGE
    want[v.audio_offset : v.output_size] = AUDIO
    want[v.image_in_offset : v.audio_in_offset] = IMAGE
    want[v.audio_in_offset : v.used_size] = AUDIO
    ids = np.arange(v.size)
    np.testing.assert_array_equal(v.modality_of(ids), want)
    np.testing.assert_array_equal(np.asarray(v.modality_of_jax(jnp.asarray(ids, jnp.int32))), want)
    np.testing.assert_array_equal(np.asarray(jax.jit(v.modality_of_jax)(jnp.asarray(ids, jnp.int32))), want)
    np.testing.assert_array_equal(v.modality_of(ids.reshape(4, -1)), want.reshape(4, -1))  # shape kept
    # boundaries explicitly
    for i, m in [(v.output_size - 1, AUDIO), (v.image_in_offset, IMAGE), (v.audio_in_offset - 1, IMAGE),
                 (v.audio_in_offset, AUDIO), (v.used_size - 1, AUDIO), (v.used_size, PADDING), (v.size - 1, PADDING)]:
        assert int(v.modality_of([i])[0]) == m, i

    # masks hold only emit-able ids: the input ids are in no modality mask and not valid
    valid = v.valid_mask()
    assert valid.shape == (v.size,) and valid[: v.output_size].all() and not valid[v.output_size :].any()
    union = np.zeros(v.size, bool)
    for m in (TEXT, SPECIAL, IMAGE, AUDIO):
        union |= v.modality_mask(m)
    np.testing.assert_array_equal(union, valid)
    assert not v.modality_mask(PADDING)[: v.used_size].any() and v.modality_mask(PADDING)[v.used_size :].all()
    assert not v.modality_mask(IMAGE)[v.image_in_offset : v.audio_in_offset].any()
    assert not v.modality_mask(AUDIO)[v.audio_in_offset : v.used_size].any()
    assert v.ranges()[IMAGE] == (v.image_offset, v.audio_offset)
    assert v.ranges()[AUDIO] == (v.audio_offset, v.output_size)


def test_input_to_unified_round_trip_and_errors():
    v = VOCAB_IN
    for m, n in ((IMAGE, IMAGE_IN), (AUDIO, AUDIO_IN)):
        lo, hi = v.input_range(m)
        codes = np.arange(n).reshape(1, n).repeat(2, 0)  # [2, n]: a batch keeps its shape
        ids = v.input_to_unified(m, codes)
        assert ids.dtype == np.int32 and ids.shape == (2, n)
        np.testing.assert_array_equal(ids - lo, codes)
        assert ids.min() == lo and ids.max() == hi - 1
        assert (v.modality_of(ids) == m).all()
        for bad in ([n], [-1], [0, n + 3]):
            with pytest.raises(ValueError, match="outside"):
                v.input_to_unified(m, bad)
        with pytest.raises(ValueError, match="integer"):
            v.input_to_unified(m, np.zeros(2, np.float32))
    only_image = UnifiedVocab(**BASE, image_in_size=4)
    assert only_image.input_range(AUDIO) == (only_image.audio_offset, only_image.output_size)
    assert only_image.used_size == only_image.output_size + 4
    with pytest.raises(ValueError, match="no input-only audio range"):
        only_image.input_to_unified(AUDIO, [0])
    np.testing.assert_array_equal(only_image.input_to_unified(IMAGE, [0, 3]), [only_image.output_size,
                                                                               only_image.output_size + 3])
    with pytest.raises(ValueError, match="non-negative"):
        UnifiedVocab(**BASE, image_in_size=-1)


def test_templates_condition_uses_the_input_range():
    tpl = templates_lib.Templates(VOCAB_IN, 1, 2)
    assert set(templates_lib.CONDITION_TASKS) == {"caption", "asr"}
    ids = VOCAB_IN.input_to_unified(IMAGE, [0, 9, 3]).tolist()
    p = tpl.prompt("caption", ids)
    assert p[-5:] == [VOCAB_IN.boi, *ids, VOCAB_IN.eoi]
    a = VOCAB_IN.input_to_unified(AUDIO, [5, 0]).tolist()
    assert tpl.prompt("asr", a)[-4:] == [VOCAB_IN.boa, *a, VOCAB_IN.eoa]
    with pytest.raises(ValueError, match="caption image"):  # output codes are not the condition's ids any more
        tpl.prompt("caption", [VOCAB_IN.image_offset])
    with pytest.raises(ValueError, match="asr audio"):
        tpl.prompt("asr", ids)  # image input ids are not audio input ids
    # t2i's target stays the output tokenizer's
    with pytest.raises(ValueError):
        tpl.span_example("t2i", [5, 6], ids)


# ---- 2. TealLM --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models():
    """(model, params) without input ranges, with input ids, and with continuous features, sharing every table
    that the three have in common (the LM, specials, image/audio rows and heads)."""
    toks = jnp.zeros((1, 4), jnp.int32)
    plain = T.TealLM(T.TealConfig(_lm_config(), VOCAB))
    ids = T.TealLM(T.TealConfig(_lm_config(), VOCAB_IN))
    feats = T.TealLM(T.TealConfig(_lm_config(), VOCAB_IN, image_in_dim=IMAGE_DIM, audio_in_dim=AUDIO_DIM))
    p_plain = _init(plain, jax.random.key(0), toks)
    p_ids = _init(ids, jax.random.key(1), toks)
    p_feats = _init(feats, jax.random.key(2), toks)
    shared = ("lm", "special_embed", "special_head", "image_embed", "image_head", "audio_embed", "audio_head")
    for p in (p_ids, p_feats):
        for k in shared:
            p[k] = p_plain[k]
    return dict(plain=(plain, p_plain), ids=(ids, p_ids), feats=(feats, p_feats))


def _logits(model, params, toks, **kw):
    return np.asarray(jax.jit(lambda p, t, kw: model.apply({"params": p}, t, **kw))(params, toks, kw))


def _embed(model, params, toks, **kw):
    return np.asarray(jax.jit(lambda p, t, kw: model.apply({"params": p}, t, **kw, method="embed"))(params, toks,
                                                                                                  kw))


def test_params_of_input_rows_and_projections(models):
    _, p_plain = models["plain"]
    _, p_ids = models["ids"]
    _, p_feats = models["feats"]
    assert not any("_in_" in k for k in p_plain)
    assert p_ids["image_in_embed"].shape == (IMAGE_IN, 32) and p_ids["audio_in_embed"].shape == (AUDIO_IN, 32)
    assert "image_in_proj" not in p_ids and "audio_in_proj" not in p_ids
    # init (no features passed) still creates the projections: Dense in_dim -> embed_dim, zero bias
    assert p_feats["image_in_proj"]["kernel"].shape == (IMAGE_DIM, 32)
    assert p_feats["audio_in_proj"]["kernel"].shape == (AUDIO_DIM, 32)
    np.testing.assert_array_equal(p_feats["image_in_proj"]["bias"], np.zeros(32))
    assert float(np.abs(p_feats["image_in_proj"]["kernel"]).max()) > 0
    # the output heads have no input-only columns
    assert p_ids["image_head"].shape == p_plain["image_head"].shape == (32, 40)
    with pytest.raises(ValueError, match="image_in_size"):
        T.TealConfig(_lm_config(), VOCAB, image_in_dim=4)


def test_input_columns_are_minus_inf_and_text_logits_are_unchanged(models):
    plain, p_plain = models["plain"]
    ids, p_ids = models["ids"]
    v = VOCAB_IN
    rng = np.random.default_rng(0)
    text = jnp.asarray(rng.integers(0, 96, (2, 11)), jnp.int32)
    want = _logits(plain, p_plain, text)
    got = _logits(ids, p_ids, text)
    assert got.shape == want.shape == (2, 11, v.size)
    # same LM and shared tables: every emit-able logit is bitwise the plain model's (float32, same ops)
    np.testing.assert_array_equal(got[..., : v.text_size], want[..., : v.text_size])
    np.testing.assert_array_equal(got[..., : v.output_size], want[..., : v.output_size])
    assert np.isneginf(got[..., v.output_size :]).all()  # input-only ids and padding: never emitted
    assert np.isfinite(got[..., : v.output_size]).all()

    # a sequence holding input ids: still -inf at input columns, finite elsewhere, and the input rows are read
    mixed = np.asarray(rng.integers(0, 96, (2, 12)))
    mixed[:, 3:7] = v.input_to_unified(IMAGE, [[0, 4, 9, 2], [1, 1, 5, 8]])
    mixed[:, 8:10] = v.input_to_unified(AUDIO, [[0, 5], [3, 2]])
    got = _logits(ids, p_ids, jnp.asarray(mixed, jnp.int32))
    assert np.isneginf(got[..., v.image_in_offset : v.used_size]).all()
    assert np.isfinite(got[..., : v.output_size]).all()
    emb = _embed(ids, p_ids, jnp.asarray(mixed, jnp.int32))
    np.testing.assert_array_equal(emb[0, 4], np.asarray(p_ids["image_in_embed"])[4])
    np.testing.assert_array_equal(emb[1, 9], np.asarray(p_ids["audio_in_embed"])[2])


def test_features_change_the_embedding_only_at_input_ids(models):
    feats_model, p = models["feats"]
    v = VOCAB_IN
    rng = np.random.default_rng(1)
    toks = np.asarray(rng.integers(0, 96, (2, 16)))
    toks[:, 0] = v.boi
    toks[:, 1:5] = v.input_to_unified(IMAGE, np.arange(4))  # span positions of 4 feature vectors
    toks[:, 5] = v.eoi
    toks[:, 6] = v.image_offset + 7  # an output image code: not an input id
    toks[:, 8] = v.boa
    toks[:, 9:12] = v.input_to_unified(AUDIO, np.arange(3))
    toks[:, 12] = v.eoa
    toks = jnp.asarray(toks, jnp.int32)
    fi = rng.normal(size=(2, 16, IMAGE_DIM)).astype(np.float32)  # non-zero everywhere: must be ignored off-input
    fa = rng.normal(size=(2, 16, AUDIO_DIM)).astype(np.float32)
    base = _embed(feats_model, p, toks)
    with_f = _embed(feats_model, p, toks, features_image=jnp.asarray(fi), features_audio=jnp.asarray(fa))
    img_pos, aud_pos = np.arange(1, 5), np.arange(9, 12)
    other = np.setdiff1d(np.arange(16), np.concatenate([img_pos, aud_pos]))
    np.testing.assert_array_equal(with_f[:, other], base[:, other])  # bitwise
    # at input ids: exactly the projection of the features added to the position row
    k, b = np.asarray(p["image_in_proj"]["kernel"]), np.asarray(p["image_in_proj"]["bias"])
    np.testing.assert_allclose(with_f[:, img_pos] - base[:, img_pos], fi[:, img_pos] @ k + b, rtol=1e-5, atol=1e-6)
    k, b = np.asarray(p["audio_in_proj"]["kernel"]), np.asarray(p["audio_in_proj"]["bias"])
    np.testing.assert_allclose(with_f[:, aud_pos] - base[:, aud_pos], fa[:, aud_pos] @ k + b, rtol=1e-5, atol=1e-6)
    assert np.abs(with_f[:, img_pos] - base[:, img_pos]).min(axis=-1).max() > 0
    assert (np.abs(with_f[:, img_pos] - base[:, img_pos]).max(axis=-1) > 1e-4).all()
    assert (np.abs(with_f[:, aud_pos] - base[:, aud_pos]).max(axis=-1) > 1e-4).all()
    # only one modality's features given: the other's input ids keep their rows
    only_i = _embed(feats_model, p, toks, features_image=jnp.asarray(fi))
    np.testing.assert_array_equal(only_i[:, aud_pos], base[:, aud_pos])
    np.testing.assert_array_equal(only_i[:, img_pos], with_f[:, img_pos])


# ---- 3. sampler prefill -----------------------------------------------------------------------------------------
def test_prefill_features_reach_the_prompt_forward(models):
    model, p = models["feats"]
    cfg = model.config
    v = VOCAB_IN
    tpl = templates_lib.Templates(v, 1, 2)
    rng = np.random.default_rng(2)
    n = 6
    prompts, arrays = [], []
    for _ in range(2):
        ids = v.input_to_unified(IMAGE, np.arange(n)).tolist()
        prompt = tpl.prompt("caption", ids)
        f = np.zeros((len(prompt), IMAGE_DIM), np.float32)
        inside = (np.asarray(prompt) >= v.image_in_offset) & (np.asarray(prompt) < v.audio_in_offset)
        f[inside] = 3.0 * rng.normal(size=(n, IMAGE_DIM))
        prompts.append(prompt)
        arrays.append(f)
    prompts[1] = [1, 50, 51, *prompts[1][1:]]  # a longer prompt: the first is left-padded
    arrays[1] = np.concatenate([np.zeros((2, IMAGE_DIM), np.float32), arrays[1]])

    steps = 3
    got = sample_ids(cfg, p, prompts, sampler.SamplingConfig(max_new_tokens=steps, temperature=0.0),
                     prefill={"features_image": arrays})
    assert got.shape == (2, steps)

    # reference: greedy over the text ids (the modality constraint without spans) with full forwards, features
    # at the prompt, zeros at generated tokens
    fwd = jax.jit(lambda p, t, f: model.apply({"params": p}, t, features_image=f))
    for i, (prompt, f) in enumerate(zip(prompts, arrays, strict=True)):
        seq, feats = list(prompt), f
        for s in range(steps):
            logits = np.asarray(fwd(p, jnp.asarray([seq], jnp.int32), jnp.asarray(feats[None])))[0, -1, : v.text_size]
            top2 = np.sort(logits)[-2:]
            assert top2[1] - top2[0] > 1e-4, "a near tie: pick another seed"
            want = int(np.argmax(logits))
            assert int(got[i, s]) == want, (i, s)
            if s == 0:  # the features matter for this prompt's prediction
                plain = np.asarray(fwd(p, jnp.asarray([seq], jnp.int32), jnp.zeros((1, len(seq), IMAGE_DIM))))
                assert np.abs(plain[0, -1, : v.text_size] - logits).max() > 1e-3
            seq.append(want)
            feats = np.concatenate([feats, np.zeros((1, IMAGE_DIM), np.float32)])


def test_prefill_of_the_wrong_length_is_an_error(models):
    model, p = models["feats"]
    v = VOCAB_IN
    prompt = templates_lib.Templates(v, 1, 2).prompt("caption", v.input_to_unified(IMAGE, np.arange(3)).tolist())
    f = np.zeros((len(prompt), IMAGE_DIM), np.float32)
    s = sampler.SamplingConfig(max_new_tokens=1, temperature=0.0)
    with pytest.raises(ValueError, match="one array per prompt"):  # one array for two prompts
        sample_ids(model.config, p, [prompt, prompt], s, prefill={"features_image": [f]})
    with pytest.raises(ValueError, match="one array per prompt"):  # an array shorter than its prompt
        sample_ids(model.config, p, [prompt], s, prefill={"features_image": [f[:-1]]})


# ---- 4. task stream ---------------------------------------------------------------------------------------------
class _CharTokenizer:
    """A text tokenizer stand-in: one id per character."""

    vocab_size, bos_id, eos_id = 96, 1, 2

    def encode(self, text):
        if isinstance(text, (list, tuple)):
            return [self.encode(t) for t in text]
        return [3 + ord(c) % 90 for c in text]


WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
N_REC, HW = 12, 4  # records; image codes 2x2


def _image_records(rng):
    return [{"codes": rng.integers(0, 40, (2, 2)).astype(np.int32), "label": i % 10, "text": WORDS[i % 10],
             "index": 100 + i} for i in range(N_REC)]


def _stream(image, image_in, features=False, **kw):
    return TealTaskStream(vocab=VOCAB_IN, text_tokenizer=_CharTokenizer(), tasks={"caption": 1.0}, split="train",
                          batch_size=3, seq_len=40, seed=0, image=image, image_in=image_in, cond_dropout=0.0,
                          in_features={"image": features} if features else None, **kw)


def _condition(batch, d):
    """The ids of draw ``d``'s image span (between <boi> and <eoi> of its segment)."""
    toks = batch["tokens"][d["row"]][batch["segment_ids"][d["row"]] == d["segment"]]
    i, j = list(toks).index(VOCAB_IN.boi), list(toks).index(VOCAB_IN.eoi)
    return toks[i + 1 : j]


def test_stream_writes_caption_conditions_with_input_ids():
    rng = np.random.default_rng(3)
    image = _image_records(rng)
    image_in = [{"codes": rng.integers(0, IMAGE_IN, (HW,)).astype(np.int32), "label": r["label"],
                 "text": r["text"], "index": r["index"]} for r in image]
    s = _stream(image, image_in)
    lo, hi = VOCAB_IN.input_range(IMAGE)
    for _ in range(2):
        batch = next(s)
        assert "features_image" not in batch
        assert s.last_draws and all(d["task"] == "caption" for d in s.last_draws)
        for d in s.last_draws:
            cond = _condition(batch, d)
            pos = d["index"]  # one process: the shard position is the split index
            np.testing.assert_array_equal(cond, VOCAB_IN.input_to_unified(IMAGE, image_in[pos]["codes"]))
            assert ((cond >= lo) & (cond < hi)).all()
        toks = batch["tokens"]
        # no output image code anywhere (the condition is the input tokenizer's), input ids are IMAGE
        assert not ((toks >= VOCAB_IN.image_offset) & (toks < VOCAB_IN.audio_offset)).any()
        inside = (toks >= lo) & (toks < hi)
        assert inside.any() and (batch["modality"][inside] == IMAGE).all()
        assert (batch["loss_mask"][inside] == 0).all()  # the condition is not a target


def test_stream_fills_features_at_exactly_the_input_ids():
    rng = np.random.default_rng(4)
    image = _image_records(rng)
    n, dim = 5, 3
    image_in = [{"codes": rng.normal(size=(n, dim)).astype(np.float32) + 1.0, "label": r["label"], "text": r["text"],
                 "index": r["index"]} for r in image]
    s = _stream(image, image_in, features=True)
    lo, hi = VOCAB_IN.input_range(IMAGE)
    for _ in range(2):
        batch = next(s)
        f = batch["features_image"]
        assert f.dtype == np.float32 and f.shape == batch["tokens"].shape + (dim,)
        covered = np.zeros(batch["tokens"].shape, bool)
        for d in s.last_draws:
            row, seg = d["row"], d["segment"]
            np.testing.assert_array_equal(_condition(batch, d), np.arange(lo, lo + n))  # span positions 0..n-1
            where = np.nonzero((batch["segment_ids"][row] == seg) & (batch["tokens"][row] >= lo)
                               & (batch["tokens"][row] < hi))[0]
            assert len(where) == n
            np.testing.assert_array_equal(f[row, where], image_in[d["index"]]["codes"])
            covered[row, where] = True
        np.testing.assert_array_equal(covered, (batch["tokens"] >= lo) & (batch["tokens"] < hi))
        assert (f[~covered] == 0).all()
        assert (np.abs(f[covered]).sum(-1) > 0).all()


def test_stream_rejects_input_records_of_other_records():
    rng = np.random.default_rng(5)
    image = _image_records(rng)
    image_in = [{"codes": rng.integers(0, IMAGE_IN, (HW,)).astype(np.int32), "label": r["label"],
                 "text": r["text"], "index": r["index"]} for r in image]
    shifted = [dict(r, index=r["index"] + (1 if i == 7 else 0)) for i, r in enumerate(image_in)]
    with pytest.raises(ValueError, match="not the output tokenizer's"):
        _stream(image, shifted)
    with pytest.raises(ValueError, match="same source"):  # fewer input records than output records
        _stream(image, image_in[:-3])
    # the same records in the same order are accepted (and a second host reads its own shard)
    s = _stream(image, image_in, process_index=1, process_count=2)
    batch = next(s)
    for d in s.last_draws:
        assert d["index"] % 2 == 1
        np.testing.assert_array_equal(_condition(batch, d),
                                      VOCAB_IN.input_to_unified(IMAGE, image_in[d["index"]]["codes"]))


def test_loss_is_finite_with_input_ids_in_the_row():
    """Input-only ids are targets of the position before them (loss mask 0 there) and have -inf logits: the loss and
    its gradient must stay finite, and equal the loss of the same row with those targets' statistics at id 0."""
    from teal_jax.train.teal_objective import teal_loss

    v = VOCAB_IN
    model = T.TealLM(T.TealConfig(_lm_config(), v))
    lo, _ = v.input_range(IMAGE)
    tokens = jnp.asarray([[1, v.boi, lo, lo + 3, lo + 9, v.eoi, 5, 6, 7]], jnp.int32)
    mask = jnp.asarray([[0, 0, 0, 0, 0, 0, 0, 1, 1]], jnp.float32)
    params = _init(model, jax.random.key(0), tokens[:, :-1])
    batch = {"tokens": tokens, "loss_mask": mask}

    def loss(p):
        return teal_loss(model.apply({"params": p}, tokens[:, :-1]), batch, v)[0]

    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    assert np.isfinite(float(value))
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    logits = model.apply({"params": params}, tokens[:, :-1])
    lp = jax.nn.log_softmax(logits[0, -2:], -1)
    want = -(lp[0, 6] + lp[1, 7]) / 2  # the two text targets, mean over the mask
    np.testing.assert_allclose(float(value), float(want), rtol=1e-5)
