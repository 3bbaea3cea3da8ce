"""attnlab/devices.py: what compiling shows a user."""

import logging

import torch

from attnlab.devices import Compiled


def test_compiling_leaves_out_inductors_notes_for_its_own_developers():
    """Inductor's C++ wrapper logs a line for each operator it calls through its fallback (two
    dozen in a Hyena model's first compile); its other messages pass."""
    log = logging.getLogger("torch._inductor.ir")

    def record(message: str, *args) -> logging.LogRecord:
        return log.makeRecord(log.name, logging.WARNING, "ir.py", 1, message, args, None)

    note = record("%s is missing a c-shim implementation, using proxy executor as fallback", "op")
    Compiled(torch.nn.Identity())
    assert not log.filter(note) and log.filter(record("something a user should read"))
