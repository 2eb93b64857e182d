"""Two torchrun agents on 127.0.0.1 act as two nodes of one job (c10d rendezvous) and train together
through `train.py`; Lightning reads ranks and world size from torchrun's environment.

The job shards with FSDP in hybrid mode (replicate across the two nodes, shard within each), computing
in bfloat16 with activation checkpointing: the multi-node settings a real cluster run would use.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from helpers import DEBUG_CONFIG, REPO, free_port

STEPS = 4


@pytest.mark.slow
@pytest.mark.distributed
def test_two_torchrun_nodes_train_together(tmp_path):
    port = free_port()
    output = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    agents, logs = [], []
    for node in range(2):
        logs.append(open(tmp_path / f"node{node}.log", "w"))
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
            "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "multinode-test",
            # Both agents run on one host: say which one serves the rendezvous store.
            "--rdzv-conf", f"is_host={1 if node == 0 else 0}",
            "train.py", "--config", str(DEBUG_CONFIG), f"output_dir={output}", "logger.kind=none", "test=false",
            f"trainer.max_steps={STEPS}", f"trainer.val_check_interval={STEPS}", "trainer.devices=1",
            "trainer.num_nodes=2", "trainer.strategy=fsdp", "parallel.sharding=hybrid", "parallel.checkpoint=full",
            "parallel.param_dtype=bfloat16", "parallel.activation_checkpointing=true",
        ]
        agents.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=logs[-1], stderr=subprocess.STDOUT,
                                       start_new_session=True))
    try:
        codes = [agent.wait(timeout=240) for agent in agents]
    finally:
        for agent in agents:
            if agent.poll() is None:
                os.killpg(agent.pid, 9)
        for log in logs:
            log.close()
    texts = [(tmp_path / f"node{node}.log").read_text() for node in range(2)]
    assert codes == [0, 0], "\n\n".join(t[-3000:] for t in texts)
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in texts[0] and "GLOBAL_RANK: 1, MEMBER: 2/2" in texts[1]
    assert "mesh=(2, 1)" in texts[0]  # hybrid: 2 replicas (nodes) x 1 shard per node
    checkpoint = torch.load(output / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == STEPS
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values())
    metrics = json.loads((output / "metrics.json").read_text())
    assert set(metrics) == {"digits", "pydoc_mlm"}
