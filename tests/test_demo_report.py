"""The demo report (the 'where targets are missed' section, the report's layout) and the demo's evaluate stage (the
demo config's evaluators on a stub model: guidance chosen on validation prompts, the figures read from what the
evaluators wrote; the stage's order of runs and borrowed guidance)."""

from teal_jax import demo_evaluate as DE
from teal_jax import demo_report as R
from teal_jax.evaluate.evaluators import Evaluator

MET = {"caption_accuracy": 0.97, "t2i_accuracy": 0.93, "asr_wer": 0.04, "tts_accuracy": 0.9,
       "reasoning_image_accuracy": 0.85, "reasoning_speech_accuracy": 0.81}


def test_nothing_when_every_target_is_met():
    assert R.missed_targets_section({"teal_stage2": MET}, "teal_stage2") == []


def test_missed_figures_and_the_runs_own_evidence():
    main = dict(MET, caption_accuracy=0.5547, asr_wer=0.5414, t2i_nll_true_prompt=170.0, t2i_nll_mean_prompt=170.3,
                t2i_likelihood_accuracy=0.1)
    figures = {"teal_stage2": main, R.BASELINE: dict(MET, caption_accuracy=0.2695, asr_wer=0.7134),
               "ablation_full": dict(MET, caption_accuracy=0.543, asr_wer=0.4236)}
    text = "\n".join(R.missed_targets_section(figures, "teal_stage2"))
    assert "captioning accuracy (held-out digits): 0.5547 (target >= 0.95)" in text
    assert "ASR word error rate (held-out voices): 0.5414 (target <= 0.05)" in text
    assert "TTS" not in text.split("Chance")[0]  # met targets are not listed as missed
    assert "170 nats vs 170.3" in text and "(0.3 nats apart)" in text
    assert "captioning accuracy 0.2695 -> 0.543" in text and "ASR word error rate 0.7134 -> 0.4236" in text
    assert R.RUN_LABELS[R.BASELINE] in text
    # without the step-matched baseline, stage 1 itself is the frozen side
    del figures[R.BASELINE]
    figures["teal_stage1"] = dict(MET, caption_accuracy=0.44)
    assert "captioning accuracy 0.44 -> 0.543" in "\n".join(R.missed_targets_section(figures, "teal_stage2"))


def test_conditioning_sentence_follows_the_likelihood_figure():
    row = dict(MET, t2i_accuracy=0.2, t2i_nll_true_prompt=150.0, t2i_nll_mean_prompt=160.0)
    near = "\n".join(R.missed_targets_section({"teal_stage1": dict(row, t2i_likelihood_accuracy=0.12)}, "teal_stage1"))
    above = "\n".join(R.missed_targets_section({"teal_stage1": dict(row, t2i_likelihood_accuracy=0.6)}, "teal_stage1"))
    assert "Near chance" in near and "Above chance" not in near
    assert "Above chance" in above and "Near chance" not in above


# ---- the evaluate stage: the demo config's evaluators, guidance chosen on validation prompts -------------------------
class FixedResult(Evaluator):
    """A stub evaluator kind: returns its section's ``value`` (registered as 'fixed_*' in _stub_run)."""

    KIND = "fixed"

    def __init__(self, section, run_config=None, *, name=""):
        self.value = dict(section.value)
        super().__init__({k: v for k, v in section.items() if k != "value"}, run_config, name=name)

    def run(self, model, *, workdir, step):
        return dict(self.value)


