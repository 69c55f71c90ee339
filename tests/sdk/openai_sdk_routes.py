"""Every client shape of the official `openai` Python package reaches Sluice's routes for
`responses.create()` and `models.list()`.

Run by tests/sdk.rs with SLUICE_PORT set; Sluice serves the mock deployments `gpt-4o`
(16 completion tokens) and `text-embedding-3-small`. Exits non-zero with a message on the
first failed check.
"""

import os
import sys

from openai import AzureOpenAI, OpenAI

PORT = os.environ["SLUICE_PORT"]
BASE = f"http://127.0.0.1:{PORT}"
COMPLETION_TOKENS = 16
DEPLOYMENTS = ["gpt-4o", "text-embedding-3-small"]


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)


def responses(client, label):
    r = client.responses.create(model="gpt-4o", input="Explain a token bucket.")
    check(r.object == "response", f"{label} responses: object {r.object!r}")
    check(r.status == "completed", f"{label} responses: status {r.status!r}")
    check(bool(r.output_text), f"{label} responses: empty output_text")
    check(
        r.usage is not None and r.usage.output_tokens == COMPLETION_TOKENS,
        f"{label} responses: usage {r.usage!r}",
    )


def models(client, label):
    ids = [m.id for m in client.models.list()]
    check(ids == DEPLOYMENTS, f"{label} models: {ids!r}")


def main():
    common = {"api_key": "sluice-demo-key", "max_retries": 0, "timeout": 20}
    version = "2025-03-01-preview"
    # POST /openai/responses?api-version=…, GET /openai/models?api-version=…
    resource = AzureOpenAI(azure_endpoint=BASE, api_version=version, **common)
    # The same resource-level paths (the client sends non-deployment calls there).
    with_deployment = AzureOpenAI(
        azure_endpoint=BASE, azure_deployment="gpt-4o", api_version=version, **common
    )
    # POST /openai/deployments/gpt-4o/responses?api-version=…
    deployment_base = AzureOpenAI(
        base_url=f"{BASE}/openai/deployments/gpt-4o", api_version=version, **common
    )
    # POST /openai/v1/responses, GET /openai/v1/models (Azure v1 API, no api-version).
    v1 = OpenAI(base_url=f"{BASE}/openai/v1/", **common)
    for client, label in [
        (resource, "azure endpoint"),
        (with_deployment, "azure endpoint+deployment"),
        (deployment_base, "azure deployment base_url"),
        (v1, "openai /openai/v1"),
    ]:
        responses(client, label)
    for client, label in [
        (resource, "azure endpoint"),
        (with_deployment, "azure endpoint+deployment"),
        (v1, "openai /openai/v1"),
    ]:
        models(client, label)
    print("openai sdk route checks passed")


if __name__ == "__main__":
    main()
