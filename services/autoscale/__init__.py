"""Scale local worker processes on queue depth through one pure policy (`policy.py`)."""
