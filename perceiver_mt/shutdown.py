"""SIGTERM ends a run within a bounded time, whatever the run is doing.

Lightning turns SIGTERM into a flag that its loops read between batches (and then raises
`SIGTERMException`). Code that never gets back to a loop - a data loader that cannot fill a batch, a
collective that waits for a dead peer, a stuck plugin - would ignore the signal. `SigtermDeadline` puts
its own handler in front of whatever handler is installed: the signal still reaches Lightning (which
stops at the next batch boundary and ends the other ranks), and a timer ends the process with exit
status 143 and one line if it is still alive `grace_s` later.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

SIGTERM_EXIT_STATUS = 128 + signal.SIGTERM  # what a shell reports for a process ended by SIGTERM


class SigtermDeadline(Callback):
    """Armed at each stage start (Lightning installs its own SIGTERM handler just before), so this one runs first."""

    def __init__(self, grace_s: float):
        self.grace_s = grace_s
        self.timer: threading.Timer | None = None
        self.step = 0

    def _arm(self, trainer: Trainer) -> None:
        self.step = trainer.global_step
        current = signal.getsignal(signal.SIGTERM)
        if getattr(current, "deadline", None) is self or threading.current_thread() is not threading.main_thread():
            return

        def handler(signum: int, frame: Any) -> None:
            if self.timer is None:
                self.timer = threading.Timer(self.grace_s, self._expire)
                self.timer.daemon = True
                self.timer.start()
            if callable(current):
                current(signum, frame)
            elif current == signal.SIG_DFL:  # nobody else handles it: stop as the signal would have
                self._expire()

        handler.deadline = self  # type: ignore[attr-defined]
        signal.signal(signal.SIGTERM, handler)

    def _expire(self) -> None:
        print(f"error: still running {self.grace_s:g}s after SIGTERM (near step {self.step}); stopped without "
              "cleaning up. Resume with ckpt_path=last from the last checkpoint", file=sys.stderr, flush=True)
        os._exit(SIGTERM_EXIT_STATUS)

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()

    def on_sanity_check_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._arm(trainer)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._arm(trainer)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self.step = trainer.global_step

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._arm(trainer)

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._arm(trainer)
