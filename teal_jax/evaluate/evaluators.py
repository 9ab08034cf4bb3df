"""Evaluators built from config: ``config.evals.<name> = {kind, every_steps, ...kind-specific fields}``.

The model is big_vision's ``evaluators/`` (one class per kind, built from its config section) and kauldron's
``evals``: a config names its evaluations, the trainer runs each at its interval, and ``main --mode=eval`` runs them
on a saved run. The protocol:

* ``Evaluator(section, run_config, *, name)``: ``section`` is the ``config.evals.<name>`` ConfigDict, ``run_config``
  the run's whole config (its data sources, sampling settings and lineage). Unknown or mistyped fields are a
  ValueError naming ``config.evals.<name>.<field>`` (the class's ``FIELDS`` state every field with its default).
* ``evaluator.run(model, *, workdir, step) -> dict``: ``model`` is what ``teal_jax.load(workdir)`` returns (a
  TealModel for a TEAL run, a LanguageModel for a text LM); the result holds the figures (scalars are logged) and
  anything JSON-serialisable; files go to :meth:`Evaluator.output_dir` = ``<workdir>/eval/<name>/step_<N>/``.
* :func:`run_evaluators` runs several in dependency order (an evaluator may read another's result at the same step,
  e.g. the guidance scale the ``text_to_image`` evaluator chose) and writes each result as ``results.json`` into
  its output dir.

``every_steps``: > 0 runs the evaluator during training every that many steps and at the final step; 0 runs it
only on demand (``main --mode=eval``, the demo's evaluate stage).

A new kind: a class with ``KIND``, ``FIELDS`` and ``run`` (subclass :class:`Evaluator`), registered in
``_EVALUATORS`` (or with :func:`register_evaluator` from outside the package); its module is imported only when a
config names the kind.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import ml_collections
import numpy as np

from teal_jax import paths
from teal_jax.evaluate.common import write_json

_EVALUATORS: dict[str, str] = {
    "caption": "teal_jax.evaluate.teal_evaluators:CaptionEvaluator",
    "text_to_image": "teal_jax.evaluate.teal_evaluators:TextToImageEvaluator",
    "asr": "teal_jax.evaluate.teal_evaluators:AsrEvaluator",
    "text_to_speech": "teal_jax.evaluate.teal_evaluators:TextToSpeechEvaluator",
    "reasoning": "teal_jax.evaluate.teal_evaluators:ReasoningEvaluator",
    "text_perplexity": "teal_jax.evaluate.teal_evaluators:TextPerplexityEvaluator",
    "coco_caption": "teal_jax.evaluate.captioning:CocoCaptionEvaluator",
    "asr_wer": "teal_jax.evaluate.asr_text:LibriSpeechWerEvaluator",
    "multiple_choice": "teal_jax.evaluate.multiple_choice:MultipleChoiceEvaluator",
    "fid": "teal_jax.evaluate.fid:FidEvaluator",
    "lm_harness": "teal_jax.evaluate.lm_harness:LmHarnessEvaluator",
}
COMMON_FIELDS = {"kind": str, "every_steps": int}
RESULTS_FILE = "results.json"


def register_evaluator(kind: str, target: str) -> None:
    """Registers ``'module.path:ClassName'`` under ``kind`` (for evaluators outside this package)."""
    _EVALUATORS[kind] = target


def evaluator_class(kind: str, *, where: str = "kind") -> type[Evaluator]:
    """The class registered for ``kind`` (its module imported now); ValueError naming ``where`` when unknown."""
    if kind not in _EVALUATORS:
        raise ValueError(f"{where}={kind!r} is not a known evaluator kind; choose one of {sorted(_EVALUATORS)}")
    module, cls = _EVALUATORS[kind].split(":")
    return getattr(importlib.import_module(module), cls)


def _type_ok(value: Any, want: type) -> bool:
    if want is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if want is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if want is tuple:
        return isinstance(value, (tuple, list))
    return isinstance(value, want)


class Evaluator:
    """Base of every evaluator: field checking, the output directory, and ``due``; see the module docstring."""

    KIND: ClassVar[str]
    FIELDS: ClassVar[dict[str, Any]] = {}  # kind-specific field -> default (its type is the default's type)
    DEPENDS: ClassVar[tuple[str, ...]] = ()  # fields naming other evaluators whose results this one reads

    def __init__(self, section: Mapping[str, Any], run_config: ml_collections.ConfigDict | None = None, *,
                 name: str = ""):
        self.name = name or self.KIND
        where = f"config.evals.{self.name}"
        fields = dict(section.items()) if section is not None else {}
        values = {k: v for k, v in self.FIELDS.items()}
        for key, value in fields.items():
            if key in COMMON_FIELDS:
                continue
            if key not in self.FIELDS:
                raise ValueError(f"{where}.{key}: unknown field of kind {self.KIND!r}; known fields: "
                                 f"{sorted([*COMMON_FIELDS, *self.FIELDS])}")
            want = type(self.FIELDS[key])
            if not _type_ok(value, want):
                raise ValueError(f"{where}.{key}={value!r} has type {type(value).__name__}, expected {want.__name__}")
            values[key] = tuple(value) if want is tuple else value
        every = fields.get("every_steps", 0)
        if not _type_ok(every, int) or every < 0:
            raise ValueError(f"{where}.every_steps={every!r} must be an int >= 0 (0: only on demand)")
        self.every_steps = int(every)
        self.fields = values
        self.run_config = run_config

    def __getattr__(self, key: str) -> Any:  # the fields read as attributes: self.per_class
        fields = self.__dict__.get("fields", {})
        if key in fields:
            return fields[key]
        raise AttributeError(f"{type(self).__name__} has no attribute {key!r}")

    def due(self, step: int, final: bool = False) -> bool:
        """Runs during training at multiples of ``every_steps`` and at the final step (never when 0)."""
        return self.every_steps > 0 and (final or step % self.every_steps == 0)

    def depends_on(self) -> list[str]:
        """Names of the evaluators whose results at the same step this one reads."""
        return [self.fields[f] for f in self.DEPENDS if self.fields.get(f)]

    def output_dir(self, workdir: str, step: int) -> str:
        return output_dir(workdir, self.name, step)

    def run(self, model, *, workdir: str, step: int) -> dict[str, Any]:
        raise NotImplementedError


def output_dir(workdir: str, name: str, step: int) -> str:
    """``<workdir>/eval/<name>/step_<step>``: where evaluator ``name`` writes its files and results at ``step``."""
    return paths.join(workdir, "eval", name, f"step_{int(step)}")


def read_result(workdir: str, name: str, step: int) -> dict[str, Any]:
    """The result evaluator ``name`` wrote at ``step`` (FileNotFoundError naming it when it has not run)."""
    import json

    path = paths.join(output_dir(workdir, name, step), RESULTS_FILE)
    if not paths.exists(path):
        raise FileNotFoundError(f"{path}: evaluator {name!r} has no result at step {step} (run it first)")
    return json.loads(paths.read_text(path))


def make_evaluators(config: ml_collections.ConfigDict, names: Sequence[str] | None = None) -> list[Evaluator]:
    """The evaluators ``config.evals`` names (all, or ``names``), in dependency order. Errors name the field:
    ``config.evals.<name>.kind`` for an unknown kind, ``config.evals.<name>.<field>`` for unknown / mistyped fields
    or a dependency on an evaluator that is missing or runs at another interval."""
    evals = config.get("evals") or {}
    chosen = list(evals.keys()) if names is None else list(names)
    out = {}
    for name in chosen:
        if name not in evals:
            raise ValueError(f"config.evals.{name}: no such evaluation; the config names {sorted(evals.keys())}")
        section = evals[name]
        if not hasattr(section, "get") or not isinstance(section.get("kind"), str):
            raise ValueError(f"config.evals.{name}.kind: every evaluation needs a kind (a string)")
        cls = evaluator_class(section["kind"], where=f"config.evals.{name}.kind")
        out[name] = cls(section, config, name=name)
    for name, ev in out.items():
        for field in ev.DEPENDS:
            dep = ev.fields.get(field)
            if not dep:
                continue
            if dep not in evals:
                raise ValueError(f"config.evals.{name}.{field}={dep!r}: no such evaluation in config.evals")
            if dep not in out:
                out[dep] = evaluator_class(evals[dep]["kind"])(evals[dep], config, name=dep)
            if out[dep].every_steps != ev.every_steps:
                raise ValueError(f"config.evals.{name}.{field}={dep!r}: it runs every {out[dep].every_steps} steps, "
                                 f"this one every {ev.every_steps}; they must run at the same steps")
    return _ordered(out)


def _ordered(evaluators: Mapping[str, Evaluator]) -> list[Evaluator]:
    """Dependencies first, otherwise in name order; a cycle is a ValueError."""
    done: list[Evaluator] = []
    seen: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in seen:
            return
        if name in path:
            raise ValueError(f"config.evals: evaluations depend on each other in a cycle: {' -> '.join(path)}")
        for dep in evaluators[name].depends_on():
            if dep in evaluators:
                visit(dep, (*path, name))
        seen.add(name)
        done.append(evaluators[name])

    for name in sorted(evaluators):
        visit(name, ())
    return done


def run_evaluators(evaluators: Sequence[Evaluator], model, *, workdir: str, step: int,
                   say=None) -> dict[str, dict[str, Any]]:
    """Runs ``evaluators`` (in the given order) on ``model``; writes each result to
    ``<workdir>/eval/<name>/step_<step>/results.json`` -> ``{name: result}``.

    A workdir with a scheme (``gs://``): evaluators write their files (PNG, WAV, JSON: through local file APIs) into
    a per-host local stand-in of the workdir (:func:`teal_jax.paths.local_cache_dir`, which also keeps their caches,
    e.g. FID's reference statistics), and each evaluator's output folder is copied to the workdir when it is done."""
    local = paths.local_cache_dir(workdir)  # the workdir itself when it is local
    results = {}
    for ev in evaluators:
        result = ev.run(model, workdir=local, step=step)
        write_json(os.path.join(ev.output_dir(local, step), RESULTS_FILE), result)
        if local != paths.resolve(workdir):
            paths.copy_tree(ev.output_dir(local, step), ev.output_dir(workdir, step))
        results[ev.name] = result
        if say is not None:
            say(f"eval {ev.name} @ step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in scalars({ev.name: result},
                                                                                               prefix=False).items()))
    return results


def scalars(results: Mapping[str, Mapping[str, Any]], *, prefix: bool = True) -> dict[str, float]:
    """The loggable figures of evaluator results: ``{'<name>/<key>': float}`` for every number or bool."""
    out = {}
    for name, result in results.items():
        for k, v in result.items():
            if isinstance(v, (bool, int, float, np.number, np.bool_)):
                out[f"{name}/{k}" if prefix else k] = float(v)
    return out


def model_from_params(config: ml_collections.ConfigDict, params: Mapping[str, Any], workdir: str):
    """What ``teal_jax.load(workdir)`` would return, from in-memory ``params`` (``{'model': tree}``): a TealModel
    for a 'teal' run, a LanguageModel for an 'lm' run (their ``from_params``); other run kinds are a ValueError naming
    the objective."""
    kind = config.get("objective", "lm")
    if kind == "teal":
        from teal_jax.inference.teal import TealModel

        return TealModel.from_params(config, params["model"], workdir)
    if kind == "lm":
        from teal_jax.inference.lm import LanguageModel

        return LanguageModel.from_params(config, params["model"], workdir)
    raise ValueError(f"config.evals: evaluators run on 'teal' and 'lm' runs; this run's objective is {kind!r}")
