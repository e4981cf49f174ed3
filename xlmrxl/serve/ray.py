"""``xlmrxl.serve.ray``: the same app as ``xlmrxl serve`` on Ray Serve, one replica per GPU.

    import ray, xlmrxl.serve.ray
    ray.init()
    xlmrxl.serve.ray.run("/models/xlmr-xl-embed", task="embed", pooling="mean", dtype="bfloat16")
    # or: xlmrxl.serve.ray.run(..., autoscaling_config={"min_replicas": 1, "max_replicas": 8})

``deployment(model_dir, ...)`` returns the bound Ray Serve application: ``create_app(model_dir, **app_options)`` is
built on each replica (``serve.ingress`` with a builder, so nothing unpicklable leaves the driver), where it loads
the model and warms up as under uvicorn (``GET /health`` says when). Replicas: ``num_replicas`` (default: one per
GPU of the cluster, else 1 on CPUs), each with ``ray_actor_options`` (default ``{"num_gpus": 1}`` with GPUs,
``{"num_cpus": 1}`` without); ``autoscaling_config`` and any other ``serve.deployment`` option
(``deployment_options``) are passed through as given. Needs ``pip install 'xlmrxl[ray,serve]'``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["deployment", "run"]


def _serve() -> Any:
    try:
        from ray import serve
    except ImportError as exc:
        raise ImportError("xlmrxl.serve.ray needs Ray Serve: pip install 'xlmrxl[ray,serve]'") from exc
    return serve


def deployment(
    model_dir: str,
    *,
    num_replicas: int | str | None = None,
    autoscaling_config: dict[str, Any] | None = None,
    ray_actor_options: dict[str, Any] | None = None,
    name: str = "xlmrxl",
    deployment_options: dict[str, Any] | None = None,
    **app_options: Any,
) -> Any:
    """The Ray Serve application serving ``model_dir``; ``app_options`` go to ``xlmrxl.serve.create_app``."""
    import ray

    serve = _serve()
    gpus = int(ray.cluster_resources().get("GPU", 0)) if ray.is_initialized() else 0
    if ray_actor_options is None:
        ray_actor_options = {"num_gpus": 1} if gpus else {"num_cpus": 1}
    opts: dict[str, Any] = {"name": name, "ray_actor_options": ray_actor_options, **(deployment_options or {})}
    if autoscaling_config is not None:
        if num_replicas not in (None, "auto"):
            raise ValueError("pass num_replicas or autoscaling_config, not both (Ray Serve takes one)")
        opts["autoscaling_config"] = autoscaling_config
    else:
        opts["num_replicas"] = num_replicas if num_replicas is not None else max(1, gpus)
    if gpus and "device" not in app_options and ray_actor_options.get("num_gpus"):
        app_options["device"] = "cuda"  # Ray sets CUDA_VISIBLE_DEVICES: each replica sees its own GPU as cuda:0

    def build_app() -> Any:
        from xlmrxl.serve.app import create_app

        return create_app(model_dir, **app_options)

    @serve.deployment(**opts)
    @serve.ingress(build_app)
    class XlmrxlServe:
        """One replica: the app built by ``build_app`` on it."""

    return XlmrxlServe.bind()


def run(model_dir: str, *, route_prefix: str = "/", app_name: str = "xlmrxl", **kwargs: Any) -> Any:
    """``serve.run(deployment(model_dir, **kwargs))``: deploy and return the application's handle."""
    serve = _serve()
    return serve.run(deployment(model_dir, **kwargs), name=app_name, route_prefix=route_prefix)
