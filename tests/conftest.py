"""Tests train for real, every time: the run cache (q4core.runs) is off unless a test hands one in, sweeps run
serially in the test process, and no progress bars."""
import os

os.environ["Q4CORE_NO_CACHE"] = "1"
os.environ.pop("Q4CORE_RECOMPUTE", None)
os.environ.pop("Q4CORE_SCHEDULER", None)
os.environ["Q4CORE_PROGRESS"] = "0"

# Property tests draw the same examples on every run (the project's rule: same seed, same numbers), so CI is
# repeatable and a failure reproduces; explore new examples with HYPOTHESIS_PROFILE=explore (random seeds).
from hypothesis import settings  # noqa: E402

settings.register_profile("q4core", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "q4core"))
