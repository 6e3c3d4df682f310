"""Seeded fuzzing of the Lipsync RPC: a corpus of valid inputs, hostile cases built from it, and a driver that
runs them against a real server and judges every outcome (benchmarks/fuzz_server.py, tests/functional/test_fuzz.py)."""
