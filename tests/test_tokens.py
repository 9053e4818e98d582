"""
Token loading and checking.
"""

import pytest

from pothead.tokens import TokenCheck, TokenError, load_token

pytestmark = pytest.mark.unit


def test_token_from_file_first_line(tmp_path):
    """
    The token is the token file's first line, stripped.
    """
    path = tmp_path / "token"
    path.write_text("s3cret\nignored\n")
    assert load_token(str(path), environ={"POTHEAD_TOKEN": "other"}) == "s3cret"


def test_token_from_environment():
    """
    Without a file the token comes from POTHEAD_TOKEN; empty means none.
    """
    assert load_token(None, environ={"POTHEAD_TOKEN": " abc "}) == "abc"
    assert load_token(None, environ={"POTHEAD_TOKEN": ""}) is None
    assert load_token(None, environ={}) is None


@pytest.mark.parametrize("content", ["", "\n"])
def test_empty_token_file_refused(tmp_path, content):
    """
    An empty token file is an error, not "no token required".
    """
    path = tmp_path / "token"
    path.write_text(content)
    with pytest.raises(TokenError, match="empty"):
        load_token(str(path))


def test_missing_token_file_refused(tmp_path):
    """
    A token file that cannot be read is an error naming the file.
    """
    with pytest.raises(TokenError, match="cannot read token file"):
        load_token(str(tmp_path / "nope"))


def test_check_requires_exact_bearer():
    """
    With a token set, only 'Bearer <token>' is accepted.
    """
    check = TokenCheck("abc")
    assert check.required
    assert check.accepts(b"Bearer abc")
    assert not check.accepts(b"Bearer abd")
    assert not check.accepts(b"Bearer abcd")
    assert not check.accepts(b"abc")
    assert not check.accepts(b"")


def test_no_token_accepts_anyone():
    """
    Without a token every attach is accepted.
    """
    check = TokenCheck(None)
    assert not check.required
    assert check.accepts(b"")
