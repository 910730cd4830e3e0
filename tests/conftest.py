import os

# Two cores: keep torch from oversubscribing them when tests start workers.
os.environ.setdefault('OMP_NUM_THREADS', '2')

# The tests read MMEngine checkpoints with torch.load(weights_only=True), as the
# tools do: opt in once (tests/test_layout.py checks that import alone does not).
import cals_seg.utils.mmengine_checkpoints  # noqa: E402,F401
