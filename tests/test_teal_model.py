"""TealLM: frozen-LM text logits are bitwise the original LM's; stage masks; codebook init; joint embedding math."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import linen as nn

from teal_jax import config as config_lib
from teal_jax.models import teal as T
from teal_jax.models.param_count import count_params
from teal_jax.models.transformer import TransformerConfig, TransformerLM
from teal_jax.train import optim
from teal_jax.vocab import UnifiedVocab


def _init(model, rng, toks):
    return nn.unbox(jax.jit(model.init)(rng, toks)["params"])


def _apply(model, params, *args, method=None):
    fn = jax.jit(lambda p, *a: model.apply({"params": p}, *a, method=method))
    return fn(params, *args)


VOCAB = UnifiedVocab(text_size=96, image_codebook_size=40, audio_codebook_size=12, audio_num_levels=2)


def _lm_config(**kw):
    base = dict(vocab_size=96, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=48,
                dtype="float32", qk_norm=True)
    base.update(kw)
    return TransformerConfig(**base)


def _text_tokens(seed=0, shape=(2, 11)):
    return jnp.asarray(np.random.default_rng(seed).integers(0, VOCAB.text_size, shape), jnp.int32)


def _mixed_tokens(seed=0):
    rng = np.random.default_rng(seed)
    toks = rng.integers(0, VOCAB.used_size, (2, 16))
    return jnp.asarray(toks, jnp.int32)


def _masked_steps(model, params, steps=3, stage="frozen_stage1", toks=None):
    """A few AdamW steps on mixed sequences through the project's optimizer with the mask of ``stage``."""
    mask = T.trainable_mask(params, stage)
    opt = ml_collections.ConfigDict(config_lib.default_optimizer_config().to_dict())
    opt.lr, opt.warmup_steps = 1e-2, 0
    tx, _ = optim.make_optimizer(opt, steps, mask)
    state = tx.init(params)
    toks = _mixed_tokens() if toks is None else toks

    def loss(p):
        logits = model.apply({"params": p}, toks[:, :-1])
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), toks[:, 1:, None], -1))

    @jax.jit
    def step(params, state):
        g = jax.grad(loss)(params)
        upd, state = tx.update(g, state, params)
        return optim.apply_updates(params, upd, mask), state

    for _ in range(steps):
        params, state = step(params, state)
    return params


# Untied embeddings (~20 s) run with -m slow; CI checks the tied case (CI time budget).
@pytest.mark.parametrize("tie", [pytest.param(False, marks=pytest.mark.slow), True])
def test_text_logits_bitwise_equal_to_base_lm(tie):
    base_cfg = _lm_config(tie_embeddings=tie)
    base = TransformerLM(base_cfg)
    toks = _text_tokens()
    base_params = _init(base, jax.random.key(1), toks)
    want = np.asarray(_apply(base, base_params, toks))

    # use_bias=True: stage-2 biases exist (zero-initialised), base params dropped in unchanged.
    for use_bias in (False, True):
        model = T.TealLM(T.TealConfig(_lm_config(tie_embeddings=tie, use_bias=use_bias), VOCAB))
        params = _init(model, jax.random.key(2), toks)
        params = T.merge_lm_params(params, base_params)
        got = np.asarray(_apply(model, params, toks))
        assert got.shape == toks.shape + (VOCAB.size,)
        if not use_bias:
            # Bitwise equality (float32): the same ops on the same values.
            np.testing.assert_array_equal(got[..., : VOCAB.text_size], want)
        else:
            # The zero biases add exact zeros, but the bias adds change how XLA fuses the matmuls of the compiled
            # program, so the last bits may differ from the bias-free LM's program (seen on XLA:CPU and GPU):
            # equal to float32 rounding. The bitwise guarantee for stage 2 is against the same graph (below).
            np.testing.assert_allclose(got[..., : VOCAB.text_size], want, rtol=0, atol=1e-6)
        before = got
        assert np.isneginf(got[..., VOCAB.used_size:]).all()

        trained = _masked_steps(model, params)
        # Stage-1 training changed the non-text rows but not a bit of the LM...
        assert not np.array_equal(trained["image_embed"], params["image_embed"])
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                     trained["lm"], base_params if not use_bias else trained["lm"])
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                     trained["lm"], params["lm"])
        # ... so text-only inputs still give the text logits of before training, bit for bit (and, without the
        # stage-2 biases, the original LM's own).
        got = np.asarray(_apply(model, trained, toks))
        np.testing.assert_array_equal(got[..., : VOCAB.text_size], before[..., : VOCAB.text_size])
        if not use_bias:
            np.testing.assert_array_equal(got[..., : VOCAB.text_size], want)


