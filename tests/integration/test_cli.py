"""The CLI as an owner uses it: one-line errors, exit code 1, nothing changed."""

import pytest

from tests.conftest import PASSWORD, cli


@pytest.fixture
def data(tmp_path):
    assert cli(tmp_path, "domain", "add", "Example.ORG").returncode == 0
    return tmp_path


def listing(data, kind):
    result = cli(data, kind, "list")
    assert result.returncode == 0, result.stderr
    return result.stdout.split("\n")[:-1]


def test_domain_user_alias_round_trip(data):
    assert listing(data, "domain") == ["example.org"]
    r = cli(data, "user", "add", "Ann@example.org", "--password-stdin", stdin=PASSWORD + "\n")
    assert r.returncode == 0, r.stderr
    assert listing(data, "user") == ["ann@example.org"]
    assert (
        cli(data, "alias", "add", "all@example.org", "ann@example.org", "x@else.test").returncode
        == 0
    )
    assert cli(data, "alias", "add", "@example.org", "ann@example.org").returncode == 0
    assert listing(data, "alias") == [
        "@example.org -> ann@example.org",
        "all@example.org -> ann@example.org, x@else.test",
    ]
    assert cli(data, "alias", "remove", "all@example.org", "x@else.test").returncode == 0
    assert "all@example.org -> ann@example.org" in listing(data, "alias")
    r = cli(data, "user", "passwd", "ann@example.org", "--password-stdin", stdin="another pass\n")
    assert r.returncode == 0, r.stderr
    assert cli(data, "user", "remove", "ann@example.org").returncode == 0
    assert cli(data, "alias", "remove", "all@example.org").returncode == 0
    assert cli(data, "domain", "remove", "example.org").returncode == 0
    assert listing(data, "domain") == []
    assert listing(data, "alias") == []


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["domain", "add", "example.org"], None, "already exists"),
        (["domain", "add", "not a domain"], None, "not a valid domain"),
        (["domain", "remove", "nowhere.test"], None, "no domain"),
        (["user", "add", "bad address", "--password-stdin"], PASSWORD, "not a valid address"),
        (["user", "add", "ann@unknown.test", "--password-stdin"], PASSWORD, "no domain"),
        (["user", "add", "ann@example.org", "--password-stdin"], "short", "too short"),
        (["user", "add", "ann@example.org"], None, "use --password-stdin"),
        (["user", "remove", "nobody@example.org"], None, "no account"),
        (["alias", "add", "a@example.org", "not-an-address"], None, "not a valid address"),
        (["alias", "remove", "a@example.org"], None, "no alias"),
        (["dkim", "show", "nowhere.test"], None, "no domain nowhere.test"),
        (["dkim", "rotate", "not a domain"], None, "not a valid domain"),
        (["frobnicate"], None, "invalid choice"),
        (["user"], None, "required"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(data, args, stdin, message):
    before = [listing(data, kind) for kind in ("domain", "user", "alias")]
    result = cli(data, *args, stdin=stdin)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert result.stderr.startswith("appliance: error: ")
    assert [listing(data, kind) for kind in ("domain", "user", "alias")] == before


def test_removing_a_domain_with_users_is_refused(data):
    cli(data, "user", "add", "ann@example.org", "--password-stdin", stdin=PASSWORD)
    result = cli(data, "domain", "remove", "example.org")
    assert result.returncode == 1 and "still has 1 account" in result.stderr
    assert listing(data, "domain") == ["example.org"]


def test_password_never_comes_from_argv(data):
    result = cli(data, "user", "add", "ann@example.org", PASSWORD)
    assert result.returncode == 1
    assert listing(data, "user") == []


def test_dkim_records_to_publish_and_rotation(data):
    shown = cli(data, "dkim", "show", "example.org")
    assert shown.returncode == 0, shown.stderr
    records = [line for line in shown.stdout.splitlines() if not line.startswith(";")]
    assert len(records) == 2
    assert all(r.startswith(("a", "A")) and "._domainkey.example.org. IN TXT" in r for r in records)
    assert any('"v=DKIM1; k=rsa; p=' in r for r in records)
    assert any('"v=DKIM1; k=ed25519; p=' in r for r in records)
    keys = sorted((data / "dkim" / "example.org").iterdir())
    assert [oct(k.stat().st_mode & 0o777) for k in keys] == ["0o600", "0o600"]

    rotated = cli(data, "dkim", "rotate", "example.org")
    assert rotated.returncode == 0, rotated.stderr
    after = cli(data, "dkim", "show", "example.org").stdout
    assert after.count("IN TXT") == 4  # the old pair keeps verifying mail already sent
    assert after.count(": signing") == 2 and after.count("retired, still verifying") == 2
