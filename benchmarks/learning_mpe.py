"""IPPO on JaxMARL's MPE simple spread (N = 3), a few million steps (JSON last).

    python benchmarks/learning_mpe.py [--total-steps 3000000] [--seeds 1]

See learning_compare.py for the options (e.g. --algos ippo,leed to add LEED with the
assignment planner's demonstrations).
"""

from learning_compare import main

if __name__ == "__main__":
    main(scenario="mpe-spread", algos="ippo", total_steps=3_000_000, seeds=1,
         set=["num_envs=64", "num_steps=25", "ent_coef=0.01", "lr=0.001"])
