"""HF PEFT LoRA adapters <-> our LoRA factors: a tiny random LlamaForCausalLM wrapped with ``peft`` LoRA (random
non-zero B, so the adapter matters), built offline and saved with save_pretrained; our import of base + adapter gives
transformers+peft's logits, and our export loads back in peft with the same logits.

Tolerance: max |logit difference| <= 1e-4 (float32, 'highest' matmul precision on both sides; logits are O(1)).
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

peft = pytest.importorskip("peft", reason="peft is in the test extra: pip install -e '.[test]'")
import torch  # noqa: E402
import transformers  # noqa: E402

from teal_jax.convert.llama import import_llama  # noqa: E402
from teal_jax.convert.peft import export_peft, import_peft  # noqa: E402
from teal_jax.models import lora  # noqa: E402
from teal_jax.models.transformer import TransformerLM  # noqa: E402

TARGETS = ["q_proj", "v_proj", "o_proj", "down_proj", "lm_head"]


def _hf_logits(model, tokens):
    with torch.no_grad():
        return model(torch.as_tensor(tokens, dtype=torch.long)).logits.numpy()


@pytest.fixture(scope="module")
def peft_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("peft")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=101, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   rms_norm_eps=1e-5, tie_word_embeddings=False)
    base = transformers.LlamaForCausalLM(cfg).eval()
    base.save_pretrained(root / "base", safe_serialization=True)
    pcfg = peft.LoraConfig(r=4, lora_alpha=12, target_modules=TARGETS, lora_dropout=0.0, task_type="CAUSAL_LM")
    model = peft.get_peft_model(base, pcfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p) * 0.2)
    model.save_pretrained(root / "adapter")
    tokens = np.random.default_rng(0).integers(0, 101, (2, 13))
    return root, model, tokens


def _ours(cfg, lcfg, params, tokens):
    cfg = type(cfg)(**{**cfg.__dict__, "dtype": "float32"})
    model = TransformerLM(cfg)
    params = jax.tree.map(jnp.asarray, params)
    with jax.default_matmul_precision("highest"):
        y_lora = np.asarray(lora.apply(model, lcfg, {"params": params}, jnp.asarray(tokens)))
        y_merged = np.asarray(model.apply({"params": lora.merge(params, lcfg)}, jnp.asarray(tokens)))
    return y_lora, y_merged


def test_import_peft_adapter_matches_transformers_peft(peft_model):
    root, model, tokens = peft_model
    ref = _hf_logits(model, tokens)
    with model.disable_adapter():
        plain = _hf_logits(model, tokens)
    assert np.abs(ref - plain).max() > 0.05  # the adapter matters
    cfg, base = import_llama(str(root / "base"), dtype=np.float32)
    lcfg, factors, saved = import_peft(str(root / "adapter"), cfg)
    # peft saves lm_head's whole weight beside its factors (a target 'embedding layer'): the base's, unchanged
    assert set(saved) == {"lm_head/kernel"}
    np.testing.assert_array_equal(saved["lm_head/kernel"], base["lm_head"]["kernel"])
    assert (lcfg.rank, lcfg.alpha, lcfg.scale) == (4, 12.0, 3.0)
    params = lora.join(base, factors)
    assert set(lora.target_paths(params, lcfg)) == {("layers", "attn", "q_proj"), ("layers", "attn", "v_proj"),
                                                     ("layers", "attn", "o_proj"), ("layers", "mlp", "down_proj"),
                                                     ("lm_head",)}
    y_lora, y_merged = _ours(cfg, lcfg, params, tokens)
    np.testing.assert_allclose(y_lora, ref, atol=1e-4)
    np.testing.assert_allclose(y_merged, ref, atol=1e-4)


def test_export_loads_back_in_peft_with_the_same_logits(peft_model, tmp_path):
    root, model, tokens = peft_model
    ref = _hf_logits(model, tokens)
    cfg, base = import_llama(str(root / "base"), dtype=np.float32)
    lcfg, factors, _ = import_peft(str(root / "adapter"), cfg)
    export_peft(cfg, lcfg, lora.join(base, factors), str(tmp_path / "out"), base_model_name_or_path="tiny")
    # Same tensor names and shapes as peft's own file.
    theirs = safetensors.numpy.load_file(str(root / "adapter" / "adapter_model.safetensors"))
    ours = safetensors.numpy.load_file(str(tmp_path / "out" / "adapter_model.safetensors"))
    theirs.pop("base_model.model.lm_head.base_layer.weight")  # the base's own weight (see above)
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    for k in theirs:
        np.testing.assert_array_equal(ours[k], theirs[k], err_msg=k)
    fresh = transformers.LlamaForCausalLM.from_pretrained(str(root / "base")).eval()
    loaded = peft.PeftModel.from_pretrained(fresh, str(tmp_path / "out")).eval()
    np.testing.assert_allclose(_hf_logits(loaded, tokens), ref, atol=1e-5)


@pytest.mark.slow  # ~7 s on 2 cores; the export layout is covered above (bit-equal to peft's own file)
def test_trained_factors_export_and_load_in_peft(peft_model, tmp_path):
    """Factors of our own (random, rank 2, a different target set) -> peft logits == our LoRA forward."""
    root, _, tokens = peft_model
    cfg, base = import_llama(str(root / "base"), dtype=np.float32)
    lcfg = lora.LoraConfig(rank=2, alpha=3.0, targets=r"mlp/(gate|up)_proj|attn/k_proj")
    params = lora.init_adapters(jax.tree.map(jnp.asarray, base), lcfg, jax.random.key(0))
    rng = np.random.default_rng(1)
    params = jax.tree_util.tree_map_with_path(
        lambda p, v: jnp.asarray(rng.normal(0, 0.3, v.shape), v.dtype) if lora._keys(p)[-1] == "lora_b" else v,
        params)
    y_lora, _ = _ours(cfg, lcfg, params, tokens)
    export_peft(cfg, lcfg, params, str(tmp_path / "mine"))
    with open(tmp_path / "mine" / "adapter_config.json") as f:
        assert sorted(json.load(f)["target_modules"]) == ["gate_proj", "k_proj", "up_proj"]
    fresh = transformers.LlamaForCausalLM.from_pretrained(str(root / "base")).eval()
    loaded = peft.PeftModel.from_pretrained(fresh, str(tmp_path / "mine")).eval()
    np.testing.assert_allclose(_hf_logits(loaded, tokens), y_lora, atol=1e-4)


def test_unsupported_adapter_fields_are_named(peft_model, tmp_path):
    root, _, _ = peft_model
    cfg, _ = import_llama(str(root / "base"), dtype=np.float32)
    adapter = tmp_path / "bad"
    adapter.mkdir()
    os.link(root / "adapter" / "adapter_model.safetensors", adapter / "adapter_model.safetensors")
    with open(root / "adapter" / "adapter_config.json") as f:
        good = json.load(f)
    for field, value, message in (("use_dora", True, "use_dora=True is not supported"),
                                  ("layers_to_transform", [0], "layers_to_transform=\\[0\\] is not supported"),
                                  ("r", 8, "expected \\(8, 32\\)")):
        with open(adapter / "adapter_config.json", "w") as f:
            json.dump({**good, field: value}, f)
        with pytest.raises(ValueError, match=message):
            import_peft(str(adapter), cfg)
