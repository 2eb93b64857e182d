"""A dead or hung rank ends the whole job within a bounded time with a clear error, never a hang.
(Resuming a killed run from its last checkpoint is checked in test_fsdp.py, on the same killed run.)"""

from __future__ import annotations

import pytest

import distributed_helpers as runs
from helpers import processes_with

HUNG_TIMEOUT_S = 5


def seconds_from_fault_to_exit(run: runs.Run, folder: str = "record") -> float:
    return run.ended_at - float((run.output_dir / folder / "fault_time").read_text())


def live_processes_of(run: runs.Run) -> list[str]:
    """Processes still running the run's command line (a rank that outlived its job)."""
    return processes_with(f"output_dir={run.output_dir}")


@pytest.mark.slow
@pytest.mark.distributed
def test_killed_rank_fails_the_job_fast_with_a_clear_error():
    killed, _ = runs.fsdp_killed_then_resumed()
    assert killed.returncode != 0
    # Rank 0 learns at its next collective (the peer's socket closes), in seconds.
    assert seconds_from_fault_to_exit(killed, "record_killed") < 30
    assert "error: rank 0/2: a collective failed: another rank died or did not answer" in killed.output


@pytest.mark.slow
@pytest.mark.distributed
def test_hung_rank_fails_the_job_after_the_configured_timeout():
    def launch(output_dir):
        return runs.record_run(output_dir, ["trainer.devices=2", "trainer.strategy=ddp", "trainer.max_steps=6",
                                            f"parallel.timeout_s={HUNG_TIMEOUT_S}", *runs.per_rank_batch(1)],
                               env={"PMT_HANG_AT": "1:2"}, timeout=150)

    hung = runs.cached("ddp_hung", launch)
    assert hung.returncode != 0, hung.output[-2000:]
    waited = seconds_from_fault_to_exit(hung)
    assert HUNG_TIMEOUT_S <= waited < HUNG_TIMEOUT_S + 30  # the timeout, not the 10 minutes the rank sleeps
    assert f"Collective timeout set to {HUNG_TIMEOUT_S}s" in hung.output
    assert f"did not answer within parallel.timeout_s={HUNG_TIMEOUT_S}s" in hung.output
    assert not live_processes_of(hung), "the hung rank outlived the job"
