"""taxiway bench: closed- and open-loop load generation with correct latency percentiles."""
