"""Executing runs: the worker loop, its executors, and the log sink."""
