"""The host loop of a run: compile, train in chunks, checkpoint, evaluate.

``run_prepared(prepared)`` takes a run assembled by ``leed_jax.po.prepare.prepare`` (config,
run directory, resume, env, demonstrations, mesh and trainer, each resolved once) and only
does what happens around the compiled program (``leed_jax.po.trainer``): the initial state on
its devices (restored from the latest checkpoint when resuming), the warm start and the
evaluation at update 0, the compiled chunk (``chunk_updates`` updates, seeds vmapped), and
between chunks the metrics lines, the periodic greedy evaluations, checkpoints, the progress
bar and the NaN and out-of-memory stops; then the final evaluation, ``summary.json`` and the
learning curve. In a multi-process run every process runs it; process 0 alone writes files
and reports.

``train(config)`` is both in one call (the library's ``leed_jax.train``).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import time
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from leed_jax.config import TrainConfig
from leed_jax.po.networks import Params
from leed_jax.po.prepare import Prepared, Say, prepare
from leed_jax.po.trainer import Trainer, TrainState, discount_per_step, seed_keys


class TrainingError(RuntimeError):
    """Training cannot go on (one-line message), e.g. a NaN in the loss."""


class OutOfMemoryError(TrainingError):
    """The run does not fit in device memory; the message says which options would."""


def is_out_of_memory(exc: BaseException) -> bool:
    text = str(exc)
    return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text


def memory_advice(config: TrainConfig, num_agents: int, num_devices: int) -> str:
    """One line: the batch, seed and sharding options that shrink a run's memory per device."""
    tips = []
    if config.num_envs > 1:
        tips.append(f"--num-envs {max(1, config.num_envs // 2)} (now {config.num_envs})")
    if config.seeds > 1:
        tips.append(f"--seeds 1 and run seeds one by one (now {config.seeds} in one program)")
    free = num_devices // max(1, config.mesh_data * config.mesh_agent)
    if free > 1:
        agent_fits = [k for k in range(2, free + 1) if num_agents % k == 0]
        if agent_fits and not config.share_params:
            tips.append(f"--mesh-agent {agent_fits[-1]} (split the agents' networks over devices)")
        data_fits = [k for k in range(2, free + 1) if config.num_envs % k == 0]
        if data_fits:
            tips.append(f"--mesh-data {data_fits[-1]} (split the env batch over devices)")
    if not config.share_params:
        tips.append("--share-params (one network for all agents)")
    return "; ".join(tips)



@dataclasses.dataclass
class TrainResult:
    """What ``train`` returns. Arrays carry a leading seed axis ``[K]``."""

    config: TrainConfig
    out_dir: pathlib.Path
    state: TrainState
    summary: dict
    history: list[dict]
    trainer: Trainer

    @property
    def params(self) -> Params:
        return self.state.params


def chunk_record(config: TrainConfig, metrics: dict, update: int, wall_s: float) -> dict:
    """One metrics.jsonl line from a chunk's metrics (host numpy, axes ``[K, U]``)."""
    valid = np.asarray(metrics["valid"]) > 0  # [K, U]
    episodes = (np.asarray(metrics["episodes"]) * valid).sum(1)  # [K]

    def per_episode(x):  # sums over episodes -> per-episode means [K]
        total = (np.asarray(x) * valid).sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(episodes > 0, total / np.maximum(episodes, 1), np.nan)

    def per_update(x):  # [K]
        return (np.asarray(x) * valid).sum(1) / np.maximum(valid.sum(1), 1)

    def seeds_mean(v):
        v = np.asarray(v, float)
        return float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")

    record: dict[str, Any] = {"update": update, "env_steps": env_steps_at(config, update),
                              "wall_s": round(wall_s, 3)}
    per_seed = {"return": per_episode(metrics["return_sum"])}
    per_seed.update({k: per_episode(v) for k, v in metrics["env"].items()})
    for key in ("loss", "policy", "value", "entropy", "expert_loss", "approx_kl", "clip_frac",
                "grad_norm", "reward_mean", "decision_frac", "demo_kept"):
        if key not in metrics:
            continue
        per_seed[key] = per_update(metrics[key])
    # The weight in force at the last update of the chunk.
    last = np.maximum(valid.sum(1) - 1, 0)
    per_seed["expert_weight"] = np.asarray(metrics["expert_weight"])[np.arange(len(last)), last]
    rename = {"policy": "policy_loss", "value": "value_loss"}
    for key, value in per_seed.items():
        name = rename.get(key, key)
        record[name] = seeds_mean(value)
        if config.seeds > 1 and key in ["return", *metrics["env"]]:
            record[f"{name}_seeds"] = [float(x) for x in value]
    record["episodes"] = int(episodes.sum())
    return record


