"""configs/teal/demo.py and the demo's stage configs: stages, experts, span positions, tokenizer sizes agree."""

import pytest

from configs.audio import speech_tiny
from configs.image import digits_tiny
from configs.teal import demo as demo_cfg
from teal_jax import demo
from teal_jax.models.teal import TealConfig


@pytest.mark.parametrize("variant,stage,experts", [
    ("", "frozen_stage1", False), ("expert", "frozen_expert", True), ("stage2", "frozen_stage2", False),
    ("full", "full", False), ("codebook", "frozen_stage1", False), ("expert,smoke", "frozen_expert", True)])
def test_variants_pick_stage_and_experts(variant, stage, experts):
    c = demo_cfg.get_config(variant)
    assert c.model.stage == stage
    assert c.model.lm.expert_attention is experts and c.model.lm.expert_mlp is experts
    tc = TealConfig.from_config(c)
    assert tc.image_span_len == demo_cfg.IMAGE_TOKENS == 16
    assert tc.audio_span_len == demo_cfg.AUDIO_FRAMES * tc.vocab.audio_levels_used
    assert c.model.nontext_init == "match_lm"


def test_unknown_variant_is_an_error():
    with pytest.raises(ValueError, match="unknown variant"):
        demo_cfg.get_config("expret")


def test_vocab_sizes_match_the_demo_tokenizers():
    """The TEAL vocab is stated in the config; the tokenizers the demo trains must produce exactly those ids."""
    img = digits_tiny.get_config("coarse").model
    codes = 1
    for lv in img.fsq_levels:
        codes *= lv
    assert codes == demo_cfg.IMAGE_CODES
    assert (img.image_size // 2 ** (len(img.channel_multipliers) - 1)) ** 2 == demo_cfg.IMAGE_TOKENS
    aud = speech_tiny.get_config("coarse").model
    hop = 1
    for r in aud.ratios:
        hop *= r
    assert aud.sample_rate // hop == demo_cfg.AUDIO_FRAME_RATE
    assert aud.codebook_size == demo_cfg.AUDIO_CODES and aud.num_levels == demo_cfg.AUDIO_LEVELS


def test_demo_stage_configs(tmp_path):
    w = str(tmp_path)
    expert = demo.teal_expert_config("default", w)
    assert expert.model.stage == "frozen_expert" and expert.data.audio_source.config == "medium"
    assert demo.audio_codec_config("default", w).data.config == "medium"
    assert demo.teal_stage2_config("default", w).model.base_lm_workdir.endswith("teal_stage1")
    for name in ("ablation_full", "ablation_codebook", "ablation_lora"):
        assert demo.TRAIN_STAGES[name]("default", w).train.steps == demo.ABLATION_STEPS
    lora = demo.ablation_lora_config("default", w)
    assert lora.model.stage == "frozen_stage1" and lora.model.lora.rank == 8
    assert demo.STAGE_ORDER.index("teal_expert") < demo.STAGE_ORDER.index("teal_stage1")
    quick = demo.teal_expert_config("quick", w)
    assert quick.train.steps < 50 and quick.data.audio_source.config == "tiny"


def test_input_tokenizer_variants_match_the_kmeans_configs():
    """semantic / continuous (teal_jax.demo_semantic): the input-only sizes and feature widths are those of the
    k-means tokenizers the comparison fits (MFCC frames of configs/audio/speech_kmeans.py, the latents of the demo
    image tokenizer, digits_tiny:coarse), and understanding trains only caption + asr."""
    from configs.audio import speech_kmeans
    from teal_jax.models.vqgan import VQGANConfig
    from teal_jax.tokenizers.semantic_demo import tokenizer_from_section

    mfcc = tokenizer_from_section(speech_kmeans.get_config().tokenizer)
    latent = VQGANConfig.from_config(digits_tiny.get_config("coarse").model).latent_channels
    cont = TealConfig.from_config(demo_cfg.get_config("understanding,continuous"))
    assert (cont.audio_in_dim, cont.image_in_dim) == (mfcc.feature_dim, latent) == (195, 64)
    assert (cont.vocab.image_in_size, cont.vocab.audio_in_size) == (demo_cfg.IMAGE_TOKENS, demo_cfg.AUDIO_FRAMES)
    sem = TealConfig.from_config(demo_cfg.get_config("semantic,audio_k=64,image_k=128"))
    assert (sem.vocab.image_in_size, sem.vocab.audio_in_size, sem.audio_in_dim) == (128, 64, 0)
    base = TealConfig.from_config(demo_cfg.get_config(None))
    assert sem.vocab.output_size == base.vocab.output_size == base.vocab.used_size  # output ids unchanged
    und = demo_cfg.get_config("understanding")
    assert {t for t, w in und.data.tasks.items() if w > 0} == {"caption", "asr"}
    assert sorted(und.evals.keys()) == ["asr", "caption"]
    with pytest.raises(ValueError, match="semantic"):
        demo_cfg.get_config("semantic,continuous")
