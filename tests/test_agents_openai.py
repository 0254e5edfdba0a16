"""The `openai:` policy through the real `openai` client against a scripted OpenAI-compatible server on 127.0.0.1.

The server below is scripted, not a model: it answers /v1/models and /v1/chat/completions with the replies a test
queues, and records each request, so the tests check both directions of the wire format, malformed replies
(kept as text, answered with an error observation), HTTP errors with retries, and an unreachable endpoint.
"""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from test_agents_rollout import FACTS, LookupEnv

from trajtune.data_builders.agents import make_policy, rollout
from trajtune.data_builders.errors import TrajtuneError
from trajtune.data_builders.trajectory import validate_record


class ScriptedServer(ThreadingHTTPServer):
    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.replies: list[tuple[int, dict]] = []  # (HTTP status, body) per chat request, in order
        self.requests: list[dict] = []
        self.auth: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class Handler(BaseHTTPRequestHandler):
    server: ScriptedServer

    def log_message(self, *args):  # keep test output quiet
        pass

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("retry-after-ms", "5")  # the client's retry waits this long, not its default backoff
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._send(200, {"object": "list", "data": [{"id": "scripted-model", "object": "model", "created": 0,
                                                     "owned_by": "test"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(body)
        self.server.auth.append(self.headers.get("Authorization", ""))
        status, reply = self.server.replies.pop(0)
        self._send(status, reply)


def completion(content: str | None = None, calls: list[tuple[str, str, str]] = ()) -> tuple[int, dict]:
    """A chat completion whose message has `content` and tool calls (id, name, arguments as the raw string)."""
    message: dict = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = [{"id": i, "type": "function", "function": {"name": n, "arguments": a}}
                                 for i, n, a in calls]
    return 200, {"id": "cmpl-1", "object": "chat.completion", "created": 0, "model": "scripted-model",
                 "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if calls else "stop"}]}


@pytest.fixture(scope="module")
def server():
    srv = ScriptedServer()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def fresh(server):
    server.replies.clear()
    server.requests.clear()
    server.auth.clear()
    return server


def test_openai_policy_rollout_with_a_malformed_reply_then_recovery(fresh, monkeypatch):
    monkeypatch.setenv("TRAJTUNE_TEST_KEY", "sk-test")
    task = LookupEnv().tasks()[1]  # k1
    fresh.replies += [completion(None, [("c1", "lookup", '{"key": "k1"')]),  # arguments cut off: not JSON
                      completion("Looking it up.", [("call_abc", "lookup", '{"key": "k1"}')]),
                      completion(f"The value is {FACTS['k1']}.")]
    policy = make_policy(f"openai:{fresh.url}", api_key_env="TRAJTUNE_TEST_KEY", max_tokens=64, retries=0)
    traj = rollout(LookupEnv(), policy, task)
    assert traj["meta"]["reward"] == 1.0 and traj["meta"]["format_errors"] == 1
    assert traj["meta"]["policy"] == f"openai:{fresh.url}" and validate_record(traj) == traj
    bad, error = traj["messages"][2:4]
    assert "tool_calls" not in bad and '{\\"key\\": \\"k1\\"' in bad["content"]  # the raw reply, kept as text
    assert json.loads(error["content"])["error"]["type"] == "bad_json"
    good = traj["messages"][4]
    assert good["content"] == "Looking it up." and good["tool_calls"] == [
        {"id": "call_abc", "type": "function", "function": {"name": "lookup", "arguments": {"key": "k1"}}}]
    # The wire: the only served model, the key from the env var, tools sent, arguments as JSON strings.
    first, _, last = fresh.requests
    assert first["model"] == "scripted-model" and first["max_tokens"] == 64 and first["temperature"] == 0.0
    assert first["tools"] == traj["tools"] and fresh.auth == ["Bearer sk-test"] * 3
    sent = last["messages"][4:6]
    assert sent[0]["tool_calls"][0]["function"]["arguments"] == '{"key": "k1"}'
    assert sent[1] == {"role": "tool", "content": json.dumps({"key": "k1", "value": FACTS["k1"]}),
                       "tool_call_id": "call_abc"}


def test_a_reply_that_is_not_a_chat_completion_is_text_not_a_crash(fresh):
    fresh.replies.append((200, {"unexpected": "shape"}))
    policy = make_policy(f"openai:{fresh.url}", served_model="m", retries=0)
    reply = policy.act([{"role": "user", "content": "hi"}], [])
    assert reply["parse_error"]["type"] == "bad_response" and "unexpected" in reply["content"]


def test_http_errors_are_retried_then_reported(fresh):
    fresh.replies += [(500, {"error": {"message": "boom"}}), (500, {"error": {"message": "boom"}})]
    policy = make_policy(f"openai:{fresh.url}", served_model="m", retries=1)
    with pytest.raises(TrajtuneError, match="HTTP 500"):
        policy.act([{"role": "user", "content": "hi"}], [])
    assert len(fresh.requests) == 2  # the first try and one retry


def test_unreachable_endpoint_and_missing_key_are_clear_errors(monkeypatch):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    policy = make_policy(f"openai:http://127.0.0.1:{port}/v1", served_model="m", retries=0, timeout=5)
    with pytest.raises(TrajtuneError, match="cannot reach the endpoint"):
        policy.act([{"role": "user", "content": "hi"}], [])
    monkeypatch.delenv("TRAJTUNE_NO_SUCH_KEY", raising=False)
    with pytest.raises(TrajtuneError, match="TRAJTUNE_NO_SUCH_KEY.*is not set"):
        make_policy(f"openai:http://127.0.0.1:{port}/v1", api_key_env="TRAJTUNE_NO_SUCH_KEY")
    with pytest.raises(TrajtuneError, match="must start with http"):
        make_policy("openai:127.0.0.1:8000")
