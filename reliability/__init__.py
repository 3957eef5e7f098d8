"""`make reliability`: crashes, upstream faults, hostile input, fuzzing, leaks and access, as one table.

Each check is a module with `run(run: Run) -> Result`; `__main__` runs them in order against real
gunicorn and the real local stand-in on loopback, and exits 1 when any row is not clean.
"""
