"""The engine: driver, runner actor, workspace (git) and agent process supervision.

`workspace` and `process` are plain Python with no Ray in them, so that the runner, the
serial debugging path and the tests can all use them directly.
"""
