"""A small reader for the project's Dockerfile: stages, and each stage's instructions in order.

Enough for structural checks (no variable expansion beyond what a test asks for): line
continuations are joined, comments and parser directives are dropped, ``# hadolint`` lines kept
apart so a test can ask that each one is explained.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Dockerfile", "Instruction", "Stage", "read_dockerfile"]


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    args: str  # the rest of the line, continuations joined
    line: int  # 1-based line of the keyword

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form CMD/ENTRYPOINT/RUN (or HEALTHCHECK's CMD), else None."""
        text = self.args
        if self.keyword == "HEALTHCHECK":
            match = re.search(r"\bCMD\s+(.*)$", text)
            if match is None:
                return None
            text = match.group(1)
        text = text.strip()
        if not text.startswith("["):
            return None
        value = json.loads(text)
        return value if isinstance(value, list) else None

    def words(self) -> list[str]:
        return shlex.split(self.args, comments=False, posix=True)

    def env(self) -> dict[str, str]:
        """ENV/ARG/LABEL key=value pairs."""
        out: dict[str, str] = {}
        for word in self.words():
            key, sep, value = word.partition("=")
            out[key] = value if sep else ""
        return out


@dataclass
class Stage:
    name: str
    base: str
    index: int
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for instruction in self.all("ENV"):
            out.update(instruction.env())
        return out

    def position(self, predicate: object) -> int:
        """Index of the first instruction for which ``predicate`` holds, or -1."""
        for n, instruction in enumerate(self.instructions):
            if predicate(instruction):  # type: ignore[operator]
                return n
        return -1


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]
    hadolint_ignores: list[tuple[int, str, str]]  # (line, directive, the comment line above)

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"no stage {name!r}; stages: {[s.name for s in self.stages]}")


def read_dockerfile(path: Path) -> Dockerfile:
    lines = path.read_text(encoding="utf-8").splitlines()
    logical: list[tuple[int, str]] = []
    ignores: list[tuple[int, str, str]] = []
    buffer: list[str] = []
    start = 0
    previous_comment = ""
    for number, raw in enumerate(lines, start=1):
        stripped = raw.strip()
        if stripped.startswith("#"):
            if stripped.startswith("# hadolint"):
                ignores.append((number, stripped, previous_comment))
            previous_comment = stripped
            continue  # comments inside a continued instruction are dropped too
        if not stripped and not buffer:
            previous_comment = ""
            continue
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer.append(stripped[:-1].strip())
            continue
        buffer.append(stripped)
        logical.append((start, " ".join(part for part in buffer if part)))
        buffer = []
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for number, text in logical:
        keyword, _, args = text.partition(" ")
        instruction = Instruction(keyword.upper(), args.strip(), number)
        if instruction.keyword == "FROM":
            words = instruction.args.split()
            words = [w for w in words if not w.startswith("--")]
            base = words[0]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name=name, base=base, index=len(stages)))
        elif not stages:
            if instruction.keyword == "ARG":
                global_args.update(instruction.env())
        else:
            stages[-1].instructions.append(instruction)
    return Dockerfile(global_args=global_args, stages=stages, hadolint_ignores=ignores)
