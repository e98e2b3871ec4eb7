"""`catcache policy check` and the loader: every problem as `file:line: field: message`, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from catcache.policy.loader import PolicyError, PolicyIssue, load_policy

SHIPPED = Path(__file__).resolve().parents[2] / "policies.yaml"

SEVERAL_ERRORS = """\
version: 1
classifier:
  min_confidence: 0.3
  colour: blue
categories:
  code:
    threshold: 1.5
    ttl: 3 days
  default: {}
"""

BROKEN_REFERENCES = """\
backends:
  large: {url: http://127.0.0.1:8000/v1}
classifier:
  default: fallback
categories:
  code:
    threshold: 0.9
    ic:
      low: 0.8
      backend: nope
  default: {}
"""


def check(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "catcache", "policy", "check", str(path)],
                          capture_output=True, text=True, timeout=60)


def write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "policies.yaml"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def issues(path: Path) -> list[PolicyIssue]:
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    return caught.value.issues


def test_check_prints_every_error_with_line_and_field(tmp_path: Path) -> None:
    path = write(tmp_path, SEVERAL_ERRORS)
    result = check(path)
    assert result.returncode != 0
    assert result.stderr.splitlines() == [
        f"{path}:4: classifier.colour: unknown key",
        f"{path}:7: categories.code.threshold: Input should be less than or equal to 1",
        f"{path}:8: categories.code.ttl: '3 days' is not a duration (use seconds or a number with s, m, h, d or w)",
    ]
    assert result.stdout == ""


@pytest.mark.parametrize("text", [None, "categories:\n  default: {ttl: 2h}\n"])
def test_check_accepts_a_valid_file(tmp_path: Path, text: str | None) -> None:
    path = SHIPPED if text is None else write(tmp_path, text)
    result = check(path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{path}: ok (")


def test_check_refuses_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = write(tmp_path, "version: 1\n# caf\xe9 au lait\n".encode("latin-1"))
    result = check(path)
    assert result.returncode != 0
    assert result.stderr.strip() == f"{path}:2: not UTF-8 text: byte 0xe9 at offset 16 (save the file as UTF-8)"
    assert "Traceback" not in result.stderr


def test_check_names_the_field_of_a_reference_error(tmp_path: Path) -> None:
    path = write(tmp_path, BROKEN_REFERENCES)
    result = check(path)
    assert result.returncode != 0
    assert result.stderr.splitlines() == [
        f"{path}:4: classifier.default: names 'fallback', which is not a category",
        f"{path}:10: categories.code.ic.backend: names 'nope', which is not a backend",
    ]


@pytest.mark.parametrize("content", ["version: 1\n".encode("utf-16"), b"\xff\xfe\x00"], ids=["utf-16", "binary"])
def test_undecodable_files_raise_policy_error(tmp_path: Path, content: bytes) -> None:
    """The proxy's file watcher catches only PolicyError: anything else would kill it."""
    [issue] = issues(write(tmp_path, content))
    assert (issue.line, issue.field) == (1, "")
    assert issue.message.startswith("not UTF-8 text: byte 0xff at offset 0")


@pytest.mark.parametrize(("name", "message"), [("missing.yaml", "cannot read: No such file or directory"),
                                               (".", "cannot read: Is a directory")])
def test_unreadable_files_raise_policy_error(tmp_path: Path, name: str, message: str) -> None:
    assert issues(tmp_path / name) == [PolicyIssue(str(tmp_path / name), None, "", message)]


def test_ic_low_at_or_above_threshold_points_at_ic_low(tmp_path: Path) -> None:
    path = write(tmp_path, "categories:\n  default:\n    threshold: 0.9\n    ic:\n      low: 0.95\n")
    message = "0.95 must be below threshold (0.9)"
    assert issues(path) == [PolicyIssue(str(path), 5, "categories.default.ic.low", message)]


def test_every_bad_regex_is_reported_at_its_own_line(tmp_path: Path) -> None:
    path = write(tmp_path, "categories:\n  default:\n    match:\n      regex:\n        - ok\n        - '('\n"
                           "        - 'a{99999999999}'\n")
    found = issues(path)
    assert [(i.line, i.field) for i in found] == [(6, "categories.default.match.regex.1"),
                                                  (7, "categories.default.match.regex.2")]
    assert "does not compile" in found[0].message and "repetition number is too large" in found[1].message
