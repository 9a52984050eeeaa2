"""Balancing: pure strategies, health state machines and affinity over the shared server model."""
