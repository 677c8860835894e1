"""Runnable examples, one per code block of electron-prokit's IPC page (``python examples/NAME.py``).

A package so that ``examples.docker_app:setup`` and ``:worker`` import from
the repository root (the docker demo and the tests use them).
"""
