"""The one training loop, for every model kind (LM, image tokenizer, audio codec, TEAL).

What it owns: mesh + shardings (from the logical names the objective's parameters carry), one Optax optimizer per
parameter group, gradient accumulation, NaN/Inf detection, logging, periodic evaluation, checkpoints (periodic, final
and on SIGTERM/SIGINT) and exact resumption (train state + data-iterator state). What it does not own: anything
model-specific, which comes from the ``Objective`` (teal_jax/train/objective.py).

The train step is ``jax.jit`` with explicit in/out shardings and the state donated (pjit). A step whose loss or
gradient norm is not finite leaves the state unchanged (a select inside the step), so the run can stop with the last
good state saved and the offending batch written to ``<workdir>/nan_debug/``.
"""

from __future__ import annotations

import json
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import linen as nn

from teal_jax import config as config_lib
from teal_jax import paths
from teal_jax.checkpoint import Checkpointer
from teal_jax.evaluate import evaluators as evaluators_lib
from teal_jax.models.param_count import count_params, format_counts
from teal_jax.parallel import sharding as shd
from teal_jax.train import metrics as metrics_lib
from teal_jax.train import optim
from teal_jax.train.objective import Objective, make_objective


class NonFiniteError(FloatingPointError):
    """Raised when a step's loss or gradient norm is NaN/Inf."""


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _tile_to(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """A host batch tiled/sliced to ``size`` examples (used for shapes at init)."""
    out = {}
    for k, v in batch.items():
        v = np.asarray(v)
        reps = -(-size // v.shape[0])
        out[k] = np.concatenate([v] * reps, axis=0)[:size]
    return out


def _mirror_shardings(opt_state: Any, params: Any, param_shardings: Any, default: Any) -> Any:
    """Shardings for an optimizer state: a leaf whose tree path ends with a parameter's path and has that
    parameter's shape (Adam's mu/nu, inside any wrapper: masks, multi_transform, chains) takes its sharding; every
    other leaf (counters, masked-out placeholders) gets ``default``."""
    by_path = {}
    for (path, leaf), sh in zip(jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(param_shardings),
                                strict=True):
        by_path[tuple(str(k) for k in path)] = (leaf.shape, sh)
    longest = max((len(k) for k in by_path), default=0)

    def pick(path, leaf):
        keys = tuple(str(k) for k in path)
        for n in range(min(longest, len(keys)), 0, -1):
            hit = by_path.get(keys[-n:])
            if hit is not None and hit[0] == getattr(leaf, "shape", None):
                return hit[1]
        return default

    return jax.tree_util.tree_map_with_path(pick, opt_state)


class Trainer:
    """Builds everything for ``config`` in ``workdir``; ``run()`` trains (resuming if a checkpoint exists)."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str, *, objective: Objective | None = None,
                 devices=None):
        config_lib.validate(config)
        self.config = config
        self.workdir = paths.resolve(workdir)  # local: absolute; gs://... and other schemes: as written
        paths.makedirs(self.workdir)
        self.objective = objective or make_objective(config)
        # Built before any work starts: an unknown kind or field in config.evals stops here.
        self.evaluators = evaluators_lib.make_evaluators(config)
        t = config.train
        self.mesh = shd.make_mesh(config.mesh.shape, devices, config.mesh.get("dcn_shape"))
        self.writer = metrics_lib.MetricWriter(self.workdir)
        self.writer.print(f"mesh {dict(self.mesh.shape)} over {self.mesh.devices.size} devices "
                          f"({jax.devices()[0].device_kind}), {jax.process_count()} process(es)")

        # ---- batch geometry ---------------------------------------------------------------------------------
        shards = shd.batch_shards(self.mesh)
        if t.get("per_device_batch_size", 0) > 0:  # the global batch follows the mesh
            t.batch_size = int(t.per_device_batch_size) * shards
            self.writer.print(f"global batch {t.batch_size} = per_device_batch_size {t.per_device_batch_size} x "
                              f"{shards} batch shards")
        micro = t.batch_size // t.grad_accum
        if micro % shards:
            raise ValueError(
                f"config.train.batch_size={t.batch_size} / grad_accum={t.grad_accum} = {micro} examples per "
                f"microbatch, which does not divide over the {shards} batch shards of mesh axes {shd.BATCH_AXES}"
            )
        # Every batch shard on one process only, the same share per process: each process feeds its own rows.
        self.host_batch = shd.check_batch_layout(tuple(self.mesh.devices.shape), shd.device_processes(self.mesh),
                                                 t.batch_size)

        # ---- data (process 0 prepares first: datasets, tokenizers) -------------------------------------------
        # (a non-local workdir keeps its data cache per host: paths.data_dir; its processes take turns on it)
        if jax.process_index() == 0:
            paths.with_host_lock(self.workdir, self.objective.prepare, self.workdir)
        _barrier("teal_jax_prepare")
        if jax.process_index() != 0:
            paths.with_host_lock(self.workdir, self.objective.prepare, self.workdir)
        self.train_iter = self._make_iter("train")
        start = self.train_iter.get_state()
        example = next(self.train_iter)
        self.train_iter.set_state(start)
        # One global microbatch worth of (real) examples: init uses it for shapes and for data-dependent inits.
        self.example = _tile_to(example, micro)
        self.example_global = self.example

        # ---- abstract state, shardings ----------------------------------------------------------------------
        self.rng = jax.random.key(config.seed)
        init_rng, self.state_rng = jax.random.split(self.rng)
        boxed = jax.eval_shape(lambda r: self.objective.init(r, self.example_global), init_rng)
        boxed_params, boxed_mstate = boxed
        param_logical = nn.get_partition_spec(boxed_params)
        shd.check_divisible(nn.unbox(boxed_params), param_logical, self.mesh)
        self.param_shardings = shd.logical_to_sharding(param_logical, self.mesh)
        mstate_shardings = jax.tree.map(lambda _: shd.replicated(self.mesh), nn.unbox(boxed_mstate))
        self.groups = tuple(sorted(boxed_params))
        abstract_params = nn.unbox(boxed_params)
        self.trainable = self.objective.trainable(abstract_params)
        self.txs, self.lr_fns = {}, {}
        for g in self.groups:
            self.txs[g], self.lr_fns[g] = optim.make_optimizer(
                optim.group_config(config, g), t.steps, self.trainable[g])
        self._print_param_counts(abstract_params)

        def init_params(rng):
            params, mstate = self.objective.init(rng, self.example_global)
            return nn.unbox(params), nn.unbox(mstate)

        self._init_params = jax.jit(init_params, out_shardings=(self.param_shardings, mstate_shardings))
        init_opt = lambda p: {g: self.txs[g].init(p[g]) for g in self.groups}
        # Optimizer-state leaves that mirror a parameter (Adam moments) take that parameter's sharding; the rest
        # (step counters) are replicated.
        abstract_opt = jax.eval_shape(init_opt, abstract_params)
        rep = shd.replicated(self.mesh)
        opt_shardings = {g: _mirror_shardings(abstract_opt[g], abstract_params[g], self.param_shardings[g], rep)
                         for g in self.groups}
        self._init_opt = jax.jit(init_opt, out_shardings=opt_shardings)
        self._abstract_shapes = {
            "step": jax.ShapeDtypeStruct((), jnp.int32), "params": abstract_params, "opt_state": abstract_opt,
            "model_state": nn.unbox(boxed_mstate), "rng": jax.eval_shape(lambda: jax.random.key_data(self.rng)),
        }
        self.state_shardings = {
            "step": rep, "params": self.param_shardings, "opt_state": opt_shardings,
            "model_state": mstate_shardings, "rng": rep,
        }
        self.batch_sharding = shd.batch_sharding(self.mesh)
        self._train_step = jax.jit(
            self._step_fn, in_shardings=(self.state_shardings, self.batch_sharding),
            out_shardings=(self.state_shardings, rep), donate_argnums=(0,),
        )
        self._eval_step = jax.jit(
            self._eval_fn, in_shardings=(self.param_shardings, mstate_shardings, self.batch_sharding),
            out_shardings=rep,
        )
        self.checkpointer = Checkpointer(self.workdir, keep=t.keep_checkpoints,
                                         async_save=t.get("async_checkpoints", True))

    # ---- construction helpers ---------------------------------------------------------------------------------
    def _make_iter(self, split: str):
        return self.objective.make_data(split, batch_size=self.host_batch, process_index=jax.process_index(),
                                        process_count=jax.process_count())

    def _print_param_counts(self, params) -> None:
        counts = count_params({g: params[g] for g in self.groups}, {g: self.trainable[g] for g in self.groups})
        self.writer.print("parameters:\n" + format_counts(counts))

    def init_state(self) -> dict[str, Any]:
        init_rng, state_rng = jax.random.split(self.rng)
        with shd.set_mesh(self.mesh), shd.axis_rules():
            params, mstate = self._init_params(init_rng)
            opt_state = self._init_opt(params)
        rep = shd.replicated(self.mesh)
        return {
            "step": jax.device_put(jnp.zeros((), jnp.int32), rep), "params": params, "opt_state": opt_state,
            "model_state": mstate, "rng": jax.device_put(jax.random.key_data(state_rng), rep),
        }

    def abstract_state(self) -> dict[str, Any]:
        """The train state's shapes with this run's shardings: the restore target on the current mesh."""
        shapes = self._abstract_shapes
        return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes,
                            self.state_shardings)

    # ---- the step ---------------------------------------------------------------------------------------------
    def _step_fn(self, state, batch):
        t = self.config.train
        step = state["step"]
        rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), step)
        params = state["params"]
        if t.grad_accum == 1:
            grads, mstate, metrics = self.objective.grads(params, state["model_state"], batch, rng, step)
        else:
            # Microbatch i takes rows i, i+A, i+2A, ...: with the batch sharded by rows, every device keeps
            # its own rows (no resharding), since each device's block holds whole groups of A rows.
            micro = jax.tree.map(
                lambda x: jnp.swapaxes(x.reshape((x.shape[0] // t.grad_accum, t.grad_accum) + x.shape[1:]), 0, 1),
                batch)

            def body(carry, inp):
                g_acc, m_acc, ms = carry
                i, mb = inp
                g, ms, m = self.objective.grads(params, ms, mb, jax.random.fold_in(rng, i), step)
                return (jax.tree.map(jnp.add, g_acc, g), jax.tree.map(jnp.add, m_acc, m), ms), None

            mb0 = jax.tree.map(lambda x: x[0], micro)
            g_shape, _, m_shape = jax.eval_shape(self.objective.grads, params, state["model_state"], mb0, rng, step)
            zeros = lambda tree: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), tree)
            (grads, metrics, mstate), _ = jax.lax.scan(
                body, (zeros(g_shape), zeros(m_shape), state["model_state"]),
                (jnp.arange(t.grad_accum), micro))
            grads = jax.tree.map(lambda g: g / t.grad_accum, grads)
            metrics = jax.tree.map(lambda m: m / t.grad_accum, metrics)

        new_params, new_opt, finite = {}, {}, jnp.isfinite(metrics["loss"])
        metrics = dict(metrics)
        for g in self.groups:
            trainable_grads = [x for x, tr in zip(jax.tree.leaves(grads[g]), jax.tree.leaves(self.trainable[g]),
                                                  strict=True) if tr]
            gnorm = optax.global_norm(trainable_grads) if trainable_grads else jnp.zeros(())
            metrics[f"grad_norm/{g}"] = gnorm
            metrics[f"lr/{g}"] = self.lr_fns[g](step)
            finite &= jnp.isfinite(gnorm)
            updates, new_opt[g] = self.txs[g].update(grads[g], state["opt_state"][g], params[g])
            new_params[g] = optim.apply_updates(params[g], updates, self.trainable[g])
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
        new_state = {
            "step": step + 1,
            "params": keep(new_params, params),
            "opt_state": keep(new_opt, state["opt_state"]),
            "model_state": keep(mstate, state["model_state"]),
            "rng": state["rng"],
        }
        metrics["finite"] = finite
        return new_state, metrics

    def _eval_fn(self, params, mstate, batch):
        return self.objective.eval_metrics(params, mstate, batch)

    # ---- evaluation -------------------------------------------------------------------------------------------
    def evaluate(self, state, step: int, *, losses: bool = True, final: bool = False,
                 evaluators: list | None = None) -> dict[str, float]:
        """Eval metrics at ``step``: the objective's (``eval_batches`` batches + ``on_eval``) when ``losses``, then
        every ``config.evals`` evaluator due at this step (all of ``evaluators`` when given), their scalars as
        ``<name>/<figure>``; logged together with the writer."""
        t = self.config.train
        values: dict[str, float] = {}
        if losses:
            it = self._make_iter("eval")
            sums: dict[str, float] = {}
            n = 0
            with shd.set_mesh(self.mesh), shd.axis_rules():
                for _ in range(t.eval_batches):
                    try:
                        local = next(it)
                    except StopIteration:
                        break
                    out = jax.device_get(self._eval_step(state["params"], state["model_state"],
                                                         shd.global_batch(local, self.mesh)))
                    for k, v in out.items():
                        sums[k] = sums.get(k, 0.0) + float(v)
                    n += 1
                values = {k: v / max(n, 1) for k, v in sums.items()}
                values.update({k: float(v) for k, v in
                               self.objective.on_eval(state["params"], state["model_state"], self.workdir,
                                                      step).items()})
        due = evaluators if evaluators is not None else [e for e in self.evaluators if e.due(step, final)]
        if due:
            values.update(evaluators_lib.scalars(self.run_evaluators(state["params"], step, due)))
        if values:
            self.writer.write(step, "eval", values)
            self.writer.print(f"eval @ step {step}: " + " | ".join(f"{k} {v:.4g}" for k, v in values.items()))
        return values

    def run_evaluators(self, params, step: int, evaluators: list) -> dict[str, dict]:
        """Runs ``evaluators`` on the model built from ``params`` (host-side work: process 0 only, after every
        process has gathered the parameters) -> ``{name: result}`` (empty on the other processes)."""
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            params = multihost_utils.process_allgather(params, tiled=True)
        if jax.process_index() != 0:
            return {}
        model = evaluators_lib.model_from_params(self.config, jax.device_get(params), self.workdir)
        return evaluators_lib.run_evaluators(evaluators, model, workdir=self.workdir, step=step,
                                             say=self.writer.print)

    # ---- checkpoints ------------------------------------------------------------------------------------------
    def save(self, state, step: int) -> None:
        # A signal that arrives right after a periodic save asks for the same step again: it is already saved.
        if step in self.checkpointer.all_steps():
            return
        self.checkpointer.save(step, state, self.train_iter.get_state(), self.config)

    def restore_or_init(self):
        """The newest checkpoint that verifies (newer ones that do not are reported and set aside), else a fresh
        state."""
        found = self.checkpointer.restore_latest(self.abstract_state(), say=self.writer.print)
        if found is None:
            return self.init_state(), 0
        step, state, data_state, _ = found
        self.writer.print(f"resuming from {self.checkpointer.step_dir(step)}")
        if data_state is None:
            self.writer.print(f"the checkpoint was written by another number of processes than this run's "
                              f"{jax.process_count()}: weights and optimizer state are resharded onto this mesh; "
                              "the data order restarts from the beginning of each host's share (deterministic, "
                              "but not the batches an uninterrupted run would have seen)")
        else:
            self.train_iter.set_state(data_state)
        return state, int(step)

    def _dump_nan(self, step: int, batch: dict[str, np.ndarray], values: dict[str, float],
                  data_state_before: Any) -> str:
        """``nan_debug/step_N/``: this host's batch (npz), the step's metrics, and ``replay_process<i>.json`` with
        the batch's index in the run's data order and the data-iterator state just before it (``set_state`` it and
        the next batch is the offending one)."""
        path = paths.join(self.workdir, "nan_debug", f"step_{step}")
        paths.makedirs(path)
        paths.save_npz(paths.join(path, f"batch_process{jax.process_index()}.npz"), batch)
        paths.write_text(paths.join(path, "metrics.json"), json.dumps(values, indent=1))
        paths.write_text(paths.join(path, f"replay_process{jax.process_index()}.json"), json.dumps(
            {"step": step, "batch_index": step - 1, "data_state_before": data_state_before}, indent=1))
        return path

    def _check_last_good(self, state, step: int) -> None:
        """The state a non-finite stop names must be finite and its checkpoint must verify; otherwise say so."""
        finite = all(bool(np.all(np.isfinite(np.asarray(x)))) for x in jax.tree.leaves(jax.device_get(
            state["params"])) if np.issubdtype(np.asarray(x).dtype, np.floating))
        if not finite:
            raise NonFiniteError(f"the state before step {step + 1} holds non-finite parameters: no good state to "
                                 "save (the run diverged earlier; resume from an older checkpoint)")
        self.checkpointer.verify(step)

    # ---- the loop ---------------------------------------------------------------------------------------------
    def run(self) -> dict[str, float]:
        t = self.config.train
        state, start = self.restore_or_init()
        stop = {"signal": None}

        def on_signal(signum, _frame):
            stop["signal"] = signum

        # One process: SIGTERM/SIGINT set a flag checked after every step. Several processes: a signal reaching one
        # host must stop every host at the same step, so SIGTERM is left to JAX's preemption service (started by
        # jax.distributed.initialize), whose sync point agrees on a step across hosts; SIGINT is a local Ctrl-C.
        multi = jax.process_count() > 1 and _preemption_service_running()
        old_handlers = {}
        for sig in (signal.SIGINT,) if multi else (signal.SIGTERM, signal.SIGINT):
            try:
                old_handlers[sig] = signal.signal(sig, on_signal)
            except ValueError:  # not the main thread
                pass
        per_example_tokens = self.objective.tokens_per_example(self.example)
        flops_per_example = self.objective.flops_per_example(self.example)
        peak = metrics_lib.peak_flops_per_device(t.get("peak_flops_per_device", 0.0))
        n_dev = self.mesh.devices.size
        last_values: dict[str, float] = {}
        t0, last_t, last_step = time.time(), time.time(), start
        step = start
        self.writer.print(f"training {self.config.objective} from step {start} to {t.steps} in {self.workdir}")
        try:
            while step < t.steps:
                data_state_before = self.train_iter.get_state()  # ~16 us vs ~11 ms a text batch: kept for replay
                local = next(self.train_iter)
                with shd.set_mesh(self.mesh), shd.axis_rules():
                    state, metrics = self._train_step(state, shd.global_batch(local, self.mesh))
                step += 1
                if not bool(jax.device_get(metrics["finite"])):
                    values = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    path = self._dump_nan(step, local, values, data_state_before)
                    self.save(state, step - 1)  # the state is the last good one (the bad update was skipped)
                    self.checkpointer.wait()
                    self._check_last_good(state, step - 1)
                    raise NonFiniteError(
                        f"non-finite loss or gradient at step {step}: loss={values.get('loss')}, "
                        + ", ".join(f"{k}={v}" for k, v in values.items() if k.startswith("grad_norm"))
                        + f". The last good state (finite, its checkpoint verified) is checkpointed at step "
                        f"{step - 1}; the batch, its metrics and replay_process<i>.json (the batch's index and the "
                        f"data state before it) are in {path}")
                if step % t.log_every == 0 or step == t.steps:
                    values = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    now = time.time()
                    dt = (now - last_t) / max(step - last_step, 1)
                    rates = {"step_time_s": dt}
                    examples_per_s = t.batch_size / dt
                    rates["tokens_per_s"] = examples_per_s * per_example_tokens
                    if flops_per_example and peak:
                        rates["mfu"] = examples_per_s * flops_per_example / (n_dev * peak)
                    values.pop("finite", None)
                    last_values = self.writer.write(step, "train", {**values, **rates})
                    eta = dt * (t.steps - step)
                    self.writer.print(metrics_lib.progress_line(step, t.steps, values, rates, eta))
                    last_t, last_step = now, step
                losses_due = bool(t.eval_every) and step % t.eval_every == 0
                if step != t.steps and (losses_due or any(e.due(step) for e in self.evaluators)):
                    self.evaluate(state, step, losses=losses_due)
                if step % t.checkpoint_every == 0 and step != t.steps:
                    self.save(state, step)
                if multi and _preemption_sync_point(step):
                    stop["signal"] = "SIGTERM (preemption, agreed by every host)"
                if stop["signal"] is not None:
                    self.writer.print(f"signal {stop['signal']} received: saving step {step} and stopping")
                    self.save(state, step)
                    self.checkpointer.wait()
                    return {**last_values, "stopped_at": float(step)}
            if start < t.steps or self.checkpointer.latest_step() != t.steps:
                self.save(state, t.steps)
            periodic = any(e.every_steps for e in self.evaluators)
            final = (self.evaluate(state, t.steps, losses=bool(t.eval_every), final=True)
                     if t.eval_every or periodic else {})
            self.checkpointer.wait()
            self.writer.print(f"done: {t.steps} steps in {metrics_lib.format_duration(time.time() - t0)}")
            self.state = state
            return {**last_values, **{f"eval_{k}": v for k, v in final.items()}}
        finally:
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
            self.checkpointer.wait()


def _preemption_service_running() -> bool:
    """Whether jax.distributed started JAX's preemption sync manager (the default; off with
    ``jax_enable_preemption_service=False``). Without it a multi-process run keeps the local SIGTERM flag."""
    from jax._src import distributed as jax_distributed

    return getattr(jax_distributed.global_state, "preemption_sync_manager", None) is not None


def _preemption_sync_point(step: int) -> bool:
    """True on every process at the same step once any process received SIGTERM
    (``multihost_utils.reached_preemption_sync_point``, which every process calls at every step)."""
    from jax.experimental import multihost_utils

    return bool(multihost_utils.reached_preemption_sync_point(step))


def train(config: ml_collections.ConfigDict, workdir: str, **kwargs) -> dict[str, float]:
    """Trains ``config`` in ``workdir`` (resuming from its newest checkpoint); returns the final metrics."""
    trainer = Trainer(config, workdir, **kwargs)
    try:
        return trainer.run()
    finally:
        trainer.writer.close()
        trainer.checkpointer.close()


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Evaluates the newest checkpoint in ``workdir``: the objective's eval metrics and every evaluator of
    ``config.evals`` (on the model ``teal_jax.load(workdir)`` returns), logged like training's, and writes
    ``<workdir>/eval/results.json`` = ``{'step', 'metrics' (the logged scalars), 'evals' ({name: result})}``."""
    trainer = Trainer(config, workdir)
    try:
        latest = trainer.checkpointer.latest_step()
        if latest is None:
            raise FileNotFoundError(f"no checkpoint under {trainer.checkpointer.directory}: train first")
        state, _, _ = trainer.checkpointer.restore(latest, trainer.abstract_state())
        values = trainer.evaluate(state, latest, evaluators=[])
        results: dict[str, dict] = {}
        if trainer.evaluators and jax.process_index() == 0:
            from teal_jax.inference.load import load

            model = load(trainer.workdir, latest)
            results = evaluators_lib.run_evaluators(trainer.evaluators, model, workdir=trainer.workdir,
                                                    step=latest, say=trainer.writer.print)
            figures = evaluators_lib.scalars(results)
            trainer.writer.write(latest, "eval", figures)
            values = {**values, **figures}
        if jax.process_index() == 0:
            path = paths.join(trainer.workdir, "eval", "results.json")
            paths.makedirs(paths.dirname(path))
            paths.write_text(path, json.dumps({"step": int(latest), "metrics": values, "evals": results}, indent=1))
            trainer.writer.print(f"eval results: {path}")
        return values
    finally:
        trainer.writer.close()
        trainer.checkpointer.close()