def _stub_run(monkeypatch, tmp_path, image_best=3.0, audio_best=2.0):
    """evaluate_run on a stub model: captioning, ASR and perplexity are stub evaluators with fixed results; the
    generation evaluators (text_to_image, text_to_speech, reasoning) are the demo config's, run for real on a model
    that is right only at its ``*_best`` guidance scale (test_teal_eval.GuidedStub), judged by stub judges."""
    import ml_collections
    from test_teal_eval import BrightnessClassifier, GuidedStub, LoudnessClassifier

    import teal_jax
    from teal_jax.evaluate import evaluators as EV
    from teal_jax.evaluate import teal_evaluators as TE

    class Stub(GuidedStub):
        max_batch = 64

        def _digits(self, texts, scale):
            self.batches.append(self.max_batch)
            self.best = image_best if self.kind == "image" else audio_best
            return super()._digits(texts, scale)

        def generate_image(self, texts, **kw):
            self.kind = "image"
            return super().generate_image(texts, **kw)

        def generate_speech(self, texts, **kw):
            self.kind = "audio"
            return super().generate_speech(texts, **kw)

    model = Stub(best=0.0)
    model.batches = []
    model.run_config = ml_collections.ConfigDict({
        "objective": "teal", "data": {"audio_seconds": 1.0, "audio_source": {
            "kind": "spoken_words", "data_dir": str(tmp_path / "data"), "config": "tiny"}},
        "sample": {"temperature": 0.7, "top_p": 0.9, "top_k": 0, "seed": 5}})
    monkeypatch.setattr(teal_jax, "load", lambda run_dir, step=None: model)
    monkeypatch.setattr(TE, "digit_judge", lambda *a: BrightnessClassifier())
    monkeypatch.setattr(TE, "speech_judge", lambda *a: LoudnessClassifier())
    for kind in ("caption", "asr", "text"):
        monkeypatch.setitem(EV._EVALUATORS, f"fixed_{kind}", "test_demo_report:FixedResult")
    evals = DE.demo_evals("quick", str(tmp_path))
    evals.t2i.likelihood_images = 0
    evals.caption = dict(kind="fixed_caption", value={"accuracy": 0.9, "exact_match": 0.8, "forced_choice": 0.7})
    evals.asr = dict(kind="fixed_asr", value={"wer": 0.1, "exact_match": 0.7, "clips_fit": 1, "clips_total": 2,
                                              "audio_seconds": 1.0})
    evals.text = dict(kind="fixed_text", value={"teal_ppl": 2.5, "base_ppl": 2.5, "logits_bitwise_equal": True,
                                                "max_abs_logit_diff": 0.0})
    return model, evals


