import os
import sys

# The suite runs from the repository root; make `import envs` work however pytest is invoked.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Tests share 2 cores with each other; one torch thread per process keeps them from fighting.
os.environ.setdefault("OMP_NUM_THREADS", "1")
