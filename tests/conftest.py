import os
import sys

# Tools import their sibling tools/stack_warnings.py first, as scripts find it; the
# tests that load a tool as a module find it here.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), 'tools'))

# Two cores: keep torch from oversubscribing them when tests start workers.
os.environ.setdefault('OMP_NUM_THREADS', '2')

# The tests read MMEngine checkpoints with torch.load(weights_only=True), as the
# tools do: opt in once (tests/test_layout.py checks that import alone does not).
import cals_seg.utils.mmengine_checkpoints  # noqa: E402,F401
