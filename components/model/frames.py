"""pandas DataFrames <-> a model's named input and output arrays, for MLflow pyfunc (no MLflow here).

Input columns are the signature's input names; a model with one input whose values along the last axis
have names (``TensorSpec.labels``, a table's feature names) takes those feature columns instead, as the
tabular models always have. ``BYTES`` inputs are columns of strings; an input of several values per row
is a column of lists (or arrays). Outputs come back one column per output (``[N, k]`` outputs as
list-valued columns); a classifier's ``probabilities`` become one ``prob_<class>`` column per class.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from pillars.components.task import InputError, Outputs, Preprocessing, Signature, TensorSpec


def feature_input(signature: Signature) -> TensorSpec | None:
    """The single input whose feature names are DataFrame columns, or None."""
    if len(signature.inputs) == 1 and signature.inputs[0].labels:
        return signature.inputs[0]
    return None


def frame_to_inputs(signature: Signature, frame: pd.DataFrame) -> dict[str, Any]:
    """A DataFrame as the model's inputs (still to be checked by ``check_inputs``).

    Raises:
        InputError: a required input's column is missing.
    """
    spec = feature_input(signature)
    if spec is not None and spec.name not in frame.columns:
        columns = [c for c in spec.labels if c in frame.columns]
        table = frame[columns] if len(columns) == len(spec.labels) else frame
        try:
            return {spec.name: table.to_numpy(dtype=np.float32)}
        except (TypeError, ValueError) as e:
            raise InputError(f"input {spec.name!r}: the feature columns must be numbers: {e}") from e
    inputs: dict[str, Any] = {}
    for spec in signature.inputs:
        if spec.name not in frame.columns:
            if spec.optional:
                continue
            raise InputError(f"input {spec.name!r} is missing: the DataFrame has columns {list(frame.columns)}")
        column = frame[spec.name]
        if spec.datatype == "BYTES" and not spec.shape:
            inputs[spec.name] = np.asarray(column.tolist(), dtype=object)
        elif spec.shape:
            inputs[spec.name] = np.asarray([np.asarray(v) for v in column.tolist()])
        else:
            inputs[spec.name] = column.to_numpy()
    return inputs


def inputs_to_frame(signature: Signature, inputs: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """The inverse of :func:`frame_to_inputs`: an input example for MLflow."""
    spec = feature_input(signature)
    if spec is not None and spec.name in inputs:
        values = np.asarray(inputs[spec.name], dtype=np.float64)
        return pd.DataFrame(values.reshape(len(values), -1), columns=list(spec.labels))
    columns: dict[str, Any] = {}
    for spec in signature.inputs:
        if spec.name not in inputs:
            continue
        values = np.asarray(inputs[spec.name])
        if values.ndim == 1:
            columns[spec.name] = values.astype(str) if spec.datatype == "BYTES" else values
        else:
            columns[spec.name] = [row.tolist() for row in values]
    return pd.DataFrame(columns)


def outputs_to_frame(outputs: Outputs, prep: Preprocessing) -> pd.DataFrame:
    """Outputs as a DataFrame: a column per output (lists for ``[N, k]`` outputs); a classifier's
    ``probabilities`` as ``prob_<class>`` columns, ``label`` as strings."""
    frame = pd.DataFrame(index=range(len(next(iter(outputs.values())))))
    classes = prep.get("classes")
    for name, values in outputs.items():
        values = np.asarray(values)
        if name == "probabilities" and classes and values.ndim == 2 and values.shape[1] == len(classes):
            for i, cls in enumerate(classes):
                frame[f"prob_{cls}"] = values[:, i]
        elif values.ndim == 1:
            frame[name] = values.astype(str) if values.dtype.kind in "OU" else values
        else:
            frame[name] = [row.tolist() for row in values]
    return frame
