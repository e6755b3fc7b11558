"""Tests train for real, every time: the run cache (q4core.runs) is off unless a test hands one in, sweeps run
serially in the test process, and no progress bars."""
import os

os.environ["Q4CORE_NO_CACHE"] = "1"
os.environ.pop("Q4CORE_RECOMPUTE", None)
os.environ.pop("Q4CORE_SCHEDULER", None)
os.environ["Q4CORE_PROGRESS"] = "0"
