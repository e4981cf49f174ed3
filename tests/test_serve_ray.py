"""``xlmrxl.serve.ray`` on a local Ray cluster on CPU: 2 replicas of the app, both answering, with the same numbers as
the offline pipeline (skipped when Ray Serve is not installed)."""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest
from _serve import ROOT, free_port, make_checkpoint, texts

import xlmrxl

serve = pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install 'xlmrxl[ray,serve]')")
import ray  # noqa: E402

import xlmrxl.serve.ray  # noqa: E402


def test_two_replicas_same_answers(spm_dir, tmp_path):
    model = make_checkpoint(tmp_path / "m", spm_dir, max_position_embeddings=130)
    port = free_port()
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TRITON_INTERPRET": "0", "XLMRXL_POISON": "0"}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        xlmrxl.serve.ray.run(
            str(model),
            num_replicas=2,
            ray_actor_options={"num_cpus": 1},
            task="embed",
            pooling="mean",
            device="cpu",
        )
        url = f"http://127.0.0.1:{port}"
        deadline, ready = time.monotonic() + 180, 0
        while ready < 10:  # both replicas warmed up: ten healthy answers in a row
            assert time.monotonic() < deadline, "the replicas did not become ready"
            try:
                ready = ready + 1 if httpx.get(url + "/health", timeout=5).status_code == 200 else 0
            except httpx.HTTPError:
                ready = 0
            time.sleep(0.1)
        inputs = texts(10)
        with httpx.Client(base_url=url, timeout=60) as c:
            got = np.array(c.post("/embed", json={"inputs": inputs}).json())
            pids = {c.get("/info").json()["pid"] for _ in range(40)}
        want = xlmrxl.pipeline("feature-extraction", model=model, pooling="mean", normalize=True)(inputs).numpy()
        assert np.abs(got - want).max() <= 1e-6
        assert len(pids) == 2, pids
    finally:
        serve.shutdown()
        ray.shutdown()


def test_options_are_checked():
    with pytest.raises(ValueError, match="not both"):
        xlmrxl.serve.ray.deployment("/nowhere", num_replicas=2, autoscaling_config={"max_replicas": 2})
