"""One assembly path for a run: ``prepare(config) -> Prepared``.

Everything a run needs before its first compiled step, each resolved exactly once, in an order
that fails on bad input before anything is written or generated:

1. the config, validated;
2. the run directory: ``config.out``, or ``runs/<scenario>-<algo>-<timestamp>`` (one name for
   every process of a multi-process run);
3. resume: ``True`` needs a checkpoint there, ``"auto"`` resumes when there is one;
4. the directory writable (an existing file or a read-only parent is refused);
5. the env (``make_env(config.scenario)``, unless one is given);
6. the demonstrations given (a ``DemoBuffer``, or the buffer at ``config.demos``), read and
   fitted to the env once (``leed_jax.dg.buffer.check_fits``);
7. the device mesh, checked against the env batch and the agents;
8. the directory created and locked against a second writer (process 0);
9. demonstrations generated into ``out/demos`` on that env when leed or bc has none (process
   0; the other processes read the same files);
10. a fresh run's ``config.toml`` (the resolved config) written, and the trainer built.

``leed_jax.run``, ``leed_jax.sweep`` and ``leed_jax.train`` all assemble through here; the host
loop (``leed_jax.po.loop.run_prepared``) takes a ``Prepared`` and only compiles, trains,
checkpoints and evaluates.
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
from collections.abc import Callable
from typing import Any, Literal

from leed_jax.config import TrainConfig
from leed_jax.po.trainer import Trainer

Say = Callable[[str], None]


@dataclasses.dataclass(frozen=True, eq=False)
class Prepared:
    """A run, assembled: every field resolved once by ``prepare``."""

    config: TrainConfig  # validated; ``out`` and (leed, bc) ``demos`` filled in
    env: Any  # as built or given (the trainer wraps it in AutoResetWrapper)
    demos: Any  # DemoBuffer (host numpy) fitted to env, or None
    run: Any  # leed_jax.io.rundir.RunDir, created and locked by process 0
    resume: bool  # continue from the latest checkpoint in run.checkpoint_dir
    mesh: Any  # jax.sharding.Mesh, or None: one device in one process
    trainer: Trainer
    say: Say  # progress lines for the user (process 0; a no-op on the others)


def reporter(say: Say | None = None) -> Say:
    """``say`` on process 0 (default: a line on stderr), a no-op on the other processes."""
    from leed_jax.parallel import is_writer

    if not is_writer():
        return lambda msg: None
    return say or (lambda msg: print(msg, file=sys.stderr, flush=True))


def prepare(
    config: TrainConfig,
    *,
    env=None,
    demos=None,
    resume: bool | Literal["auto"] = False,
    say: Say | None = None,
) -> Prepared:
    """Assemble the run of ``config`` (see the module docstring for the order of the steps).

    env: an env to use instead of ``make_env(config.scenario, num_agents=config.num_agents)``;
    demos: a ``DemoBuffer`` to use instead of ``config.demos``; resume: ``True`` continues the
    run in ``config.out`` (``FileNotFoundError`` without a checkpoint), ``"auto"`` continues it
    when it has a checkpoint and starts fresh otherwise. Errors are one line: ``ConfigError``,
    ``ScenarioError``, ``DemoBufferError``, ``MeshError``, ``RunDirError``,
    ``FileNotFoundError``."""
    from leed_jax.io.checkpoint import has_checkpoint
    from leed_jax.io.rundir import RunDir, check_writable, default_run_dir
    from leed_jax.parallel import broadcast_text, is_writer

    say = reporter(say)
    config.validate()
    if config.out is None:
        config = config.replace(out=broadcast_text(str(default_run_dir(config.scenario,
                                                                       config.algo))))
    run = RunDir(config.out)
    found = has_checkpoint(run.path) if resume else False
    if resume is True and not found:
        raise FileNotFoundError(f"no checkpoint to resume in {run.path}")
    check_writable(run.path)
    if env is None:
        from leed_jax.envs.registry import make_env

        env = make_env(config.scenario, num_agents=config.num_agents)
    # The fields left to the env family (the warm start's), resolved once: config.toml, the
    # trainer and the host loop all see the values used.
    config = config.for_family(getattr(env, "family", None))
    if config.needs_labeler:  # the family must have an expert that labels observations
        from leed_jax.po.trainer import dagger_labeler

        dagger_labeler(env)
    if demos is not None:
        from leed_jax.dg.buffer import check_fits

        check_fits(demos, env)
    elif config.demos:
        from leed_jax.dg.buffer import load_demos

        demos = load_demos(config.demos, env)
    mesh = device_mesh(config, env)
    run.create()
    say(f"run directory: {run.path}")
    if demos is None and config.algo in ("leed", "bc"):
        path = generate_run_demos(config, env, run.path, say)
        config = config.replace(demos=str(path))
        from leed_jax.dg.buffer import load_demos

        demos = load_demos(path, env)
    if not found:
        run.write_config(config)
        if is_writer() and run.metrics_path.exists():
            run.metrics_path.unlink()
    return Prepared(config=config, env=env, demos=demos, run=run, resume=found, mesh=mesh,
                    trainer=Trainer.build(config, env, demos), say=say)


def device_mesh(config: TrainConfig, env):
    """The device mesh of ``config`` (None: one device in one process, nothing to place),
    checked against the env batch and the agents (``MeshError``)."""
    import jax

    if config.mesh_data == 1 and config.mesh_agent == 1 and jax.process_count() == 1:
        return None
    from leed_jax.parallel import check_fits, make_mesh

    mesh = make_mesh(config.mesh_data, config.mesh_agent)
    check_fits(mesh, config.num_envs, env.spec.num_agents, config.share_params)
    return mesh


def generate_run_demos(config: TrainConfig, env, out_dir: pathlib.Path, say: Say) -> pathlib.Path:
    """Generate the demonstrations of a run into ``out_dir/demos`` on the run's own ``env``
    with ``config.dg``'s options (the LLM of ``dg.model`` when one is configured, the built-in
    planner otherwise); in a multi-process run process 0 generates them, the others wait and
    read the same files."""
    from leed_jax.dg.buffer import read_demo_meta
    from leed_jax.dg.generate import DemoConfig, run_dg
    from leed_jax.parallel import is_writer, sync

    overrides = {"num_agents": config.num_agents} if config.num_agents else {}
    path = pathlib.Path(out_dir) / "demos"
    if is_writer():
        options = {f.name: getattr(config.dg, f.name) for f in dataclasses.fields(config.dg)}
        dg = DemoConfig(scenario=str(config.scenario), out=path, seed=config.seed,
                        overrides=overrides, progress=config.progress, **options)
        path = run_dg(dg, env=env).path
    sync("leed_jax demos written")
    meta = read_demo_meta(path)
    source = meta.get("source", "?")
    how = (f"LLM {meta.get('model')}" if source == "llm"
           else "the built-in planner (no LLM configured)")
    say(f"demonstrations: {how} -> {path}")
    return pathlib.Path(path)
