"""Prompt templates are user-editable files: hashed, rendered, checked."""

from __future__ import annotations

import shutil

import pytest

from leed_jax.dg.errors import DGError
from leed_jax.dg.prompts import default_prompts_dir, load_prompts


@pytest.mark.parametrize("family", ["traffic", "mpe"])
def test_bundled_templates_load(family):
    p = load_prompts(family)
    base = {f"{family}/system.md", f"{family}/user.md", f"{family}/feedback.md"}
    # Traffic also has the next-hop (multiple-choice) prompt.
    extra = {"traffic/nexthop_system.md", "traffic/nexthop.md"} if family == "traffic" else set()
    assert set(p.hashes) == base | extra
    assert all(len(h) == 64 for h in p.hashes.values())
    assert "[MoveTo," in p.texts["system"]


def test_edited_template_changes_hash_and_bad_placeholder_is_named(tmp_path):
    shutil.copytree(default_prompts_dir(), tmp_path / "prompts")
    before = load_prompts("mpe", tmp_path / "prompts").hashes
    user = tmp_path / "prompts" / "mpe" / "user.md"
    user.write_text(user.read_text() + "\nBudget: $$5. Also $nonsense.\n")
    edited = load_prompts("mpe", tmp_path / "prompts")
    assert edited.hashes["mpe/user.md"] != before["mpe/user.md"]
    assert edited.hashes["mpe/system.md"] == before["mpe/system.md"]
    with pytest.raises(DGError, match=r"user\.md uses \$nonsense"):
        edited.render("user", num_agents=1, num_landmarks=1, agents="", landmarks="",
                      num_requested=1)


def test_missing_template_dir(tmp_path):
    with pytest.raises(DGError, match="not found"):
        load_prompts("traffic", tmp_path)
