"""The DG stage (demonstration generation) of LEED.

scenario → prompt (``prompts/<family>/``) → LLM (litellm) or the built-in planner →
instruction text → read (``instructions``) → validate and repair (``validate``) → execute in
the env (``executor``) → demo buffer + DG report (``buffer``, ``report``).

Modules: ``generate`` (``generate_demos``, ``DemoConfig``, ``run_dg``), ``cli``
(``python -m leed_jax.demos``), ``llm`` + ``cache`` (provider calls, retries, reply cache),
``prompts`` (templates), ``instructions`` (the language and its reader), ``validate``,
``graph`` (road graph view), ``planner`` (classical expert), ``executor``, ``family`` +
``traffic_family`` + ``mpe_family`` (what differs per env family), ``buffer``, ``report``,
``errors``.
"""
