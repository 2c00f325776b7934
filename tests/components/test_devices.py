"""One device rule for training and serving: ``auto`` follows torch, a named device is checked at once."""

from __future__ import annotations

import pytest
import torch

from pillars.components.devices import pick_device
from pillars.components.errors import ConfigError


def test_auto_is_the_gpu_when_torch_sees_one_else_the_cpu():
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_asked_for_without_a_gpu_is_refused_naming_it():
    with pytest.raises(ConfigError, match="'cuda:1' asked for, but no CUDA device is available"):
        pick_device("cuda:1")


def test_a_name_torch_does_not_know_is_refused_naming_it():
    with pytest.raises(ConfigError, match="device 'gpu0' is not a device name"):
        pick_device("gpu0")
