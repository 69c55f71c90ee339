"""The official `openai` Python package meets a rate limit of Sluice and retries after it.

Run by tests/sdk.rs with SLUICE_PORT and SLUICE_KEY set; Sluice serves the mock deployment
`gpt-4o` to a subscription limited to 1 request a second (burst 1). The first call passes;
the second, made at once, gets a 429 with Retry-After / retry-after-ms, and the SDK's own
retry (max_retries left at its default) succeeds after waiting. Exits non-zero with a
message on the first failed check.
"""

import os
import sys
import time

from openai import DefaultHttpxClient, OpenAI

PORT = os.environ["SLUICE_PORT"]
KEY = os.environ["SLUICE_KEY"]
MESSAGES = [{"role": "user", "content": "Explain a token bucket in one sentence."}]

seen = []


def record(response):
    seen.append((response.status_code, dict(response.headers)))


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}; responses seen: {seen!r}", file=sys.stderr)
        sys.exit(1)


def main():
    # The SDK's own HTTP client class (whichever httpx it is built on), hooked to see every
    # response, the retried 429 included.
    http = DefaultHttpxClient(event_hooks={"response": [record]}, timeout=20)
    client = OpenAI(base_url=f"http://127.0.0.1:{PORT}/v1", api_key=KEY, http_client=http)
    first = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=20)
    check(first.object == "chat.completion", f"first call: {first!r}")
    check([s for s, _ in seen] == [200], "first call passes at once")

    started = time.monotonic()
    second = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=20)
    took = time.monotonic() - started
    check(second.object == "chat.completion", f"second call: {second!r}")
    statuses = [s for s, _ in seen[1:]]
    check(statuses[0] == 429, f"the second call first gets a 429: {statuses!r}")
    check(statuses[-1] == 200, f"the retry succeeds: {statuses!r}")
    headers = seen[1][1]
    check("retry-after" in headers, f"429 without Retry-After: {headers!r}")
    check(int(headers["retry-after"]) >= 1, f"Retry-After: {headers['retry-after']!r}")
    check("retry-after-ms" in headers, f"429 without retry-after-ms: {headers!r}")
    check(took >= 0.5, f"the retry waited only {took:.3f} s")
    check(took < 10, f"the retry took {took:.3f} s")
    print(f"openai sdk retry checks passed ({took:.3f} s, statuses {statuses})")


if __name__ == "__main__":
    main()
