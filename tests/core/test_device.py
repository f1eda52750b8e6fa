"""Device helpers."""
import platform

import pytest

from tudui.core import device


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_reuse_freed_memory_is_applied_on_glibc():
    assert device.reuse_freed_memory() is True


def test_reuse_freed_memory_changes_nothing_elsewhere(monkeypatch):
    monkeypatch.setattr(platform, "system", lambda: "Darwin")
    assert device.reuse_freed_memory() is False
