"""``python -m leed_jax.run`` for the multi-process tests; with ``LEED_TEST_KILL_AT=K`` every
process SIGKILLs itself right after its part of the checkpoint of update K is saved."""

import os
import signal
import sys

kill_at = int(os.environ.get("LEED_TEST_KILL_AT", "0"))
if kill_at:
    from leed_jax.io import checkpoint

    save = checkpoint.Checkpointer.save

    def save_then_die(self, step, state, meta, **kwargs):
        save(self, step, state, meta, **kwargs)
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    checkpoint.Checkpointer.save = save_then_die

from leed_jax.run import main

sys.exit(main(sys.argv[1:]))
