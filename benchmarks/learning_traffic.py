"""LEED against IPPO on the default traffic scenario, equal budgets, 3 seeds (JSON last).

    python benchmarks/learning_traffic.py [--total-steps 300000] [--seeds 3] [--algos leed,ippo]

Also reports the planner demonstrations (return, mean travel time, arrival rate). See
learning_compare.py for the options.
"""

from learning_compare import main

if __name__ == "__main__":
    main(scenario="traffic-grid", algos="leed,ippo", total_steps=300_000, seeds=3)
