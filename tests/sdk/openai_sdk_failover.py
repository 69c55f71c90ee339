"""The official `openai` Python package through Sluice's failover and exhausted pool.

Run by tests/sdk.rs with SLUICE_PORT set; Sluice (no keys) serves three deployments over
scripted backends:
- `failover`: its first backend always answers 503, its second 200. Chat (plain and
  streamed) succeeds, and the SDK sees exactly one response per call: the failover is
  invisible to it.
- `lone`: one backend, cooling down when the script starts (the test made it answer 429
  with retry-after-ms 1500). The SDK's call gets Sluice's exhausted-pool 429 (no
  `x-should-retry`), waits the retry-after-ms it names, and its own retry succeeds.
- `throttled`: two backends that both answer 429. Sluice tried both, so its 429 says
  `x-should-retry: false`, and the SDK does not retry: one response, a RateLimitError.
Exits non-zero with a message on the first failed check.
"""

import os
import sys
import time

import openai
from openai import DefaultHttpxClient, OpenAI

PORT = os.environ["SLUICE_PORT"]
MESSAGES = [{"role": "user", "content": "Say hi."}]

seen = []


def record(response):
    seen.append((response.status_code, dict(response.headers)))


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}; responses seen: {seen!r}", file=sys.stderr)
        sys.exit(1)


def main():
    http = DefaultHttpxClient(event_hooks={"response": [record]}, timeout=20)
    client = OpenAI(base_url=f"http://127.0.0.1:{PORT}/v1", api_key="unused", http_client=http)

    answer = client.chat.completions.create(model="failover", messages=MESSAGES)
    check(answer.choices[0].message.content, f"failover answer: {answer!r}")
    check([s for s, _ in seen] == [200], "one clean answer through the failover")
    check(seen[0][1].get("x-should-retry") == "false", "the answer says Sluice retried")

    seen.clear()
    stream = client.chat.completions.create(model="failover", messages=MESSAGES, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    check(text, "streamed text through the failover")
    check([s for s, _ in seen] == [200], "one clean stream through the failover")

    seen.clear()
    started = time.monotonic()
    answer = client.chat.completions.create(model="lone", messages=MESSAGES)
    took = time.monotonic() - started
    check(answer.choices[0].message.content, f"lone answer: {answer!r}")
    statuses = [s for s, _ in seen]
    check(statuses == [429, 200], f"an exhausted-pool 429, then the SDK's retry: {statuses!r}")
    first = seen[0][1]
    check("retry-after-ms" in first and "retry-after" in first, f"429 headers: {first!r}")
    check("x-should-retry" not in first, "Sluice made no attempt: the SDK may retry")
    wait = int(first["retry-after-ms"]) / 1000
    check(took >= wait * 0.9, f"the SDK waited {took:.3f} s of the {wait:.3f} s named")

    seen.clear()
    try:
        client.chat.completions.create(model="throttled", messages=MESSAGES)
        check(False, "a pool whose every backend throttles answered")
    except openai.RateLimitError as e:
        check(e.response.headers.get("x-should-retry") == "false", "x-should-retry: false")
    check([s for s, _ in seen] == [429], "the SDK did not retry after Sluice's retries")
    print("openai sdk failover checks passed")


if __name__ == "__main__":
    main()
