"""Resolving where a model lives (MLflow registry, run, S3 or a folder) to a local folder.

Nothing here unpickles: we only download files; :func:`pillars.components.model.predictor.load_predictor` then reads
``config.json``, ``model.safetensors`` and ``preprocessing.json``.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pillars.components.errors import ConfigError
from pillars.components.model.predictor import locate_model_dir
from pillars.components.registry.references import SCHEME, ModelRef

logger = logging.getLogger(__name__)

DOWNLOAD_PREFIX = "pillars-model-"
"""Temporary folders holding a downloaded model are ``pillars-model-<PID>-<random>`` (in the temp folder):
removed when the model is replaced or the server stops, and, when their process is gone, at the next start."""


@dataclass(frozen=True)
class ModelSource:
    """A model resolved to a local folder, with the registry version when there is one."""

    directory: Path
    version: str
    uri: str
    download: Path | None = None  # the temporary folder we downloaded into, removed by discard()


def is_alias_uri(model_uri: str) -> bool:
    """``models:/NAME@ALIAS``: a registry alias, which can move to another version while we serve."""
    return model_uri.startswith(SCHEME) and ModelRef.parse(model_uri).is_alias


def new_download_folder() -> Path:
    """A new temporary folder for one download, named for this process (see :data:`DOWNLOAD_PREFIX`)."""
    return Path(tempfile.mkdtemp(prefix=f"{DOWNLOAD_PREFIX}{os.getpid()}-"))


def remove_stale_downloads(root: str | Path | None = None) -> list[Path]:
    """Remove the download folders left in ``root`` (the temp folder) by model servers no longer running
    (killed before they could clean up). Only ours: ``pillars-model-<PID>-...`` of a PID that is not alive.

    Returns:
        The folders removed.
    """
    removed = []
    for path in Path(root or tempfile.gettempdir()).glob(f"{DOWNLOAD_PREFIX}*-*"):
        pid = path.name[len(DOWNLOAD_PREFIX):].split("-", 1)[0]
        if path.is_dir() and not path.is_symlink() and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    if removed:
        logger.info("removed %d model download(s) left by stopped servers: %s", len(removed),
                    ", ".join(p.name for p in removed[:5]))
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def quiet_mlflow_downloads() -> None:
    """No "Downloading artifacts" progress bars from MLflow in this process (a server's log, or a command's
    output, is one line per event); a user who set ``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR`` keeps theirs."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def discard(source: ModelSource) -> None:
    """Remove what :func:`resolve_model` downloaded for ``source`` (nothing for a local folder)."""
    if source.download is not None:
        shutil.rmtree(source.download, ignore_errors=True)


def resolve_model(model_uri: str = "", model_dir: str | Path | None = None) -> ModelSource:
    """Download (if needed) and locate the model named by ``model_uri`` or ``model_dir``.

    Args:
        model_uri: ``models:/NAME@alias``, ``models:/NAME/VERSION``, ``runs:/...``, ``s3://...``,
            ``file://...`` or a local folder.
        model_dir: a local folder (KServe's ``--model_dir``); used when ``model_uri`` is empty.

    Returns:
        The local folder holding ``config.json`` and ``model.safetensors``, and the model version
        (the registry version for ``models:/``, else ``"1"``).

    Raises:
        ConfigError: neither or both were given, the URI scheme is unknown, or nothing was found there.
    """
    if bool(model_uri) == bool(model_dir):
        raise ConfigError("give exactly one of --model_uri or --model_dir")
    if model_dir:
        return ModelSource(locate_model_dir(model_dir), "1", str(model_dir))
    scheme = urlparse(model_uri).scheme
    if scheme in ("models", "runs"):
        return _from_mlflow(model_uri)
    if scheme == "s3":
        download = _from_s3(model_uri)
        try:
            return ModelSource(locate_model_dir(download), "1", model_uri, download)
        except BaseException:
            shutil.rmtree(download, ignore_errors=True)
            raise
    if scheme == "file":
        return ModelSource(locate_model_dir(urlparse(model_uri).path), "1", model_uri)
    if scheme == "" and Path(model_uri).exists():
        return ModelSource(locate_model_dir(model_uri), "1", model_uri)
    if scheme == "":
        raise ConfigError(f"model folder {model_uri} does not exist")
    raise ConfigError(f"unsupported model URI scheme {scheme!r} in {model_uri}; "
                      "use models:/, runs:/, s3://, file:// or a folder")


