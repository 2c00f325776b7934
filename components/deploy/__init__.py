"""Deploying a registered version: the KServe InferenceService, Triton repositories, the Kubernetes API."""