def env_steps_at(config: TrainConfig, update: int) -> int:
    """Env steps per seed after ``update`` updates, the critic warm-up's included."""
    return config.warm_env_steps + update * config.batch_steps


def eval_record(config: TrainConfig, ev: dict) -> dict:
    """The metrics.jsonl fields of one periodic evaluation (host numpy, leading seed axis
    ``[K]``): ``eval_return`` and ``eval_<metric>`` (means over seeds of the per-seed mean over
    the held-out episodes), with ``_seeds`` lists."""
    out: dict[str, Any] = {}
    per_seed = {"return": np.asarray(ev["return"], float)}
    per_seed.update({k: np.asarray(v, float).mean(-1) for k, v in ev["metrics"].items()})
    for key, value in per_seed.items():
        out[f"eval_{key}"] = float(np.mean(value))
        out[f"eval_{key}_seeds"] = [float(x) for x in value]
    return out


def eval_due(config: TrainConfig, before: int, after: int) -> bool:
    """An evaluation is due after the chunk that took updates ``before`` to ``after``."""
    if after >= config.num_updates or config.eval_every == 0:
        return True
    return after // config.eval_every > before // config.eval_every


def checkpoint_due(config: TrainConfig, chunks_done: int, last_chunk: bool, checkpointer) -> bool:
    """Whether the host loop saves after its ``chunks_done``-th chunk: always after the last
    chunk of the run (or of this call, ``max_chunks``); otherwise every ``checkpoint_every``
    chunks, but no sooner than ``checkpoint_interval_s`` after the previous save. A save costs
    tens of milliseconds of host time (orbax), more than a small update, and a killed run then
    loses at most that many seconds. Multi-process runs ignore the interval: their saves are
    collective, and each process's clock could decide otherwise."""
    if last_chunk:
        return True
    if chunks_done % config.checkpoint_every:
        return False
    if jax.process_count() > 1:
        return True
    return checkpointer.seconds_since_save() >= config.checkpoint_interval_s


def _first_nonfinite(metrics: dict, first_update: int) -> int | None:
    loss = np.asarray(metrics["loss"])  # [K, U]
    bad = ~np.isfinite(loss) & (np.asarray(metrics["valid"]) > 0)
    if not bad.any():
        return None
    return first_update + int(np.argmax(bad.any(0))) + 1


def train(
    config: TrainConfig,
    *,
    env=None,
    demos=None,
    resume: bool | Literal["auto"] = False,
    max_chunks: int | None = None,
    say: Say | None = None,
) -> TrainResult:
    """Train ``config`` end to end in its run directory and evaluate the result:
    ``run_prepared(prepare(config, ...))``.

    env: an env to use instead of ``make_env(config.scenario)``; demos: a ``DemoBuffer`` to use
    instead of ``config.demos`` (generated when leed/bc has none). resume: continue from the
    latest checkpoint in ``config.out`` (``"auto"``: when there is one). max_chunks: stop after
    this many chunks (as if interrupted; for tests and time-boxed jobs). Writes
    ``config.toml``, ``metrics.jsonl``, ``checkpoints/``, ``summary.json`` and
    ``learning_curve.png`` under ``config.out``.
    """
    return run_prepared(prepare(config, env=env, demos=demos, resume=resume, say=say),
                        max_chunks=max_chunks)


