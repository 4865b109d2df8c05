"""Schema fuzzing of the HTTP API from its own OpenAPI document (schemathesis) against the real
server on loopback: no 5xx, status codes, content types, headers and bodies as documented.

Bounded (a few examples per operation) so it stays well under a minute on 2 cores.  One check
is left out on purpose: `positive_data_acceptance` expects every schema-valid request to be
accepted, but a schema cannot say "a decodable PNG" or "a saic bitstream with a valid CRC"
(format: binary), so random binary bodies are rightly refused with 422.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error, positive_data_acceptance


def no_server_error_but_documented_501(ctx, response, case):  # noqa: ANN001, ANN201 - schemathesis check signature
    """Like `not_a_server_error`, except a 501 the operation documents (/v1/classify is reserved)."""
    if response.status_code == 501 and "501" in case.operation.definition.raw.get("responses", {}):
        return None
    return not_a_server_error(ctx, response, case)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_api_conforms_to_its_openapi(server, mode: GenerationMode) -> None:  # noqa: ANN001
    """Every operation of /openapi.json, schema-valid (positive) and schema-violating (negative) requests."""
    schema = schemathesis.openapi.from_url(server.http_url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8, [op.label for op in operations]
    for op in operations:

        @settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
        @given(case=op.as_strategy(generation_mode=mode))
        def run(case) -> None:  # noqa: ANN001
            case.call_and_validate(
                base_url=server.http_url,
                excluded_checks=[positive_data_acceptance, not_a_server_error],
                additional_checks=[no_server_error_but_documented_501],
                timeout=60,
            )

        try:
            run()
        except Unsatisfiable:  # negative mode on an operation without inputs (GET /healthz): nothing to violate
            assert mode is GenerationMode.NEGATIVE, op.label
