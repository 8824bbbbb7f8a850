"""Files replaced whole: the old content or the new, never a part, never
readable by others."""

from __future__ import annotations

import os
import stat

import pytest

from appliance.files import replace_file


def test_the_new_content_replaces_the_old_with_the_mode_given(tmp_path):
    path = tmp_path / "conf" / "appliance.toml"
    replace_file(path, b'hostname = "a"\n', 0o644)
    replace_file(path, b'hostname = "b"\n', 0o600)
    assert path.read_bytes() == b'hostname = "b"\n'
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(path.parent) == ["appliance.toml"]  # no temporary file left


def test_a_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "key.pem"
    replace_file(path, b"old key")

    with pytest.raises(TypeError):
        replace_file(path, "text is not bytes")  # type: ignore[arg-type]
    assert path.read_bytes() == b"old key"
    assert os.listdir(tmp_path) == ["key.pem"]
