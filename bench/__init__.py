"""`make bench`: throughput and latency of the service against their floors, as one table.

`python -m bench` starts everything on loopback (the local Rehive stand-in, gunicorn serving the
service, the floor apps), drives each with wrk, and prints every row as a ratio to its floor.
"""