def test_stage_masks_select_exactly_the_intended_leaves():
    cfg = T.TealConfig(_lm_config(use_bias=True), VOCAB, "codebook", image_code_dim=6, audio_code_dim=5)
    model = T.TealLM(cfg)
    shapes = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), _text_tokens())["params"]))
    flat = {"/".join(T._keys(p)): v for p, v in jax.tree_util.tree_flatten_with_path(shapes)[0]}
    lm_names = {k for k in flat if k.startswith("lm/")}
    nontext = {k for k in flat if not k.startswith("lm/") and "_codebook" not in k}
    codebooks = {k for k in flat if "_codebook" in k}
    assert codebooks == {"image_codebook", "audio_codebook"}
    assert nontext == {"special_embed", "special_head", "image_embed", "image_head", "image_proj/kernel",
                       "image_proj/bias", "audio_embed", "audio_head", "audio_proj/kernel", "audio_proj/bias"}
    norms_biases = {
        "lm/final_norm/scale", "lm/layers/attn_norm/scale", "lm/layers/mlp_norm/scale",
        "lm/layers/attn/q_norm/scale", "lm/layers/attn/k_norm/scale",
        "lm/layers/attn/q_proj/bias", "lm/layers/attn/k_proj/bias", "lm/layers/attn/v_proj/bias",
        "lm/layers/attn/o_proj/bias", "lm/layers/mlp/gate_proj/bias", "lm/layers/mlp/up_proj/bias",
        "lm/layers/mlp/down_proj/bias",
    }
    assert norms_biases <= lm_names
    expected = {
        "frozen_stage1": nontext,
        "frozen_stage2": nontext | norms_biases,
        "full": nontext | lm_names,
    }
    for stage, want in expected.items():
        mask = T.trainable_mask(shapes, stage)
        got = {"/".join(T._keys(p)) for p, t in jax.tree_util.tree_flatten_with_path(mask)[0] if t}
        assert got == want, stage
        assert all(isinstance(t, bool) for t in jax.tree.leaves(mask))
    with pytest.raises(ValueError, match="model.stage"):
        T.trainable_mask(shapes, "stage3")
    counts = count_params(shapes, T.trainable_mask(shapes, "frozen_stage1"), group_of=T.param_group)
    assert counts["codebooks (constant)"] == (40 * 6 + 24 * 5, 0)
    assert counts["lm/layers"][1] == 0 and counts["nontext/image"][0] == counts["nontext/image"][1]
    assert sum(n for n, _ in counts.values()) == sum(int(np.prod(v.shape)) for v in flat.values())


