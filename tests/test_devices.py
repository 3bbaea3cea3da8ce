"""attnlab/devices.py: what compiling shows a user; TF32 kept to the work that asks for it."""

import logging

import torch

from attnlab.devices import Compiled, tf32


def test_compiling_leaves_out_inductors_notes_for_its_own_developers():
    """Inductor's C++ wrapper logs a line for each operator it calls through its fallback (two
    dozen in a Hyena model's first compile); its other messages pass."""
    log = logging.getLogger("torch._inductor.ir")

    def record(message: str, *args) -> logging.LogRecord:
        return log.makeRecord(log.name, logging.WARNING, "ir.py", 1, message, args, None)

    note = record("%s is missing a c-shim implementation, using proxy executor as fallback", "op")
    Compiled(torch.nn.Identity())
    assert not log.filter(note) and log.filter(record("something a user should read"))


def test_tf32_is_on_inside_only():
    """A bf16 Trainer on a GPU computes its fp32 matmuls in TF32 in its own steps; a notebook's
    fp32 work after training keeps full precision (it was turned on for the whole process)."""
    backends = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = [backend.allow_tf32 for backend in backends]
    try:
        for backend in backends:
            backend.allow_tf32 = False
        with tf32(True):
            assert all(backend.allow_tf32 for backend in backends)
        assert not any(backend.allow_tf32 for backend in backends)
        torch.backends.cudnn.allow_tf32 = True  # the user's own: not turned off
        with tf32(False):
            assert torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    finally:
        for backend, allowed in zip(backends, saved, strict=True):
            backend.allow_tf32 = allowed
