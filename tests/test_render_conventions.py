"""Template conventions measured once per template and adapted (issue 12, classes 3-5): a system message the template
rejects or drops is folded into the first user turn, never lost; other variable conventions; call syntax."""

from __future__ import annotations

import pytest
import template_battery as tb

from trajtune.data_builders.errors import TrajtuneError
from trajtune.data_builders.render import render_with_mask
from trajtune.data_builders.trajectory import validate_record

CORPUS = tb.CORPUS


def _path(stem: str):
    path = CORPUS / f"{stem}.jinja"
    return path if path.is_file() else tb.SHARED_TEMPLATES / f"{stem}.jinja"


def _trained(tok, r) -> list[str]:
    return tb.trained_runs(tok, r.input_ids, r.loss_mask)


# ---------------------------------------------------------------------------------------------------------
# System folding


@pytest.mark.parametrize("stem, user_turn", [
    ("gemma-2-2b-it", "<start_of_turn>user\nSYSX1 You are a careful assistant.\n\nUSRX1 please help.<end_of_turn>"),
    ("gemma-7b-it", "<start_of_turn>user\nSYSX1 You are a careful assistant.\n\nUSRX1 please help.<end_of_turn>"),
    ("mistral-7b-instruct-v0.1", "[INST] SYSX1 You are a careful assistant.\n\nUSRX1 please help. [/INST]"),
    ("mistral-7b-instruct-v0.2", "[INST] SYSX1 You are a careful assistant.\n\nUSRX1 please help. [/INST]"),
])
def test_a_system_message_the_template_rejects_opens_the_first_user_turn(stem, user_turn):
    """Gemma 2 raises "System role not supported", Mistral v0.1/v0.2 "Conversation roles must alternate"."""
    tok = tb.bare_tokenizer(_path(stem))
    r = render_with_mask(tb.shape_record("multi_turn_system"), tok)
    assert user_turn in r.text
    assert [t.split("<")[0].strip() for t in _trained(tok, r)] == ["ASTX1 here you go.", "ASTX2 here you go."]


@pytest.mark.parametrize("stem", ["mistral-7b-instruct-v0.3", "mistral-nemo-instruct-2407", "phi-3-medium-4k-instruct",
                                  "phi-4-reasoning"])
def test_a_system_message_the_template_drops_is_kept_in_the_first_user_turn(stem):
    """These rendered without the system text (Mistral v0.3 keeps it only when the conversation ends on a user turn;
    Phi-4-reasoning replaces it with its own), and the cell was graded correct: a silent loss."""
    tok = tb.bare_tokenizer(_path(stem))
    record = tb.shape_record("multi_turn_system")
    r = render_with_mask(record, tok)
    assert "SYSX1 You are a careful assistant." in r.text[:r.text.index("USRX1")]
    assert "SYSX1" not in "".join(_trained(tok, r))


def test_a_system_message_with_no_user_turn_to_carry_it_is_an_error_not_a_drop():
    tok = tb.bare_tokenizer(_path("gemma-2-2b-it"))
    record = validate_record({"id": "s", "messages": [{"role": "system", "content": "SYSX9"},
                                                      {"role": "assistant", "content": "ASTX9"}]})
    with pytest.raises(TrajtuneError, match="no system role, and no user turn follows the system message"):
        render_with_mask(record, tok)