def run_prepared(prepared: Prepared, *, max_chunks: int | None = None) -> TrainResult:
    """The host loop around the compiled program of an assembled run (module docstring)."""
    from leed_jax.io.checkpoint import Checkpointer
    from leed_jax.io.plots import plot_learning_curves
    from leed_jax.parallel import is_writer, sync, to_host

    t_start = time.perf_counter()
    config, env, demos, run, resume = (prepared.config, prepared.env, prepared.demos,
                                       prepared.run, prepared.resume)
    trainer, mesh, say = prepared.trainer, prepared.mesh, prepared.say
    writer = is_writer()  # process 0 writes files and reports; the others only compute
    ckpt_dir = run.checkpoint_dir
    demo_arrays = None if not trainer.use_expert else jax.tree_util.tree_map(jnp.asarray, demos)

    state, demo_arrays = _init_state(trainer, config, demo_arrays, mesh)
    checkpointer = Checkpointer(ckpt_dir)
    prior_wall = 0.0
    if resume:
        state, meta = checkpointer.restore(state, say=say)
        prior_wall = float(meta.get("wall_s", 0.0))
        history = run.truncate_metrics(int(meta["update"]))
        say(f"resuming {run.path} from update {meta['update']}")
    else:
        history = []
    evaluate = trainer.seeds_evaluate()
    # Where the state lives on the mesh (None: one device). The warm start and the evaluations
    # may hand it back laid out otherwise; it is put back before the compiled chunk sees it.
    shardings = None if mesh is None else jax.tree_util.tree_map(lambda x: x.sharding, state)
    if not resume:
        # The jump-start (leed, bc), then the evaluation at update 0: where each method starts.
        record = {"update": 0, "env_steps": config.warm_env_steps}
        if config.warm_start:
            state, warm = trainer.seeds_warm()(state, demo_arrays)
            warm = to_host(warm)
            record.update({k: float(np.mean(v)) for k, v in warm.items()})
            say(f"warm start: {record['warm_steps']:.0f} steps, expert loss "
                f"{record['warm_expert_loss_start']:.3f} -> {record['warm_expert_loss_end']:.3f}, "
                f"greedy matches {100 * record['warm_demo_accuracy']:.1f} % of demo actions")
            if "warm_dagger_agreement_end" in record:
                say(f"DAgger: {config.warm_start_dagger_rounds} rounds, the clone takes the "
                    f"expert's action on {100 * record['warm_dagger_agreement_start']:.1f} -> "
                    f"{100 * record['warm_dagger_agreement_end']:.1f} % of its own states")
        state, ev = evaluate(state)
        record.update(eval_record(config, to_host(ev)))
        record["wall_s"] = round(time.perf_counter() - t_start, 3)
        run.append_metrics(record)
        history.append(record)
        if config.warm_start:
            checkpointer.save(0, state, {"update": 0, "wall_s": record["wall_s"]})
        if shardings is not None:
            state = jax.device_put(state, shardings)

    def out_of_memory(where: str) -> OutOfMemoryError:
        advice = memory_advice(config, env.spec.num_agents, jax.device_count())
        return OutOfMemoryError(
            f"out of device memory while {where} (N={env.spec.num_agents}, "
            f"num_envs={config.num_envs}, seeds={config.seeds}); try {advice}"
        )

    t_compile = time.perf_counter()
    try:
        chunk = trainer.seeds_chunk()
        if mesh is not None:
            # The state leaves the chunk placed as it came in: left to itself XLA may pick
            # another sharding for an env leaf (MPE's global state), which the next call's
            # compiled program then rejects.
            chunk = jax.jit(jax.vmap(trainer.chunk, in_axes=(0, None)), donate_argnums=0,
                            out_shardings=(shardings, None))
        compiled = chunk.lower(state, demo_arrays).compile()
    except jax.errors.JaxRuntimeError as exc:
        if is_out_of_memory(exc):
            raise out_of_memory("compiling the update") from None
        raise
    compile_s = time.perf_counter() - t_compile
    sync("leed_jax update compiled")  # the processes start their collectives together

    start_update = int(to_host(state.update)[0])
    done_chunks = start_update // config.chunk_updates
    remaining = config.num_chunks - done_chunks
    if max_chunks is not None:
        remaining = min(remaining, max_chunks)
    progress = _Progress(config, start_update) if config.progress and writer else None
    t_loop = time.perf_counter()
    update = start_update
    ev = None  # the latest periodic evaluation (host numpy)
    try:
        for i in range(remaining):
            try:
                state, metrics = compiled(state, demo_arrays)
                metrics = to_host(metrics)
            except jax.errors.JaxRuntimeError as exc:
                if is_out_of_memory(exc):
                    raise out_of_memory(f"training (update {update})") from None
                raise
            bad = _first_nonfinite(metrics, update)
            if bad is not None:
                last = checkpointer.latest_step()
                kept = f"last good checkpoint: update {last} in {ckpt_dir}" if last is not None \
                    else "no checkpoint was written before it"
                raise TrainingError(f"NaN in the loss at update {bad}; stopped ({kept})")
            before, update = update, int(to_host(state.update)[0])
            ev = None
            if eval_due(config, before, update):
                state, ev = evaluate(state)
                if shardings is not None:  # back to the layout the chunk was compiled for
                    state = jax.device_put(state, shardings)
                ev = to_host(ev)
            wall = prior_wall + time.perf_counter() - t_start
            record = chunk_record(config, metrics, update, wall)
            if ev is not None:
                record.update(eval_record(config, ev))
            record["env_steps_per_s"] = round(
                (update - start_update) * config.batch_steps * config.seeds
                / max(time.perf_counter() - t_loop, 1e-9), 1
            )
            run.append_metrics(record)
            history.append(record)
            last_chunk = update >= config.num_updates or i == remaining - 1
            if checkpoint_due(config, done_chunks + i + 1, last_chunk, checkpointer):
                checkpointer.save(update, state, {"update": update, "wall_s": wall})
            if progress:
                progress.advance(update, record)
    finally:
        if progress:
            progress.close()
        checkpointer.close()
    loop_s = time.perf_counter() - t_loop
    trained_steps = (update - start_update) * config.batch_steps

    # The final evaluation: the periodic one at the last update (the same held-out episodes).
    if ev is None:
        state, ev = evaluate(state)
    evaluation = to_host(ev)
    wall_s = prior_wall + time.perf_counter() - t_start
    summary = {
        "algo": config.algo,
        "scenario": env.name,
        "num_agents": env.spec.num_agents,
        "seeds": config.seeds,
        "env_steps": env_steps_at(config, update),
        "updates": update,
        "finished": update >= config.num_updates,
        "wall_s": round(wall_s, 2),
        "compile_s": round(compile_s, 2),
        "env_steps_per_s": round(trained_steps * config.seeds / max(loop_s, 1e-9), 1),
        "final_return": float(np.mean(evaluation["return"])),
        "final_return_ci95": ci95(evaluation["episode_return"]),
        "final_return_seeds": [float(x) for x in evaluation["return"]],
        "eval_episodes": config.eval_envs,
        "eval_seed": config.eval_seed,
        "eval_greedy": config.eval_greedy,
        "devices": 1 if mesh is None else int(mesh.devices.size),
        "processes": jax.process_count(),
        # Episodes differ when the env draws each one (traffic with resampled demand, MPE);
        # greedy evaluation of a fixed-demand traffic scenario repeats one episode.
        "eval_distinct_episodes": bool(getattr(env, "resample", env.family != "traffic")),
        "gamma_per_step": discount_per_step(config, trainer.env),
    }
    summary["metric_names"] = sorted(evaluation["metrics"])
    for k, v in evaluation["metrics"].items():
        v = np.asarray(v)  # [K, E]
        summary[k] = float(np.mean(v))
        summary[f"{k}_ci95"] = ci95(v)
        if config.seeds > 1:
            summary[f"{k}_seeds"] = [float(x) for x in v.mean(1)]
    if demos is not None:
        summary["demo_return"] = float(np.asarray(demos.agent_return).mean())
    warm_line = next((h for h in history if h.get("update") == 0 and "warm_steps" in h), None)
    if warm_line is not None:
        summary.update({k: v for k, v in warm_line.items() if k.startswith("warm_")})
        summary["warm_eval_return"] = warm_line.get("eval_return")
    from leed_jax.dg.yardsticks import for_evaluation  # traffic: UE / SO on the same episodes

    summary.update(for_evaluation(env, config.eval_seed, config.eval_envs, evaluation["metrics"],
                                  config.yardsticks, say=say if config.progress else None))
    run.write_summary(summary)
    if writer:
        plot_learning_curves({config.algo: history}, run.plot_path,
                             title=f"{env.name}: {config.algo}, N={env.spec.num_agents}")
    return TrainResult(config, run.path, state, summary, history, trainer)


