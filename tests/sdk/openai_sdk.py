"""Drives a running Sluice with the official `openai` Python package.

Run by tests/sdk.rs with SLUICE_PORT set (or SLUICE_BASE, e.g. `https://localhost:8443`,
with SLUICE_CA naming the CA file that signed Sluice's certificate); Sluice serves the mock
deployments `gpt-4o` (16 completion tokens) and `text-embedding-3-small` (8 dimensions).
Exits non-zero with a message on the first failed check.
"""

import os
import ssl
import sys

from openai import AzureOpenAI, DefaultHttpxClient, OpenAI

BASE = os.environ.get("SLUICE_BASE") or f"http://127.0.0.1:{os.environ['SLUICE_PORT']}"
CA = os.environ.get("SLUICE_CA")
COMPLETION_TOKENS = 16
DIMENSIONS = 8
MESSAGES = [
    {"role": "system", "content": "You are a concise assistant."},
    {"role": "user", "content": "Explain a token bucket in one sentence."},
]


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)


def chat(client, label):
    r = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=100)
    check(r.object == "chat.completion", f"{label} chat: object {r.object!r}")
    check(len(r.choices) == 1, f"{label} chat: choices {r.choices!r}")
    msg = r.choices[0].message
    check(msg.role == "assistant", f"{label} chat: role {msg.role!r}")
    check(bool(msg.content), f"{label} chat: empty content")
    check(r.choices[0].finish_reason is not None, f"{label} chat: no finish_reason")
    check(r.usage is not None, f"{label} chat: no usage")
    check(r.usage.completion_tokens == COMPLETION_TOKENS, f"{label} chat: usage {r.usage!r}")
    check(
        r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens,
        f"{label} chat: usage totals {r.usage!r}",
    )


def stream(client, label, include_usage):
    kwargs = {"stream_options": {"include_usage": True}} if include_usage else {}
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, max_tokens=100, stream=True, **kwargs
        )
    )
    what = f"{label} stream (include_usage={include_usage})"
    check(len(chunks) >= 2, f"{what}: {len(chunks)} chunks")
    text = "".join(
        (c.choices[0].delta.content or "") for c in chunks if c.choices
    )
    check(bool(text), f"{what}: no content")
    check(
        any(c.choices and c.choices[0].finish_reason for c in chunks),
        f"{what}: no finish_reason",
    )
    usages = [c.usage for c in chunks if c.usage is not None]
    if include_usage:
        check(len(usages) == 1, f"{what}: usage chunks {usages!r}")
        check(chunks[-1].usage is not None, f"{what}: usage not on the last chunk")
        check(chunks[-1].choices == [], f"{what}: usage chunk has choices")
        check(
            usages[0].completion_tokens == COMPLETION_TOKENS,
            f"{what}: usage {usages[0]!r}",
        )
    else:
        check(not usages, f"{what}: usage sent without include_usage: {usages!r}")


def embeddings(client, label):
    r = client.embeddings.create(
        model="text-embedding-3-small",
        input=["The food was delicious", "and the waiter was friendly"],
    )
    check(len(r.data) == 2, f"{label} embeddings: {len(r.data)} vectors")
    for i, d in enumerate(r.data):
        check(d.index == i, f"{label} embeddings: index {d.index}")
        check(len(d.embedding) == DIMENSIONS, f"{label} embeddings: {len(d.embedding)} dims")
    check(r.usage.prompt_tokens > 0, f"{label} embeddings: usage {r.usage!r}")


def main():
    # Over HTTPS the clients trust the test CA (and nothing else) through their HTTP client.
    http = {}
    if CA:
        trust = ssl.create_default_context(cafile=CA)
        http = {"http_client": DefaultHttpxClient(verify=trust, timeout=20)}
    oai = OpenAI(
        base_url=f"{BASE}/v1", api_key="sluice-demo-key", max_retries=0, timeout=20, **http
    )
    azure = AzureOpenAI(
        azure_endpoint=BASE,
        api_version="2024-10-21",
        api_key="sluice-demo-key",
        max_retries=0,
        timeout=20,
        **http,
    )
    ids = [m.id for m in oai.models.list()]
    check(ids == ["gpt-4o", "text-embedding-3-small"], f"models: {ids!r}")
    for client, label in [(oai, "openai"), (azure, "azure")]:
        chat(client, label)
        stream(client, label, include_usage=True)
        stream(client, label, include_usage=False)
        embeddings(client, label)
    print(f"openai sdk checks passed ({BASE.split(':')[0]})")


if __name__ == "__main__":
    main()