def test_evaluate_run_chooses_guidance_on_validation_then_evaluates_held_out_with_it(monkeypatch, tmp_path):
    import json

    from test_teal_eval import HELD_OUT_QUESTIONS

    from teal_jax.data import templates as T

    model, evals = _stub_run(monkeypatch, tmp_path)
    plan = DE.sampling_plan(evals, model.run_config.sample)
    assert plan["validation_seed"] == 6 and plan["seed"] == 5 and plan["reasoning_n"] == 15
    assert not {tuple(p) for p in plan["validation_pairs"]} & set(T.REASONING_EVAL_PAIRS)
    run = tmp_path / "run"
    figs, text_row, info = DE.evaluate_run(str(run), evals, step=7)
    assert figs["guidance_image"] == 3.0 and figs["guidance_speech"] == 2.0
    assert info["guidance"]["image"]["accuracy"] == {"1": 0.0, "2": 0.0, "3": 1.0}
    assert figs["t2i_accuracy"] == figs["reasoning_image_accuracy"] == 1.0  # held-out at the chosen scales
    assert figs["tts_accuracy"] == figs["reasoning_speech_accuracy"] == 1.0
    assert figs["text_logits_bitwise_equal"] is True and figs["caption_forced_choice"] == 0.7
    assert text_row == {"ppl": 2.5, "bitwise": True, "base_ppl": 2.5, "max_abs_logit_diff": 0.0}
    # the report's figures are what the evaluators wrote
    written = {n: json.loads((run / "eval" / n / "step_7" / "results.json").read_text())
               for n in ("t2i", "tts", "reasoning", "caption")}
    assert figs["t2i_accuracy"] == written["t2i"]["accuracy"] and figs["guidance_image"] == written["t2i"]["guidance"]
    assert figs["reasoning_speech_accuracy"] == written["reasoning"]["speech_accuracy"]
    assert written["reasoning"]["image_guidance"] == 3.0 and written["caption"]["accuracy"] == figs["caption_accuracy"]
    validation = [c for c in model.asked if c[2]["seed"] == plan["validation_seed"]]
    heldout = [c for c in model.asked if c[2]["seed"] == plan["seed"]]
    assert len(validation) == 6 and len(heldout) == 4 and len(model.asked) == 10  # 3 scales x 2 modalities
    for _, prompts, _ in validation:
        assert not set(prompts) & HELD_OUT_QUESTIONS and len(prompts) == plan["reasoning_n"]
    for kind, _, kwargs in heldout:
        assert kwargs["guidance_scale"] == (3.0 if kind == "t2i" else 2.0)
        assert (kwargs["temperature"], kwargs["top_p"], kwargs["top_k"]) == (0.7, 0.9, 0)
    asked = {p for c in heldout for p in c[1]}
    assert HELD_OUT_QUESTIONS <= asked
    assert set(model.batches) == {plan["reasoning_n"]} and model.max_batch == 64  # one batch shape, then restored
    s = run / "eval"
    assert (s / "t2i" / "step_7" / "t2i_grid.png").exists()
    assert (s / "reasoning" / "step_7" / "reasoning_image_grid.png").exists()
    wavs = sorted((s / "tts" / "step_7").glob("*.wav"))
    assert wavs and all(w.with_suffix(".png").exists() for w in wavs)

    # given scales (an ablation using strict TEAL's): no validation sampling at all
    model.asked.clear()
    given = {m: {"chosen": 2.0, "from": "teal_stage1"} for m in ("image", "audio")}
    figs, _, info = DE.evaluate_run(str(tmp_path / "run2"), evals, guidance=given, step=3)
    assert all(c[2]["seed"] == plan["seed"] and c[2]["guidance_scale"] == 2.0 for c in model.asked)
    assert len(model.asked) == 4 and figs["t2i_accuracy"] == 0.0 and figs["tts_accuracy"] == 1.0
    assert info["guidance"] == given


def _evaluation(tmp_path):
    expert = dict(MET, caption_accuracy=0.97, text_logits_bitwise_equal=True, guidance_image=2.0)
    stage1 = dict(MET, caption_accuracy=0.8, t2i_accuracy=0.7, tts_accuracy=0.2, text_logits_bitwise_equal=True)
    val = {"chosen": 2.0, "accuracy": {"1": 0.5, "2": 0.7, "3": 0.6}, "digit_accuracy": {"1": 0.6, "2": 0.8, "3": 0.7},
           "reasoning_accuracy": {"1": 0.4, "2": 0.6, "3": 0.5}, "n": 60}
    evaluation = {
        "runs": {"teal_expert": expert, "teal_stage1": stage1, "ablation_full": dict(MET, caption_accuracy=0.9)},
        "sampling": DE.sampling_plan(DE.demo_evals("default", str(tmp_path)),
                                     {"temperature": 0.7, "top_p": 0.9, "top_k": 0, "seed": 0}),
        "guidance": {"teal_expert": {"image": val, "audio": dict(val, chosen=1.0)}, "teal_stage1": {
            "image": val, "audio": val}, "ablation_full": {m: {"chosen": 2.0, "from": "teal_stage1"}
                                                           for m in ("image", "audio")}},
        "timing": {"teal_expert": {"validation_s": 40.0, "generation_s": 30.0}},
        "grids": {"teal_expert": {"text-to-image, one row per prompted digit": "samples/teal_expert/t2i/t2i_grid.png"}},
        "wav_dirs": {"teal_expert": ["samples/teal_expert/tts"]}, "wall_s": 300.0}
    return evaluation


