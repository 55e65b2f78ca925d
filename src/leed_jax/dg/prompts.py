"""Prompt templates: loading, hashing and rendering (``prompts/<family>/*.md``).

Templates are plain files a user edits (see ``prompts/README.md``); they use
``string.Template`` placeholders (``$name``), so JSON or brackets in the text need no escaping.
The SHA-256 of each file goes into the demo buffer's metadata.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import string
from pathlib import Path

from leed_jax.dg.errors import DGError

TEMPLATE_FILES = ("system", "user", "feedback")
#: Loaded when present: the next-hop (multiple-choice) prompt of the traffic family.
OPTIONAL_FILES = ("nexthop_system", "nexthop")


def default_prompts_dir() -> Path:
    """``$LEED_PROMPTS_DIR`` or the repository's ``prompts/``."""
    env = os.environ.get("LEED_PROMPTS_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "prompts"


@dataclasses.dataclass(frozen=True)
class PromptSet:
    """The three templates of one env family."""

    family: str
    paths: dict[str, Path]
    texts: dict[str, str]

    @property
    def hashes(self) -> dict[str, str]:
        """``{"traffic/user.md": sha256, ...}`` — recorded with every demo buffer."""
        return {
            f"{self.family}/{p.name}": hashlib.sha256(self.texts[k].encode()).hexdigest()
            for k, p in self.paths.items()
        }

    def render(self, which: str, **fields) -> str:
        """Fill template ``which`` ("system" | "user" | "feedback" | "nexthop_system" |
        "nexthop"); unknown placeholders are an error naming the file, unused fields are fine."""
        if which not in self.texts:
            raise DGError(f"prompt template {which}.md is missing for the {self.family!r} "
                          f"family (it is needed for this mode)")
        try:
            return string.Template(self.texts[which]).substitute(
                {k: str(v) for k, v in fields.items()}
            )
        except KeyError as e:
            raise DGError(
                f"prompt template {self.paths[which]} uses ${e.args[0]}, which is not one of "
                f"{sorted(fields)}"
            ) from None
        except ValueError as e:
            raise DGError(f"prompt template {self.paths[which]}: {e} (write $$ for a dollar)") \
                from None


def load_prompts(family: str, prompts_dir: str | Path | None = None) -> PromptSet:
    root = Path(prompts_dir) if prompts_dir is not None else default_prompts_dir()
    folder = root / family
    paths, texts = {}, {}
    for name in TEMPLATE_FILES:
        path = folder / f"{name}.md"
        if not path.is_file():
            raise DGError(
                f"prompt template {path} not found; the {family!r} family needs "
                f"{', '.join(n + '.md' for n in TEMPLATE_FILES)} in {folder}"
            )
        paths[name] = path
        texts[name] = path.read_text(encoding="utf-8")
    for name in OPTIONAL_FILES:
        path = folder / f"{name}.md"
        if path.is_file():
            paths[name] = path
            texts[name] = path.read_text(encoding="utf-8")
    return PromptSet(family, paths, texts)
