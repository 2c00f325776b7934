"""Kubeflow Pipelines definitions (``training``), the local runner (``local``) and the ``pillars`` CLI."""