def test_report_leads_with_the_expert_run_then_strict_teal_then_settings_and_ablations(tmp_path):
    text = open(R.write_report(str(tmp_path), "default", {}, _evaluation(tmp_path))).read()
    assert "## Input tokenizers" not in text  # no teal_jax.demo_semantic results
    order = [text.index(h) for h in ("## Main result: frozen LM + modality-expert attention", "## Strict TEAL",
                                     "## Sampling settings", "## Every TEAL run")]
    assert order == sorted(order)
    lead = text[order[0]:order[1]]
    assert "| frozen text logits bitwise equal to the base LM's | yes | yes | yes |" in lead
    assert "![teal_expert: text-to-image, one row per prompted digit](samples/teal_expert/t2i/t2i_grid.png)" in lead
    assert "spectrogram beside it" in lead and "Where targets are missed" not in lead  # every expert target met
    strict = text[order[1]:order[2]]
    assert "| captioning accuracy (held-out digits) | 0.8 | >= 0.85 | no |" in strict
    assert "| text-to-image judged correct (digit classifier) | 0.7 | >= 0.6 | yes |" in strict
    assert "| TTS judged correct (spoken-word classifier) | 0.2 | | |" in strict  # no strict target: no verdict
    assert "### Where targets are missed (strict TEAL (frozen, stage 1))" in strict
    assert "TTS" not in strict.split("### Where")[1].split("Chance")[0]
    assert "With modality-expert attention weights" in strict
    settings = text[order[2]:order[3]]
    for needle in ("temperature 0.7", "top-p 0.9", "top-k 0", "held-out seed 0", "seed 1", "10 per digit",
                   "4 per held-out sum pair (60 per modality)", "[1.0, 2.0, 3.0]",
                   "| frozen LM + modality-expert attention | images | 2 | 1: 0.5 (0.6 / 0.4); 2: 0.7 (0.8 / 0.6)",
                   "| frozen LM + modality-expert attention | speech | 1 |",
                   "| full fine-tuning | images | 2 | strict TEAL (frozen, stage 1)'s |",
                   "guidance validation 40 s and held-out generation 30 s of the evaluation's 300 s"):
        assert needle in settings, needle
    assert text.index("| frozen LM + modality-expert attention |", order[3]) < text.index("| full fine-tuning |",
                                                                                            order[3])


def test_evaluate_stage_evaluates_the_finished_runs_in_order_and_ablations_borrow_strict_teals_guidance(
        monkeypatch, tmp_path):
    import json
    import os

    import ml_collections

    from teal_jax import checkpoint

    finished = ("teal_stage1", "ablation_full", "teal_expert", "teal_stage2")  # no ablation_codebook
    for r in finished:
        (tmp_path / r).mkdir()
        (tmp_path / r / "stage_result.json").write_text(json.dumps({"stage": r, "steps": 10}))
    cfg = ml_collections.ConfigDict({"data": {"audio_seconds": 1.0}, "sample": {"temperature": 0.7, "top_p": 0.9,
                                                                                 "top_k": 0, "seed": 0}})
    monkeypatch.setattr(DE, "_classifiers", lambda *a: {})
    monkeypatch.setattr(checkpoint, "read_config", lambda d: cfg)
    monkeypatch.setattr(DE, "ablation_baseline_step", lambda workdir: 5)
    monkeypatch.setattr(DE, "_latest_step", lambda run_dir: 10)
    calls = []

    def fake_run(run_dir, evals, *, guidance=None, step=None):
        name = os.path.basename(run_dir) if step is None else R.BASELINE
        calls.append((name, os.path.basename(run_dir), step, guidance))
        assert evals.t2i.digit_judge_dir == str(tmp_path / "classifiers" / "digits")
        chosen = guidance or {m: {"chosen": {"teal_expert": 3.0, "teal_stage1": 2.0}.get(name, 1.0),
                                  "accuracy": {"1": 0.1, "2": 0.2, "3": 0.3}, "digit_accuracy": {},
                                  "reasoning_accuracy": {}, "n": 15, "wall_s": 1.0} for m in ("image", "audio")}
        figs = {"caption_accuracy": 0.5, "guidance_image": chosen["image"]["chosen"]}
        return figs, {"ppl": 2.0, "bitwise": True, "base_ppl": 2.0}, {
            "guidance": chosen, "validation_s": 1.0, "generation_s": 2.0,
            "asr": {"clips_fit": 3, "clips_total": 4, "audio_seconds": 1.0}}

    monkeypatch.setattr(DE, "evaluate_run", fake_run)
    out = DE.evaluate_stage(str(tmp_path), "quick", {})
    assert [c[0] for c in calls] == ["teal_expert", "teal_stage1", R.BASELINE, "teal_stage2", "ablation_full"]
    assert calls[2][1:3] == ("teal_stage1", 5)  # stage 1 again at the ablations' step
    assert calls[0][3] is None and calls[1][3] is None  # the lead runs choose their own scales
    for name, _, _, given in calls[2:]:
        assert given == {m: {"chosen": 2.0, "from": "teal_stage1"} for m in ("image", "audio")}, name
    assert out["runs"]["teal_expert"]["guidance_image"] == 3.0 and out["runs"]["ablation_full"]["guidance_image"] == 2.0
    results = json.loads((tmp_path / "evaluate" / "results.json").read_text())
    assert list(results) == ["runs", "text", "classifiers", "sampling", "guidance", "timing", "notes", "tokenizers",
                             "wall_s"]
    assert results["sampling"]["validation_seed"] == 1 and results["timing"]["teal_stage2"]["generation_s"] == 2.0
    assert results["notes"][0].startswith("ASR is scored on the 3 of 4 held-out clips that fit one 1 s audio span")
    assert "stage 1's checkpoint at step 5" in results["notes"][1]
    report = (tmp_path / "report.md").read_text()
    assert report.index("## Main result: frozen LM + modality-expert attention") < report.index("## Strict TEAL")


