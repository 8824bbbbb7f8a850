"""The one-time setup code: made, typed back in any reasonable spelling, kept private, removed."""

import os
import re
import stat

from appliance.web import setup_code

# Three groups of four from an alphabet without 0/O and 1/I/L.
CODE_SHAPE = re.compile(r"[2-9A-HJKMNP-Z]{4}-[2-9A-HJKMNP-Z]{4}-[2-9A-HJKMNP-Z]{4}")


def test_a_new_code_has_three_groups_of_unambiguous_symbols(tmp_path):
    codes = {setup_code.renew(tmp_path) for _ in range(50)}
    assert all(CODE_SHAPE.fullmatch(code) for code in codes), codes
    assert len(codes) == 50  # random, not a sequence


def test_the_code_file_is_readable_only_by_the_service(tmp_path):
    code = setup_code.renew(tmp_path)
    path = setup_code.path(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == code + "\n"
    assert setup_code.read(tmp_path) == code
    assert [p.name for p in tmp_path.iterdir()] == [setup_code.FILE_NAME]  # no temporary left


def test_the_code_file_stays_private_under_a_permissive_umask(tmp_path):
    old = os.umask(0)
    try:
        setup_code.renew(tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(setup_code.path(tmp_path).stat().st_mode) == 0o600


def test_the_code_matches_whatever_the_case_dashes_and_spaces(tmp_path):
    code = setup_code.renew(tmp_path)
    bare = code.replace("-", "")
    for typed in (code, code.lower(), bare, bare.lower(), f"  {code} ", " ".join(code.split("-"))):
        assert setup_code.matches(tmp_path, typed), typed


def test_other_codes_do_not_match(tmp_path):
    code = setup_code.renew(tmp_path)
    bare = code.replace("-", "")
    other = "2" if bare[-1] != "2" else "3"
    for typed in ("", "-", bare[:-1], bare + "2", bare[:-1] + other, "0000-0000-0000"):
        assert not setup_code.matches(tmp_path, typed), typed


def test_a_renewed_code_replaces_the_old_one(tmp_path):
    old = setup_code.renew(tmp_path)
    new = setup_code.renew(tmp_path)
    assert new != old
    assert setup_code.matches(tmp_path, new) and not setup_code.matches(tmp_path, old)


def test_ensure_keeps_the_code_it_finds(tmp_path):
    made = setup_code.ensure(tmp_path)
    assert setup_code.ensure(tmp_path) == made
    assert CODE_SHAPE.fullmatch(made)


def test_a_removed_code_matches_nothing(tmp_path):
    code = setup_code.renew(tmp_path)
    setup_code.remove(tmp_path)
    assert not setup_code.path(tmp_path).exists()
    assert setup_code.read(tmp_path) is None
    assert not setup_code.matches(tmp_path, code)
    assert not setup_code.matches(tmp_path, "")
    setup_code.remove(tmp_path)  # removing twice is no error


def test_renew_makes_the_data_directory(tmp_path):
    data = tmp_path / "data"
    code = setup_code.renew(data)
    assert setup_code.read(data) == code
