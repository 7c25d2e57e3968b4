"""hgadapter.device: the one parser of device names, and the thread policy."""

import pytest
import torch

from hgadapter.device import DeviceError, intra_op_threads, resolve_device
from hgadapter.errors import UserError


def test_valid_names():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" cpu ") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    expected = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("auto") == expected and resolve_device(None) == expected


@pytest.mark.parametrize("name", ["cuda:abc", "cudax", "cuda:-1", "gpu", "cpu:0", "auto:1", "", "cuda:", 5])
def test_malformed_names_are_one_user_error(name):
    with pytest.raises(DeviceError, match=r"device.*valid: auto, cpu, cuda or cuda:N") as info:
        resolve_device(name)
    assert isinstance(info.value, UserError) and "\n" not in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_cuda_says_so(name):
    with pytest.raises(DeviceError, match="CUDA is not available here; use device cpu or auto"):
        resolve_device(name)


def test_cli_bad_device_is_a_one_line_error(tmp_path, capsys):
    from hgadapter.cli import main

    assert main(["synth", "--classes", "6", "--dim", "16", "--families", "2", "--shots", "1", "--seeds", "1", "--out", str(tmp_path / "c")]) == 0
    capsys.readouterr()
    assert main(["run", "--features", str(tmp_path / "c"), "--variant", "t", "--shots", "1", "--seed", "1", "--device", "cuda:abc", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown device 'cuda:abc'" in err


def test_intra_op_threads_restores_the_count():
    before = torch.get_num_threads()
    with intra_op_threads(1) as count:
        assert count == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
