"""Drives a flexrun server through a client that openapi-python-client generated from the
server's own /v1/openapi.json (tests/http/catalog.rs generates it and runs this script).

Usage: generated_client.py BASE_URL TOKEN REPLAN_ENVELOPE_JSON

Every request goes through the generated package `flexrun_client`. Prints one
`key=value` line per finding; the Rust test asserts on them.
"""

import json
import sys
import time

from flexrun_client import AuthenticatedClient, Client
from flexrun_client.api.operations import healthz
from flexrun_client.api.plans import plan_diff
from flexrun_client.api.runs import create_run, get_run
from flexrun_client.models import (
    ErrorBody,
    JsonSchemaOutputContract,
    JsonSchemaOutputContractMode,
    JsonSchemaOutputContractSchema,
    PlanDiffView,
    RunCreated,
    RunDetail,
    RunRequest,
    RunRequestInputs,
    RunStatusDto,
)

GUARD_SECONDS = 60


def wait_until_ended(client, run_id):
    deadline = time.monotonic() + GUARD_SECONDS
    while True:
        detail = get_run.sync(run_id, client=client)
        assert isinstance(detail, RunDetail), detail
        if detail.status != RunStatusDto.ACTIVE:
            return detail
        if time.monotonic() > deadline:
            sys.exit(f"run {run_id} still {detail.state} after {GUARD_SECONDS} s")
        time.sleep(0.05)


def main():
    base_url, token, envelope_path = sys.argv[1:4]
    with open(envelope_path) as f:
        envelope = json.load(f)

    anonymous = Client(base_url=base_url, raise_on_unexpected_status=True)
    print(f"health={healthz.sync(client=anonymous).status}")
    refused = get_run.sync_detailed("00000000-0000-0000-0000-000000000000", client=anonymous)
    assert isinstance(refused.parsed, ErrorBody), refused
    print(f"anonymous={int(refused.status_code)} {refused.parsed.error.code}")

    client = AuthenticatedClient(base_url=base_url, token=token, raise_on_unexpected_status=True)

    created = create_run.sync(client=client, body=RunRequest.from_dict(envelope))
    assert isinstance(created, RunCreated), created
    print(f"facets_created={created.status.value}")
    detail = wait_until_ended(client, created.run_id)
    print(f"facets_run={detail.status.value} planVersion={detail.plan_version}")
    print(f"facets_output={','.join(sorted(detail.output.to_dict()))}")

    diff = plan_diff.sync(created.run_id, client=client)
    assert isinstance(diff, PlanDiffView), diff
    print(f"diff={diff.from_version}->{diff.to_version} added={','.join(diff.added_nodes)}")

    contract = JsonSchemaOutputContract(
        mode=JsonSchemaOutputContractMode.JSON_SCHEMA,
        schema=JsonSchemaOutputContractSchema.from_dict(
            {
                "type": "object",
                "required": ["copyVariants"],
                "properties": {"copyVariants": {"type": "array"}},
            }
        ),
    )
    request = RunRequest(
        objective="taglines under a JSON Schema contract",
        inputs=RunRequestInputs.from_dict(envelope["inputs"]),
        output_contract=contract,
    )
    sent = request.to_dict()["outputContract"]
    print(f"json_schema_sent={sent['mode']} required={','.join(sent['schema']['required'])}")
    created = create_run.sync(client=client, body=request)
    assert isinstance(created, RunCreated), created
    detail = wait_until_ended(client, created.run_id)
    print(f"json_schema_run={detail.status.value}")
    print(f"json_schema_output={','.join(sorted(detail.output.to_dict()))}")


if __name__ == "__main__":
    main()