def ci95(values) -> float:
    """Half-width of the 95 % confidence interval of the mean of ``values`` (Student t;
    0 for fewer than two values)."""
    from scipy.stats import t as student_t

    v = np.asarray(values, float).ravel()
    v = v[np.isfinite(v)]
    if len(v) < 2:
        return 0.0
    return float(student_t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))



def _init_state(trainer: Trainer, config: TrainConfig, demos, mesh):
    """The initial state (seed axis first) and the demonstrations, on the mesh when there is
    one: the state is created where it lives (each device initialises its own agents' shard,
    and in a multi-process run the init is one program of all processes, compiled once and
    cached like the update); the jitted chunk follows the placement. Every leaf is strongly
    typed (an env's Python-scalar field would be weak): a restored checkpoint is, and a
    resumed run then reuses the update compiled for a fresh one (persistent compile cache)."""
    keys = seed_keys(config)
    if mesh is None:
        return jax.jit(lambda k: _strong(trainer.seeds_init()(k)))(keys), demos
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from leed_jax.parallel import demo_shardings, train_state_shardings

    n = trainer.num_agents
    init = lambda k: _strong(jax.vmap(trainer.init)(k))
    shardings = train_state_shardings(jax.eval_shape(init, keys), mesh, n)
    keys = jax.device_put(np.asarray(keys), NamedSharding(mesh, P()))
    state = jax.jit(init, out_shardings=shardings)(keys)
    if demos is not None:
        demos = jax.device_put(demos, demo_shardings(demos, mesh, n))
    return state, demos


def _strong(tree):
    return jax.tree_util.tree_map(lambda x: jax.lax.convert_element_type(x, x.dtype), tree)


class _Progress:
    """A rich progress bar with return and steps/s (host side only)."""

    def __init__(self, config: TrainConfig, start_update: int):
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self.config = config
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed:,.0f}/{task.total:,.0f} steps"),
            TextColumn("return {task.fields[ret]}"),
            TextColumn("{task.fields[sps]} steps/s"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self.progress.start()
        self.task = self.progress.add_task(
            config.algo, total=config.num_updates * config.batch_steps,
            completed=start_update * config.batch_steps, ret="-", sps="-",
        )

    def advance(self, update: int, record: dict) -> None:
        ret = record.get("return")
        self.progress.update(
            self.task,
            completed=update * self.config.batch_steps,
            ret="-" if ret is None or not math.isfinite(ret) else f"{ret:.3f}",
            sps=f"{record['env_steps_per_s']:,.0f}",
        )

    def close(self) -> None:
        self.progress.stop()
