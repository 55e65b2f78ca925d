"""Suite-wide settings.

Training runs in tests skip the traffic yardsticks (two planner runs per evaluation episode,
seconds each) unless a test asks for them with ``TrainConfig(yardsticks=N)``: the suite's time
budget is tight, and tests/test_yardsticks.py covers them.
"""

import os

os.environ.setdefault("LEED_YARDSTICKS", "0")