def test_codebook_init_rows_equal_projection_of_codebook():
    cfg = T.TealConfig(_lm_config(), VOCAB, "codebook", image_code_dim=6, audio_code_dim=5)
    model = T.TealLM(cfg)
    rng = np.random.default_rng(0)
    cb = {"image": rng.normal(size=(40, 6)).astype(np.float32),
          "audio": rng.normal(size=(3, 12, 5)).astype(np.float32)}  # 3 codec levels; the vocab keeps 2
    toks = _mixed_tokens()
    params = nn.unbox(jax.jit(lambda r, t: T.init_teal(model, r, t, cb))(jax.random.key(0), toks)["params"])
    np.testing.assert_array_equal(params["image_codebook"], cb["image"])
    np.testing.assert_array_equal(params["audio_codebook"], cb["audio"][:2].reshape(24, 5))
    ids = jnp.asarray([[VOCAB.image_offset + 7, VOCAB.audio_offset + 12 + 3]])
    # One compiled call: both modalities' rows and the input embedding of one image id and one audio id.
    rows_img, rows_aud, emb = (np.asarray(x) for x in _apply(
        model, params, ids, method=lambda mod, t: (mod.nontext_rows("image"), mod.nontext_rows("audio"),
                                                   mod.embed(t))))
    for m, flat, rows in (("image", cb["image"], rows_img), ("audio", cb["audio"][:2].reshape(24, 5), rows_aud)):
        k = np.asarray(params[f"{m}_proj"]["kernel"], np.float64)
        b = np.asarray(params[f"{m}_proj"]["bias"], np.float64)
        # float64 reference; float32 matmul at 'highest' precision: 1e-6 absolute on O(0.02) values.
        np.testing.assert_allclose(rows, flat.astype(np.float64) @ k + b, rtol=1e-5, atol=1e-6)
        assert np.abs(rows).max() > 0  # the projection is not degenerate
    # The input embedding of an image/audio id is its codebook row's projection.
    np.testing.assert_array_equal(emb[0, 0], rows_img[7])
    np.testing.assert_array_equal(emb[0, 1], rows_aud[15])
    with pytest.raises(ValueError, match="image codebook shape"):
        T.init_teal(model, jax.random.key(0), toks, {"image": cb["image"][:5], "audio": cb["audio"]})
    with pytest.raises(ValueError, match="needs the audio"):
        T.init_teal(model, jax.random.key(0), toks, {"image": cb["image"]})


def test_joint_embedding_and_heads_match_numpy_reference():
    model = T.TealLM(T.TealConfig(_lm_config(), VOCAB))
    toks = _mixed_tokens(3)
    params = _init(model, jax.random.key(4), toks)
    emb = np.asarray(_apply(model, params, toks, method=T.TealLM.embed), np.float64)
    table = np.concatenate([params["lm"]["embed"]["embedding"], params["special_embed"], params["image_embed"],
                            params["audio_embed"]]).astype(np.float64)
    np.testing.assert_array_equal(emb, table[np.asarray(toks)])

    logits = np.asarray(_apply(model, params, toks))
    h = np.asarray(_apply(model, params, toks, method=lambda m, t: m.lm.hidden(m.embed(t))), np.float64)
    heads = np.concatenate([params["lm"]["lm_head"]["kernel"], params["special_head"], params["image_head"],
                            params["audio_head"]], axis=1).astype(np.float64)
    # float32 matmuls against float64: 1e-5 on logits of size ~0.1.
    np.testing.assert_allclose(logits[..., : VOCAB.used_size], h @ heads, rtol=1e-5, atol=1e-5)
    assert np.isneginf(logits[..., VOCAB.used_size:]).all()


def test_config_and_merge_errors():
    with pytest.raises(ValueError, match="vocab.text_size"):
        T.TealConfig(_lm_config(vocab_size=50), VOCAB)
    with pytest.raises(ValueError, match="embedding_init"):
        T.TealConfig(_lm_config(), VOCAB, "bogus")
    with pytest.raises(ValueError, match="image_code_dim"):
        T.TealConfig(_lm_config(), VOCAB, "codebook")
    model = T.TealLM(T.TealConfig(_lm_config(), VOCAB))
    params = _init(model, jax.random.key(0), _text_tokens())
    other = _init(TransformerLM(_lm_config(embed_dim=16, head_dim=4)), jax.random.key(0), _text_tokens())
    with pytest.raises(ValueError, match="has shape"):
        T.merge_lm_params(params, other)
    biased = _init(TransformerLM(_lm_config(use_bias=True)), jax.random.key(0), _text_tokens())
    with pytest.raises(ValueError, match="leaves the TEAL LM lacks"):
        T.merge_lm_params(params, biased)


