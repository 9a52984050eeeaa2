"""Autoscaling: a pure target-tracking policy and the supervisor that starts and drains processes."""
