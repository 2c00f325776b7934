"""The end of a canary on the cluster: the ``canaryTrafficPercent`` merge patch that ``decide-canary`` prints and
applies is a valid InferenceService alone and merged into a served one, travels as a merge patch (only that field
changes hands), and reads the same figures of errors as the error-ratio alert."""

from __future__ import annotations

import copy
import json
import shlex
from pathlib import Path
from typing import Any

import pytest

from pillars.components.deploy.canary import ERROR_STATUSES, canary_queries
from pillars.components.deploy.rollout import canary_traffic_patch, kubectl_patch_command, set_canary_traffic
from pillars.components.errors import ConfigError
from pillars.serving.monitoring.alerts import rule_groups
from tests.cluster.conftest import validate
from tests.cluster.test_deploy import fixture, kserve_api  # noqa: F401 (kserve_api: the loopback API server fixture)


def merged(target: Any, patch: Any) -> Any:
    """RFC 7386: what the API server makes of ``target`` under merge patch ``patch``."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merged(result.get(key), value)
    return result


@pytest.mark.parametrize("percent", [0, 100])
def test_the_patch_is_a_valid_inference_service_alone_and_merged_into_a_served_one(crd_schemas: Path, percent: int):
    patch = canary_traffic_patch("iris", "ml", percent)
    validate(patch, crd_schemas)
    served = fixture("knative_canary_failed")
    result = merged(copy.deepcopy(served), {"spec": patch["spec"]})
    validate(result, crd_schemas)
    assert result["spec"]["predictor"]["canaryTrafficPercent"] == percent
    assert result["spec"]["predictor"]["model"] == served["spec"]["predictor"]["model"]  # nothing else changed


def test_the_printed_kubectl_line_carries_the_same_patch():
    words = shlex.split(kubectl_patch_command(canary_traffic_patch("iris", "ml", 100)))
    assert words[:6] == ["kubectl", "patch", "inferenceservice", "iris", "-n", "ml"]
    assert words[6:9] == ["--type", "merge", "-p"]
    assert json.loads(words[9]) == {"spec": {"predictor": {"canaryTrafficPercent": 100}}}


@pytest.mark.parametrize("percent", [-1, 101, 50.5, "100"])
def test_a_percentage_outside_0_to_100_is_refused(percent):
    with pytest.raises(ConfigError, match="canaryTrafficPercent must be an integer 0..100"):
        canary_traffic_patch("iris", "ml", percent)


def test_the_client_sends_a_merge_patch_of_that_field_only(kserve_api):  # noqa: F811
    fake, api = kserve_api(fixture("knative_ready"), [fixture("knative_ready")])
    set_canary_traffic(api, canary_traffic_patch("iris", "ml", 0))
    method, path, headers, body = fake.requests[-1]
    assert method == "PATCH" and path == "/apis/serving.kserve.io/v1beta1/namespaces/ml/inferenceservices/iris" \
        "?fieldManager=pillars"
    assert headers["Content-Type"] == "application/merge-patch+json"
    assert body == {"spec": {"predictor": {"canaryTrafficPercent": 0}}}


def test_errors_are_counted_as_the_error_ratio_alert_counts_them():
    serving = next(g for g in rule_groups() if g["name"] == "pillars-serving")
    ratio = next(r["expr"] for r in serving["rules"] if r.get("record") == "pillars:serving_requests:error_ratio")
    assert f'status=~"{ERROR_STATUSES}"' in ratio
    assert f'status=~"{ERROR_STATUSES}"' in canary_queries("iris")["errors"]


def test_the_queries_quote_label_values_and_refuse_a_window_that_is_not_a_duration():
    queries = canary_queries('we"ird\\', "30m", {"namespace": "ml"})
    assert 'model="we\\"ird\\\\",namespace="ml"' in queries["requests"]
    with pytest.raises(ConfigError, match="Prometheus duration"):
        canary_queries("iris", "1h]) or vector(1")


def _versions(name: str, source: Path, count: int) -> list[str]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    client.create_registered_model(name)
    return [str(client.create_model_version(name, str(source)).version) for _ in range(count)]


def test_promote_moves_the_champion_from_the_judged_version_then_gives_the_canary_all_traffic(
        kserve_api, local_store, tmp_path):  # noqa: F811
    from pillars.components import registry
    from pillars.components.deploy.canary import carry_out

    v1, v2 = _versions("iris", tmp_path, 2)
    registry.move_alias("iris", registry.CHAMPION, v1, "first")
    fake, api = kserve_api(fixture("knative_ready"), [fixture("knative_ready")])
    done = carry_out(api, "iris", "promote", "canary decision: better", v1, v2, canary_traffic_patch("iris", "ml", 100))
    assert done == [f"iris: champion -> v{v2}", "ml/iris: canaryTrafficPercent 100"]
    assert registry.alias_version("iris", registry.CHAMPION) == v2
    assert registry.history("iris")[-1].why == "canary decision: better"
    assert fake.requests[-1][3] == {"spec": {"predictor": {"canaryTrafficPercent": 100}}}


def test_promote_over_a_champion_that_moved_since_the_decision_changes_nothing(kserve_api, local_store,
                                                                                tmp_path):  # noqa: F811
    from pillars.components import registry
    from pillars.components.deploy.canary import carry_out

    v1, v2, v3 = _versions("iris", tmp_path, 3)
    registry.move_alias("iris", registry.CHAMPION, v3, "someone else's")
    fake, api = kserve_api(fixture("knative_ready"), [fixture("knative_ready")])
    with pytest.raises(registry.ChampionMoved):
        carry_out(api, "iris", "promote", "canary decision", v1, v2, canary_traffic_patch("iris", "ml", 100))
    assert registry.alias_version("iris", registry.CHAMPION) == v3
    assert not [r for r in fake.requests if r[0] == "PATCH"]


def test_rollback_sends_traffic_back_first_then_rolls_back_a_champion_already_on_the_canary(
        kserve_api, local_store, tmp_path):  # noqa: F811
    from pillars.components import registry
    from pillars.components.deploy.canary import carry_out

    v1, v2, v3 = _versions("iris", tmp_path, 3)
    registry.move_alias("iris", registry.CHAMPION, v1, "first")
    registry.move_alias("iris", registry.CHAMPION, v2, "the pipeline promotes before it deploys")
    fake, api = kserve_api(fixture("knative_ready"), [fixture("knative_ready")])
    done = carry_out(api, "iris", "rollback", "canary decision: worse", v1, v2, canary_traffic_patch("iris", "ml", 0))
    assert done == ["ml/iris: canaryTrafficPercent 0", f"iris: champion v{v2} -> v{v1} (rolled back)"]
    assert registry.rolled_back("iris")[v2]["why"] == "canary decision: worse"
    # a canary that never was champion is marked, and the champion stays
    done = carry_out(api, "iris", "rollback", "canary decision: slower", v1, v3, canary_traffic_patch("iris", "ml", 0))
    assert done[-1] == f"iris: v{v3} marked rolled back"
    assert registry.alias_version("iris", registry.CHAMPION) == v1
    assert registry.rolled_back("iris")[v3] | {"at": ""} == {"at": "", "why": "canary decision: slower", "to": v1}
    assert [r[3] for r in fake.requests if r[0] == "PATCH"] == [{"spec": {"predictor": {"canaryTrafficPercent": 0}}}] * 2
