"""Traffic and security policy: circuit breaking for every Service, retries only where they
are safe, a timeout ladder that lets the gateway answer, STRICT mTLS, and authorization that
allows exactly the calls the configuration makes."""

import checks


def test_every_service_has_a_circuit_breaking_destination_rule(model):
    assert checks.destination_rule_problems(model) == []


def test_gateway_is_not_ejected_for_the_errors_it_relays(model):
    assert checks.gateway_ejection_problems(model) == []


def test_retries_only_on_idempotent_routes_and_every_route_has_a_timeout(model):
    assert checks.virtual_service_problems(model) == []


def test_timeouts_grow_from_the_mesh_to_the_edge(model):
    assert checks.timeout_ladder_problems(model) == []


def test_only_the_gateway_is_exposed_through_the_ingress(model):
    assert checks.ingress_problems(model) == []


def test_mtls_is_strict(model):
    assert checks.peer_authentication_problems(model) == []


def test_probes_work_under_strict_mtls(model):
    assert checks.probe_rewrite_problems(model) == []


def test_authorization_allows_exactly_the_configured_callers(model):
    assert checks.authorization_problems(model) == []


def test_hosts_and_principals_name_this_namespace(model):
    assert checks.namespace_problems(model) == []
