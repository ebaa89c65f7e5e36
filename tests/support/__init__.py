"""Test harness: real OTLP receivers, a real collector (rotel) and real child processes.

Nothing here mocks the bridge or the SDK; every wait is on a condition with a timeout.
"""
