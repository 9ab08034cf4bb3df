"""TEAL sampling: constraint masks obeyed, greedy KV-cache decoding == full forward, classifier-free guidance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from teal_jax import vocab as V
from teal_jax.inference import constraints as G
from teal_jax.inference.sampler import SamplingConfig
from teal_jax.inference.teal import sample_ids
from teal_jax.models.teal import TealConfig, TealLM
from teal_jax.models.transformer import TransformerConfig

VOCAB = V.UnifiedVocab(text_size=64, image_codebook_size=20, audio_codebook_size=8, audio_num_levels=3)
CONFIG = TealConfig(TransformerConfig(vocab_size=64, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2,
                                      head_dim=8, mlp_dim=48, dtype="float32"), VOCAB)
SPANS = G.SpanConfig(image_tokens=6, audio_frames=2)


@pytest.fixture(scope="module")
def params():
    model = TealLM(CONFIG)
    return nn.unbox(jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])


@pytest.fixture(scope="module")
def forward(params):
    """Full (no cache) forward of rows right-padded to 24 ids (one compilation); causal, so the padding never
    changes the logits at the positions read."""
    fn = jax.jit(lambda p, t: TealLM(CONFIG).apply({"params": p}, t))

    def run(rows):
        toks = np.zeros((len(rows), 24), np.int32)
        for i, r in enumerate(rows):
            toks[i, : len(r)] = r
        return np.asarray(fn(params, jnp.asarray(toks)))

    return run


def reference_allowed(seq_so_far, spans=SPANS):
    """Independent host-side statement of the rules: the set of ids allowed after ``seq_so_far``."""
    mode, count = "text", 0
    for tok in seq_so_far:
        if mode == "text":
            mode, count = {VOCAB.boi: ("image", 0), VOCAB.boa: ("audio", 0)}.get(tok, ("text", 0))
        elif (mode, tok) in (("image", VOCAB.eoi), ("audio", VOCAB.eoa)):
            mode, count = "text", 0
        else:
            count += 1
    if mode == "image":
        return set(range(VOCAB.image_offset, VOCAB.audio_offset)) if count < spans.image_tokens else {VOCAB.eoi}
    if mode == "audio":
        n = VOCAB.audio_levels_used
        if count < spans.audio_frames * n:
            return set(range(*VOCAB.audio_level_range(count % n)))
        return {VOCAB.eoa}
    allowed = set(range(VOCAB.text_size))
    allowed |= {VOCAB.boi} if spans.image_tokens else set()
    allowed |= {VOCAB.boa} if spans.audio_frames else set()
    return allowed


PROMPTS = [[5, 9, VOCAB.boi], [7, VOCAB.boa], [3, 4, 11, 2], [VOCAB.boi, VOCAB.image_offset + 1]]
# Shared by two tests so the sampler compiles once for both.
NUCLEUS = SamplingConfig(max_new_tokens=16, temperature=1.0, top_k=10, top_p=0.9)


def test_sampled_tokens_obey_the_modality_constraints(params):
    for seed in range(2):
        out = sample_ids(CONFIG, params, PROMPTS, NUCLEUS, SPANS, rng=jax.random.key(seed))
        assert out.shape == (4, 16)
        for prompt, row in zip(PROMPTS, out.tolist(), strict=True):
            for t, tok in enumerate(row):
                assert tok in reference_allowed(prompt + row[:t]), (prompt, row, t)
        # Row 0: exactly h*w image ids, then <eoi>, and the span converts back to codes.
        assert out[0, 6] == VOCAB.eoi
        (span,) = G.extract_spans(VOCAB, PROMPTS[0] + out[0].tolist(), V.IMAGE)
        assert VOCAB.unified_to_image(span, 2, 3).shape == (2, 3)
        # Row 1: frame-major audio levels 0,1,2,0,1,2 then <eoa>.
        np.testing.assert_array_equal(VOCAB.audio_level_of(out[1, :6]), [0, 1, 2, 0, 1, 2])
        assert out[1, 6] == VOCAB.eoa
        assert VOCAB.unified_to_audio(out[1, :6]).shape == (2, 3)
        # Row 3 started mid-span: 5 more image ids, then <eoi>.
        assert (VOCAB.modality_of(out[3, :5]) == V.IMAGE).all() and out[3, 5] == VOCAB.eoi


def test_boundary_tokens_open_spans_from_text_mode(params):
    """At temperature 30 the 66 ids allowed in text mode are near-uniform, so spans open from text mode too
    (deterministic for this key); every token still obeys the rules across the transitions."""
    prompts = [[1, 2], [3], [4], [5]]
    out = sample_ids(CONFIG, params, prompts, SamplingConfig(max_new_tokens=40, temperature=30.0), SPANS,
                   rng=jax.random.key(3))
    opened = set()
    for prompt, row in zip(prompts, out.tolist(), strict=True):
        for t, tok in enumerate(row):
            assert tok in reference_allowed(prompt + row[:t])
            if tok in (VOCAB.boi, VOCAB.boa):
                opened.add(tok)
    assert opened, "no span opened: choose another key"


def test_greedy_kv_cache_equals_full_forward(params, forward):
    sampling = SamplingConfig(max_new_tokens=12, temperature=0.0)
    out = sample_ids(CONFIG, params, PROMPTS, sampling, SPANS)
    seqs = [p + row for p, row in zip(PROMPTS, out.tolist(), strict=True)]
    # Causal model: the full forward's logits at position i equal re-running the prefix [0..i] step by step;
    # right padding only follows the positions read.
    logits = forward(seqs)
    for b, (prompt, row) in enumerate(zip(PROMPTS, out.tolist(), strict=True)):
        for t, tok in enumerate(row):
            allowed = sorted(reference_allowed(prompt + row[:t]))
            step_logits = logits[b, len(prompt) - 1 + t]
            assert tok == allowed[int(np.argmax(step_logits[allowed]))], (b, t)


def test_guidance_scale_one_equals_conditional_sampler(params):
    uncond = [G.null_prompt(VOCAB, p) for p in PROMPTS]
    assert uncond[0] == [VOCAB.null, VOCAB.boi] and uncond[2] == [VOCAB.null]
    # Nucleus sampling with the same key: same random draws, so equal logits give equal tokens.
    plain = sample_ids(CONFIG, params, PROMPTS, NUCLEUS, SPANS, rng=jax.random.key(7))
    guided = sample_ids(CONFIG, params, PROMPTS, NUCLEUS, SPANS, rng=jax.random.key(7), uncond_prompts=uncond)
    np.testing.assert_array_equal(guided, plain)


def test_guidance_mixes_cond_and_uncond_logits(params, forward):
    scale = 3.0
    spans = G.SpanConfig(image_tokens=6, audio_frames=2, guidance_scale=scale)
    prompts = [[5, 9, 13, VOCAB.boi], [21, VOCAB.boa]]
    out = sample_ids(CONFIG, params, prompts, SamplingConfig(max_new_tokens=3, temperature=0.0), spans)
    for b, prompt in enumerate(prompts):
        uncond = G.null_prompt(VOCAB, prompt)
        rows = [prompt + out[b].tolist(), uncond + out[b].tolist()]
        logits = forward(rows)
        for t in range(3):
            allowed = sorted(reference_allowed(prompt + out[b, :t].tolist()))
            cond_logits = logits[0, len(prompt) - 1 + t, allowed]
            unc_logits = logits[1, len(uncond) - 1 + t, allowed]
            mixed = unc_logits + scale * (cond_logits - unc_logits)  # the CFG formula, in numpy
            assert out[b, t] == allowed[int(np.argmax(mixed))]
    # -inf (masked ids) stays -inf instead of NaN.
    g = G.guide(jnp.array([[-jnp.inf, 1.0]]), jnp.array([[-jnp.inf, 0.0]]), 2.0, jnp.array([True]))
    np.testing.assert_array_equal(np.asarray(g), [[-np.inf, 2.0]])


def test_prompt_validation():
    with pytest.raises(ValueError, match="more than the 6"):
        G.prompt_state(VOCAB, [VOCAB.boi] + [VOCAB.image_offset] * 7, SPANS)
    assert G.prompt_state(VOCAB, [VOCAB.boi, VOCAB.image_offset, VOCAB.eoi, 3], SPANS) == (G.MODE_TEXT, 0)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        sample_ids(CONFIG, None, [[VOCAB.used_size]], SamplingConfig())


def test_greedy_kv_cache_equals_full_forward_with_experts_and_span_positions():
    """The one-token decode steps feed each code's span index; the full forward computes it from the ids."""
    import dataclasses

    cfg = dataclasses.replace(CONFIG, lm=dataclasses.replace(CONFIG.lm, expert_attention=True, expert_mlp=True),
                              image_span_len=6, audio_span_len=4)
    model = TealLM(cfg)
    p = nn.unbox(jax.jit(model.init)(jax.random.key(1), jnp.zeros((1, 4), jnp.int32))["params"])
    rng = np.random.default_rng(0)  # non-zero span positions, so a wrong index changes the logits
    p["image_span_pos"] = jnp.asarray(rng.normal(0, 1.0, p["image_span_pos"].shape), jnp.float32)
    p["audio_span_pos"] = jnp.asarray(rng.normal(0, 1.0, p["audio_span_pos"].shape), jnp.float32)
    sampling = SamplingConfig(max_new_tokens=12, temperature=0.0)
    out = sample_ids(cfg, p, PROMPTS, sampling, SPANS)
    seqs = [q + row for q, row in zip(PROMPTS, out.tolist(), strict=True)]
    toks = np.zeros((len(seqs), 24), np.int32)
    for i, r in enumerate(seqs):
        toks[i, : len(r)] = r
    logits = np.asarray(jax.jit(lambda q, t: TealLM(cfg).apply({"params": q}, t))(p, jnp.asarray(toks)))
    for b, (prompt, row) in enumerate(zip(PROMPTS, out.tolist(), strict=True)):
        for t, tok in enumerate(row):
            allowed = sorted(reference_allowed(prompt + row[:t]))
            assert tok == allowed[int(np.argmax(logits[b, len(prompt) - 1 + t][allowed]))], (b, t)
