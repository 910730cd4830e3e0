import os

# Two cores: keep torch from oversubscribing them when tests start workers.
os.environ.setdefault('OMP_NUM_THREADS', '2')
