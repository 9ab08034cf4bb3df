"""HF LlamaForCausalLM <-> TransformerLM: tiny random models built offline, logits compared in float32.

Tolerance: max |logit difference| <= 1e-4 (float32, 'highest' matmul precision on both sides).
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers

from teal_jax.convert.llama import export_llama, import_llama
from teal_jax.models.transformer import TransformerLM

SHAPES = {
    "mha_untied": dict(num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False, rope_theta=10_000.0),
    "gqa_tied": dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, rope_theta=500_000.0),
    "mqa_bias": dict(num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=False, rope_theta=1_000.0,
                     attention_bias=True, mlp_bias=True),
    # attention biases only: our use_bias gets zero MLP biases, which must not change the logits
    "gqa_attn_bias": dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                          rope_theta=20_000.0, attention_bias=True, mlp_bias=False),
}


def _hf_model(tmp_path, **kw):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=101, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                   max_position_embeddings=64, rms_norm_eps=1e-5, **kw)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # random, non-trivial norms and biases so every tensor matters
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if "norm" in name else 0.0))
    model.save_pretrained(tmp_path, safe_serialization=True)
    return model


def _hf_logits(model, tokens):
    with torch.no_grad():
        return model(torch.as_tensor(np.asarray(tokens), dtype=torch.long)).logits.numpy()


def _ours(cfg, params, tokens, positions=None, segments=None):
    return np.asarray(TransformerLM(cfg).apply({"params": jax.tree.map(jnp.asarray, params)}, jnp.asarray(tokens),
                                               positions, segments))


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_import_matches_transformers_and_export_round_trips(shape, tmp_path):
    hf = _hf_model(tmp_path / "hf", **SHAPES[shape])
    cfg, params = import_llama(str(tmp_path / "hf"), dtype=np.float32)
    cfg = type(cfg)(**{**cfg.__dict__, "dtype": "float32"})
    tokens = np.random.default_rng(0).integers(0, 101, (2, 17))
    ref = _hf_logits(hf, tokens)
    err = np.abs(_ours(cfg, params, tokens) - ref).max()
    print(f"{shape}: import max |logit error| = {err:.2e}")
    assert err <= 1e-4

    export_llama(cfg, params, str(tmp_path / "out"))
    back = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
    err = np.abs(_hf_logits(back, tokens) - ref).max()
    print(f"{shape}: export max |logit error| = {err:.2e}")
    assert err <= 1e-4


def test_packed_rows_match_documents_run_separately(tmp_path):
    hf = _hf_model(tmp_path / "hf", **SHAPES["gqa_tied"])
    cfg, params = import_llama(str(tmp_path / "hf"))
    cfg = type(cfg)(**{**cfg.__dict__, "dtype": "float32"})
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 101, (1, 7)), rng.integers(0, 101, (1, 9))
    row = np.concatenate([a, b], 1)
    seg = np.array([[1] * 7 + [2] * 9])
    pos = np.array([list(range(7)) + list(range(9))])
    got = _ours(cfg, params, row, jnp.asarray(pos), jnp.asarray(seg))
    np.testing.assert_allclose(got[:, :7], _hf_logits(hf, a), atol=1e-4)
    np.testing.assert_allclose(got[:, 7:], _hf_logits(hf, b), atol=1e-4)


def test_bad_checkpoints_give_clear_errors(tmp_path):
    _hf_model(tmp_path / "hf", **SHAPES["mha_untied"])
    with pytest.raises(FileNotFoundError, match="config.json"):
        import_llama(str(tmp_path / "nowhere"))
    cfg_path = tmp_path / "hf" / "config.json"
    good = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**good, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}))
    with pytest.raises(ValueError, match="rope scaling type 'llama3' is not supported"):
        import_llama(str(tmp_path / "hf"))
    cfg_path.write_text(json.dumps({**good, "intermediate_size": 64}))
    with pytest.raises(ValueError, match=r"mlp.gate_proj.weight.*shape \(48, 32\), expected \(64, 32\)"):
        import_llama(str(tmp_path / "hf"))
    cfg_path.write_text(json.dumps(good))
    weights = safetensors.numpy.load_file(tmp_path / "hf" / "model.safetensors")
    del weights["model.layers.1.mlp.up_proj.weight"]
    safetensors.numpy.save_file(weights, tmp_path / "hf" / "model.safetensors")
    with pytest.raises(KeyError, match=r"'model.layers.1.mlp.up_proj.weight' is missing .* in .*hf"):
        import_llama(str(tmp_path / "hf"))
    os.remove(tmp_path / "hf" / "model.safetensors")
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        import_llama(str(tmp_path / "hf"))


def test_bf16_and_sharded_checkpoints(tmp_path):
    hf = _hf_model(tmp_path / "hf", **SHAPES["gqa_tied"])
    hf.to(torch.bfloat16).save_pretrained(tmp_path / "bf16", safe_serialization=True, max_shard_size="20KB")
    assert (tmp_path / "bf16" / "model.safetensors.index.json").exists()
    cfg16, p16 = import_llama(str(tmp_path / "bf16"))
    cfg32, p32 = import_llama(str(tmp_path / "hf"))
    assert cfg16 == cfg32
    # Every float32 weight rounded to bf16 is exactly what the bf16 checkpoint holds.
    bf16 = lambda x: np.asarray(jnp.asarray(x, jnp.bfloat16).astype(jnp.float32))
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, bf16(b)), p16, p32)
