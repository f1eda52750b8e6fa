
import pytest
import torch

from tudui.core.checkpoint import FORMAT, load_checkpoint, read_weights, save_checkpoint
from tudui.core.errors import TuduiError


def test_atomic_save_leaves_no_temp_files(tmp_path):
    save_checkpoint({"format": FORMAT, "format_version": 1, "x": torch.ones(3)}, tmp_path / "a.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]
    assert torch.equal(load_checkpoint(tmp_path / "a.pt")["x"], torch.ones(3))


def test_failed_save_keeps_previous_file(tmp_path):
    save_checkpoint({"format": FORMAT, "v": 1}, tmp_path / "a.pt")
    with pytest.raises(Exception):
        save_checkpoint({"format": FORMAT, "bad": lambda: 0}, tmp_path / "a.pt")  # cannot be pickled
    assert load_checkpoint(tmp_path / "a.pt")["v"] == 1 and len(list(tmp_path.iterdir())) == 1


def test_refuses_pickled_model_and_foreign_files(tmp_path):
    torch.save(torch.nn.Linear(2, 2), tmp_path / "whole.pth")  # the course's torch.save(model)
    with pytest.raises(TuduiError, match="pickled Python objects.*tudui convert"):
        load_checkpoint(tmp_path / "whole.pth")
    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp_path / "sd.pth")
    with pytest.raises(TuduiError, match="not a tudui checkpoint.*--weights"):
        load_checkpoint(tmp_path / "sd.pth")
    assert set(read_weights(tmp_path / "sd.pth")) == {"weight", "bias"}
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(TuduiError):
        load_checkpoint(tmp_path / "junk.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(TuduiError, match="empty"):
        load_checkpoint(tmp_path / "empty.pt")


class _Evil:
    """Unpickling this creates the file `marker` (a stand-in for any code an attacker wants run)."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_does_not_run(tmp_path):
    import pickle

    marker = tmp_path / "evil-marker"
    pickle.loads(pickle.dumps(_Evil(marker)))  # an ordinary unpickle runs it: the payload works
    assert marker.exists()
    marker.unlink()
    torch.save({"format": FORMAT, "x": _Evil(marker)}, tmp_path / "evil.pt")
    with pytest.raises(TuduiError):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()
