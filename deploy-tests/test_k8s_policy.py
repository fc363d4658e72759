"""Kubernetes policy: restricted pod security, resources, probes, autoscaling, disruption
budgets, Services that reach their pods, references that resolve, no committed secrets, and
time to shut down cleanly."""

import checks


def test_pods_meet_the_restricted_pod_security_standard(model):
    assert checks.pod_security_problems(model) == []


def test_containers_have_resource_requests_and_memory_limits(model):
    assert checks.resource_problems(model) == []


def test_containers_have_startup_readiness_and_liveness_probes(model):
    assert checks.probe_presence_problems(model) == []


def test_autoscalers_target_real_deployments_with_room_for_a_rollout(model):
    assert checks.autoscaling_problems(model) == []


def test_disruption_budgets_protect_without_blocking_drains(model):
    assert checks.disruption_problems(model) == []


def test_services_reach_their_pods_and_declare_protocols(model):
    assert checks.service_problems(model) == []
    assert checks.statefulset_service_problems(model) == []


def test_references_resolve_and_secrets_are_placeholders(model):
    assert checks.reference_problems(model) == []


def test_pods_have_time_to_shut_down_cleanly(model):
    assert checks.shutdown_problems(model) == []
