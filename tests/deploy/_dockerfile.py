"""A small Dockerfile reader for tests: instructions per stage, RUN commands without their flags, ARG defaults."""

from __future__ import annotations

import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def arg_defaults(self) -> dict[str, str]:
        out = {}
        for inst in self.all("ARG"):
            name, _, value = inst.args.partition("=")
            out[name.strip()] = _unquote(value.strip())
        return out

    def env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for inst in self.all("ENV"):
            for token in shlex.split(inst.args):
                name, _, value = token.partition("=")
                out[name] = value
        return out


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def instructions(path: Path) -> list[Instruction]:
    """Instructions of a Dockerfile, continuation lines joined, comments dropped."""
    out = []
    pending, start = "", 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1].strip() + " "
            continue
        text = (pending + stripped).strip()
        pending = ""
        keyword, _, args = text.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
    return out


def stages(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """Global ARGs (before the first FROM) and the build stages of a Dockerfile."""
    global_args: dict[str, str] = {}
    result: list[Stage] = []
    for inst in instructions(path):
        if inst.keyword == "FROM":
            parts = inst.args.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            result.append(Stage(base=parts[0], name=name))
        elif not result:
            if inst.keyword == "ARG":
                key, _, value = inst.args.partition("=")
                global_args[key.strip()] = _unquote(value.strip())
        else:
            result[-1].instructions.append(inst)
    return global_args, result


_RUN_FLAG = re.compile(r"^--[a-z-]+=\S+\s+")


def run_command(inst: Instruction) -> str:
    """The shell command of a RUN instruction, without BuildKit flags such as --mount."""
    text = inst.args
    while _RUN_FLAG.match(text):
        text = _RUN_FLAG.sub("", text, count=1)
    return text


def dockerignore_patterns(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def _ignored(rel: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matching a folder excludes its contents."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _pattern_regex(pattern.lstrip("!").strip("/"))
        if any(regex.match(p) for p in prefixes):
            ignored = not negate
    return ignored


def copy_build_context(root: Path, dest: Path) -> Path:
    """Copy the build context of `root` to `dest` the way Docker sends it (honouring .dockerignore)."""
    patterns = dockerignore_patterns(root / ".dockerignore")

    def ignore(folder: str, names: list[str]) -> set[str]:
        rel_folder = Path(folder).relative_to(root).as_posix()
        prefix = "" if rel_folder == "." else rel_folder + "/"
        return {n for n in names if _ignored(prefix + n, patterns)}

    shutil.copytree(root, dest, ignore=ignore, symlinks=True)
    return dest
