"""Maintenance loops, one module each (River's internal/maintenance): the scheduler promotes due
jobs, the reaper expires abandoned leases, the pruner deletes what retention lets go. Every replica
runs each; SKIP LOCKED splits the work. A new loop is a module here with a `run()` coroutine,
started by engine/engine.py."""