@pytest.mark.parametrize("tie", [pytest.param(False, marks=pytest.mark.slow), True])  # as above
def test_modality_experts_keep_text_logits_bitwise_and_route_nontext_positions(tie):
    base = TransformerLM(_lm_config(tie_embeddings=tie))
    toks = _text_tokens()
    base_params = _init(base, jax.random.key(1), toks)
    want = np.asarray(_apply(base, base_params, toks))
    plain = T.TealLM(T.TealConfig(_lm_config(tie_embeddings=tie), VOCAB))
    cfg = T.TealConfig(_lm_config(tie_embeddings=tie, expert_attention=True, expert_mlp=True), VOCAB,
                       image_span_len=6, audio_span_len=4)
    model = T.TealLM(cfg)
    params = T.merge_lm_params(_init(model, jax.random.key(2), toks), base_params)
    # Experts start as copies of the weights they stand in for.
    layers = params["lm"]["layers"]
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        np.testing.assert_array_equal(layers["attn"][f"expert_{name}"]["kernel"], layers["attn"][name]["kernel"])
    np.testing.assert_array_equal(layers["expert_mlp"]["up_proj"]["kernel"], layers["mlp"]["up_proj"]["kernel"])
    np.testing.assert_array_equal(np.asarray(_apply(model, params, toks))[..., : VOCAB.text_size], want)
    # With copied experts and zero span positions, mixed sequences compute what the expert-free model computes.
    plain_params = {k: v for k, v in params.items() if not k.endswith("_span_pos")}
    plain_params["lm"] = T.merge_lm_params(_init(plain, jax.random.key(2), toks), base_params)["lm"]
    mixed = _mixed_tokens(3)
    np.testing.assert_allclose(np.asarray(_apply(model, params, mixed)),
                               np.asarray(_apply(plain, plain_params, mixed)), rtol=0, atol=1e-5)

    trained = _masked_steps(model, params, stage="frozen_expert", toks=mixed)
    t_layers = trained["lm"]["layers"]
    assert not np.array_equal(t_layers["attn"]["expert_q_proj"]["kernel"], layers["attn"]["expert_q_proj"]["kernel"])
    assert not np.array_equal(trained["image_span_pos"], params["image_span_pos"])
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):  # the original LM weights did not move a bit
        np.testing.assert_array_equal(t_layers["attn"][name]["kernel"], layers["attn"][name]["kernel"])
    # Text-only inputs never reach the (now trained) experts: the base LM's text logits, bit for bit.
    np.testing.assert_array_equal(np.asarray(_apply(model, trained, toks))[..., : VOCAB.text_size], want)
    # Non-text positions now compute something else.
    assert not np.allclose(np.asarray(_apply(model, trained, mixed)), np.asarray(_apply(model, params, mixed)))


def test_frozen_expert_mask_and_counts():
    cfg = T.TealConfig(_lm_config(expert_attention=True), VOCAB, image_span_len=4)
    shapes = jax.eval_shape(lambda: nn.unbox(T.TealLM(cfg).init(jax.random.key(0), _text_tokens())["params"]))
    mask = T.trainable_mask(shapes, "frozen_expert")
    got = {"/".join(T._keys(p)) for p, t in jax.tree_util.tree_flatten_with_path(mask)[0] if t}
    experts = {f"lm/layers/attn/expert_{n}/kernel" for n in ("q_proj", "k_proj", "v_proj", "o_proj")}
    assert got == {"special_embed", "special_head", "image_embed", "image_head", "audio_embed", "audio_head",
                   "image_span_pos"} | experts
    counts = count_params(shapes, mask, group_of=T.param_group)
    assert counts["lm/experts"][0] == counts["lm/experts"][1] > 0
    assert counts["lm/layers"][1] == 0
    assert "audio_span_pos" not in shapes  # audio_span_len=0: no table


def test_span_index_matches_a_python_reference():
    v = VOCAB
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(4):
        row = []
        while len(row) < 40:
            kind = rng.integers(3)
            if kind == 0:
                row += rng.integers(0, v.text_size, rng.integers(1, 4)).tolist()
            elif kind == 1:
                row += [v.boi] + (v.image_offset + rng.integers(0, v.image_codebook_size, 5)).tolist() + [v.eoi]
            else:
                row += [v.boa] + (v.audio_offset + rng.integers(0, 12, 3)).tolist() + [v.eoa]
        rows.append(row[:40])
    toks = np.asarray(rows, np.int32)
    want = np.zeros_like(toks)
    for b, row in enumerate(rows):
        k = None
        for i, t in enumerate(row):
            if t in (v.boi, v.boa):
                k = 0
            elif v.image_offset <= t < v.used_size and k is not None:
                want[b, i], k = k, k + 1
    np.testing.assert_array_equal(np.asarray(T.compute_span_index(v, jnp.asarray(toks))), want)