def _from_mlflow(model_uri: str) -> ModelSource:
    import mlflow
    from mlflow.exceptions import MlflowException

    version = "1"
    download_uri = model_uri
    if model_uri.startswith(SCHEME):
        ref = ModelRef.parse(model_uri)
        version = registry_version(ref)
        download_uri = ref.pinned(version).uri  # the alias cannot move under us mid-download
    quiet_mlflow_downloads()
    target = new_download_folder()
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=download_uri, dst_path=str(target))
        return ModelSource(locate_model_dir(local), version, model_uri, target)
    except (MlflowException, OSError) as e:
        shutil.rmtree(target, ignore_errors=True)
        raise ConfigError(f"cannot download {model_uri} from {mlflow.get_tracking_uri()}: {e}") from e
    except BaseException:  # not a model folder, or interrupted: nothing downloaded stays behind
        shutil.rmtree(target, ignore_errors=True)
        raise


def registry_version(model_uri: str | ModelRef) -> str:
    """The version number a ``models:/NAME@alias`` or ``models:/NAME/VERSION`` URI points to."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    ref = model_uri if isinstance(model_uri, ModelRef) else ModelRef.parse(model_uri)
    if ref.version is not None:
        return ref.version
    try:
        return str(MlflowClient().get_model_version_by_alias(ref.name, ref.alias).version)
    except MlflowException as e:
        raise ConfigError(f"no version of model {ref.name!r} has alias {ref.alias!r}: {e.message}") from e


def _from_s3(uri: str) -> Path:
    """Download every object under the folder ``s3://bucket/prefix/`` (MinIO via ``MLFLOW_S3_ENDPOINT_URL``).

    The prefix is a folder: ``s3://b/models/digits`` takes ``models/digits/...``, never
    ``models/digitsartifacts/...``. On any failure the partial download is removed.
    """
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    parsed = urlparse(uri)
    bucket, prefix = parsed.netloc, s3_folder(parsed.path)
    if not bucket:
        raise ConfigError(f"{uri} names no bucket: use s3://BUCKET/FOLDER")
    endpoint = os.environ.get("MLFLOW_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL") or None
    target = new_download_folder()
    try:
        found = _download_folder(boto3.client("s3", endpoint_url=endpoint), bucket, prefix, target)
        if not found:
            raise ConfigError(f"no objects under {uri}")
    except (BotoCoreError, ClientError) as e:
        shutil.rmtree(target, ignore_errors=True)
        raise ConfigError(f"cannot download {uri}: {e}") from e
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    logger.info("downloaded %d objects from %s", found, uri)
    return target


def s3_folder(path: str) -> str:
    """The key prefix of the folder ``path`` names: no leading slash, one trailing slash (``""``: the bucket)."""
    stripped = path.strip("/")
    return f"{stripped}/" if stripped else ""


def _download_folder(s3: Any, bucket: str, prefix: str, target: Path) -> int:
    """Download the objects under ``prefix`` (a folder prefix) into ``target``; returns how many."""
    found = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            relative = obj["Key"][len(prefix):]
            if not relative or relative.endswith("/"):
                continue  # a folder marker
            destination = (target / relative).resolve()
            if not destination.is_relative_to(target.resolve()):
                raise ConfigError(f"refusing S3 key {obj['Key']!r} that escapes the download folder")
            destination.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, obj["Key"], str(destination))
            found += 1
    return found