def test_input_tokenizer_comparison_in_both_reports(tmp_path):
    """teal_jax.demo_semantic's report: per condition the mean and min-max over seeds, the k-means fits, the probes;
    the demo's report.md shows the same tables once semantic/results.json exists."""
    from teal_jax import demo_semantic as S

    def run(cap, wer, seed):
        return {"steps": 600, "seed": seed, "train_wall_s": 100.0, "eval_wall_s": 5.0,
                "figures": {"caption_accuracy": cap, "caption_forced_choice": cap, "caption_exact_match": cap,
                            "asr_wer": wer, "asr_exact_match": 0.5}}

    runs = {"reconstruction": run(0.8, 0.5, 0), "semantic_i256_a256": run(0.9, 0.4, 0),
            "reconstruction_s1": run(0.7, 0.6, 1), "semantic_i256_a64": run(0.85, 0.45, 0)}
    kmeans = {"audio_kmeans_64": {"k": 64, "total_usage": 1.0, "perplexity": 55.6, "wall_s": 12.0}}
    probes = {"reconstruction": {m: {"accuracy": 0.95, "chance": 0.1} for m in ("image", "audio")}}
    out = tmp_path / "semantic"
    out.mkdir()
    text = S.report(str(out), kmeans, runs, probes)
    assert "| reconstruction | image VQ codes (64) / codec level-1 codes (64) | 0,1 | 0.750 (0.700-0.800) |" in text
    assert "| 0.550 (0.500-0.600) |" in text  # WER mean and range over the two seeds
    assert "| semantic_i256_a64 | k-means codes: image 256 / audio 64 | 0 | 0.850 |" in text
    assert "| audio_kmeans_64 | 64 | 1.000 | 55.6 | 12 |" in text
    assert "| reconstruction | 0.950 | 0.950 | 0.100 / 0.100 |" in text
    demo_report = open(R.write_report(str(tmp_path), "default", {}, _evaluation(tmp_path))).read()
    section = demo_report[demo_report.index("## Input tokenizers"):]
    assert "| reconstruction | image VQ codes (64) / codec level-1 codes (64) | 0,1 | 0.750 (0.700-0.800) |" in section
