"""Why a record cannot be rendered with an exact mask: `RenderError` and its reasons (`REASONS`)."""

from __future__ import annotations

from ..errors import TrajtuneError

REASONS = {
    "template_cannot_express": "the chat template has no way to show this record (tools, a call, content + call)",
    "template_error": "the chat template raised an error on this record",
    "not_prefix_stable": "the template renders history differently from a generation prompt, so no exact mask",
    "template_variable": "the chat template reads a variable nothing gives (pass it with --template-kwargs)",
    "no_stop_token": "the template writes no end-of-turn token after this kind of message",
    "mask_mismatch": "the trained span is not the assistant message's own text",
    "token_straddles_boundary": "a token spans both trained and untrained text",
    "nothing_trained": "the record has no trained assistant message",
}


class RenderError(TrajtuneError):
    """A record the template cannot express, or cannot be masked exactly. `reason` is a key of REASONS."""

    def __init__(self, reason: str, detail: str):
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
