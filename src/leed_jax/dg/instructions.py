"""The instruction language of the DG stage, and its tolerant reader.

One instruction per line::

    [MoveTo, Intersection_5, Agent_3]     traffic: Agent 3's next waypoint is intersection 5
    [MoveTo, Landmark_2, Agent_1]         MPE: Agent 1 heads for landmark 2

Indices are 0-based positions on the env's agent axis / node list / landmark list. The LLM and
the built-in planner both write this text; everything after it (validation, repair, execution,
the buffer) is one path for both sources.

The reader is tolerant about *form*: prose around the instructions, Markdown code fences,
bullets and numbering, quotes around the tokens, spacing and case (``[moveto , intersection 5,
AGENT_3]`` reads fine). It is strict about *content*: a bracketed line it cannot read becomes a
:class:`ParseIssue` with its line number; whether the command, agent and target exist is the
validator's job (``leed_jax.dg.validate``), so the reader needs no env.
"""

from __future__ import annotations

import dataclasses
import re

#: Replies longer than this are cut before parsing (a runaway model must not stall the run);
#: the cut is reported as a parse issue.
MAX_REPLY_CHARS = 2_000_000

# [cmd, Kind_12, Agent_3] — kind and agent tokens accept "_", "-", "#", or space before the id,
# and optional quotes; the id must be a non-negative integer.
_TOKEN = r"""["'`]?\s*([A-Za-z][A-Za-z ]*?)\s*[_\-#: ]?\s*(\d+)\s*["'`]?"""
_INSTRUCTION = re.compile(
    r"""\[\s*["'`]?\s*([A-Za-z_][A-Za-z_ ]*?)\s*["'`]?\s*,\s*""" + _TOKEN + r"\s*,\s*" + _TOKEN
    + r"\s*\]"
)
_LOOKS_LIKE = re.compile(r"(?i)move|agent|intersection|landmark|node|vehicle")


@dataclasses.dataclass(frozen=True)
class RawInstruction:
    """One instruction as written, before validation.

    ``command`` and ``target_kind`` are normalised to the canonical spelling when recognised
    (``"MoveTo"``, ``"Intersection"``, ``"Landmark"``) and kept verbatim otherwise.
    """

    command: str
    target_kind: str
    target: int
    agent_kind: str
    agent: int
    line: int  # 1-based line in the reply

    def text(self) -> str:
        return f"[{self.command}, {self.target_kind}_{self.target}, {self.agent_kind}_{self.agent}]"


@dataclasses.dataclass(frozen=True)
class ParseIssue:
    """A line the reader could not turn into an instruction."""

    line: int  # 1-based; 0 for the reply as a whole
    reason: str
    text: str = ""  # the offending line, shortened

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line else "reply"
        return f"{where}: {self.reason}" + (f": {self.text!r}" if self.text else "")


@dataclasses.dataclass(frozen=True)
class ParsedReply:
    instructions: tuple[RawInstruction, ...]
    issues: tuple[ParseIssue, ...]


_COMMANDS = {"moveto": "MoveTo", "move_to": "MoveTo", "move to": "MoveTo", "goto": "MoveTo"}
_KINDS = {
    "intersection": "Intersection",
    "node": "Intersection",
    "landmark": "Landmark",
    "agent": "Agent",
    "vehicle": "Agent",
}


def _canonical(word: str, table: dict[str, str]) -> str:
    key = " ".join(word.strip().lower().split())
    return table.get(key, table.get(key.replace(" ", "_"), table.get(key.replace(" ", ""), word)))


def _shorten(line: str, limit: int = 80) -> str:
    line = line.strip()
    return line if len(line) <= limit else line[: limit - 3] + "..."


def parse_instructions(text: str | None, *, max_chars: int = MAX_REPLY_CHARS) -> ParsedReply:
    """Read every instruction in ``text`` (an LLM reply or the planner's output).

    Lines without ``[`` are prose and ignored. A line with a ``[`` that holds no readable
    instruction is reported (``ParseIssue``), e.g. a truncated last line ``[MoveTo, Inters``.
    Several instructions on one line are all read.
    """
    issues: list[ParseIssue] = []
    if text is None or not text.strip():
        return ParsedReply((), (ParseIssue(0, "empty reply"),))
    if len(text) > max_chars:
        issues.append(ParseIssue(0, f"reply of {len(text):,} characters cut at {max_chars:,}"))
        text = text[:max_chars]
    out: list[RawInstruction] = []
    last_line = len(text.splitlines())
    for number, line in enumerate(text.splitlines(), start=1):
        if "[" not in line:
            continue
        found = False
        for m in _INSTRUCTION.finditer(line):
            found = True
            command, kind, target, akind, agent = m.groups()
            out.append(
                RawInstruction(
                    command=_canonical(command, _COMMANDS),
                    target_kind=_canonical(kind, _KINDS),
                    target=int(target),
                    agent_kind=_canonical(akind, _KINDS),
                    agent=int(agent),
                    line=number,
                )
            )
        if found or not _LOOKS_LIKE.search(line):
            continue  # prose that happens to hold a bracket is not an attempt
        if "]" not in line.split("[", 1)[1] and number == last_line:
            issues.append(ParseIssue(number, "truncated instruction", _shorten(line)))
        else:
            issues.append(ParseIssue(number, "not an instruction", _shorten(line)))
    if not out:
        issues.append(ParseIssue(0, "no instruction found"))
    return ParsedReply(tuple(out), tuple(issues))


def format_instruction(target_kind: str, target: int, agent: int) -> str:
    """The canonical line, e.g. ``format_instruction("Intersection", 5, 3)`` →
    ``"[MoveTo, Intersection_5, Agent_3]"``."""
    return f"[MoveTo, {target_kind}_{int(target)}, Agent_{int(agent)}]"


# "Agent_3": [1, 2, 5]   or   "Agent_3": 2   — also inside a reply cut off mid-array.
_JSON_ENTRY = re.compile(r'"\s*(?:Agent|Vehicle)[ _\-#]?(\d+)\s*"\s*:\s*(\[[^\]\[{}]*\]?|-?\d+)',
                         re.IGNORECASE)


def structured_to_text(text: str | None, target_kind: str) -> str | None:
    """A structured (JSON) reply ``{"Agent_3": [5, 9], ...}`` as instruction text, so that it
    goes through the same reader, validator and repair as a text reply; ``None`` if ``text``
    holds no such entry (then it is read as text). Tolerant of a reply cut off by the token
    limit: the entries before the cut are kept, an array cut in the middle keeps its complete
    numbers and is marked with a final ``[MoveTo, ...`` line that the reader reports as
    truncated."""
    if not text or "{" not in text:
        return None
    lines: list[str] = []
    for m in _JSON_ENTRY.finditer(text):
        agent, value = int(m.group(1)), m.group(2)
        if value.startswith("["):
            cut = not value.endswith("]")
            body = value.strip("[]")
            items = [t.strip().strip('"\'') for t in body.split(",")]
            if cut and items:
                items = items[:-1]  # the last number may itself be cut
            targets = [t for t in items if t]
        else:
            cut, targets = False, [value]
        for t in targets:
            t = t.rsplit("_", 1)[-1]  # "Intersection_5" or 5
            if t.lstrip("-").isdigit():
                lines.append(format_instruction(target_kind, int(t), agent)
                             if int(t) >= 0 else f"[MoveTo, {target_kind}_{t}, Agent_{agent}]")
            else:
                lines.append(f"[MoveTo, {t!r}, Agent_{agent}]")  # reported as unreadable
        if cut:
            lines.append(f"[MoveTo, {target_kind}_")
    return "\n".join(lines) if lines else None
