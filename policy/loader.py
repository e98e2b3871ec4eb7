"""Read policies.yaml into a validated Policy, or into errors that name the file, line and field.

Every problem with a policy file, including one that cannot be read or decoded, is a PolicyError:
the proxy's file watcher catches only that, and keeps the old policy live.

Pydantic checks a model's own fields before its model-level checks (ic.low below threshold, names
that must resolve) and skips those checks while any field of that model is invalid, so a file can
show its reference errors only once its field errors are fixed.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml
from pydantic import ValidationError

from catcache.policy.schema import FieldErrors, Policy


@dataclass(frozen=True)
class PolicyIssue:
    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class PolicyError(Exception):
    """A policy file that cannot be used; `issues` lists every problem found."""

    def __init__(self, issues: list[PolicyIssue]):
        self.issues = issues
        super().__init__("\n".join(str(issue) for issue in issues))


def builtin_policy_text() -> str:
    return resources.files("catcache").joinpath("policies.yaml").read_text(encoding="utf-8")


def load_policy(path: str | Path | None) -> Policy:
    """Load `path`, or the built-in defaults when it is None."""
    if path is None:
        return parse_policy(builtin_policy_text(), "<built-in policies.yaml>")
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PolicyError([PolicyIssue(str(path), None, "", f"cannot read: {exc.strerror or exc}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        message = f"not UTF-8 text: byte 0x{raw[exc.start]:02x} at offset {exc.start} (save the file as UTF-8)"
        raise PolicyError([PolicyIssue(str(path), line, "", message)]) from None
    return parse_policy(text, str(path))


def parse_policy(text: str, filename: str) -> Policy:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else None
        raise PolicyError([PolicyIssue(filename, line, "", f"not valid YAML: {getattr(exc, 'problem', exc)}")]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PolicyError([PolicyIssue(filename, 1, "", "the top level must be a mapping of keys")])
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        raise PolicyError([issue for error in exc.errors() for issue in _issues(filename, root, error)]) from None


def _issues(filename: str, root: yaml.Node | None, error: dict) -> list[PolicyIssue]:
    """One issue per problem in `error`: a FieldErrors from a model-level check holds several,
    each located below the model that raised it."""
    location = [part for part in error["loc"] if not _is_union_tag(part)]
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, FieldErrors):
        return [_issue(filename, root, location + list(path), message) for path, message in cause.problems]
    message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"].removeprefix("Value error, ")
    return [_issue(filename, root, location, message)]


def _issue(filename: str, root: yaml.Node | None, location: list, message: str) -> PolicyIssue:
    return PolicyIssue(filename, _line_of(root, location), ".".join(str(part) for part in location), message)


def _is_union_tag(part: object) -> bool:
    return isinstance(part, str) and ("[" in part or part in {"function-after", "function-before"})


def _line_of(node: yaml.Node | None, location: list) -> int | None:
    """The 1-based line of the deepest YAML node on `location` that exists (a key's own line)."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in location:
        if isinstance(node, yaml.MappingNode):
            pair = next(((k, v) for k, v in node.value if str(k.value) == str(part)), None)
            if pair is None:
                break
            line, node = pair[0].start_mark.line + 1, pair[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line
