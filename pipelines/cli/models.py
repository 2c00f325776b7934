"""``pillars models``: the registry from a terminal (list, show, promote, history, rollback, upgrade) and the
live decisions on a challenger (``decide-shadow`` from the model server's shadow figures, ``decide-canary``
from Prometheus' figures of a KServe canary)."""

from __future__ import annotations

import argparse
import json

from pillars.components.errors import ConfigError
from pillars.components.records import VersionRecord
from pillars.components.registry.references import check_model_name


def cmd_models(args: argparse.Namespace) -> int:
    from pillars.components import registry
    from pillars.components.registry.register import promote
    from pillars.components.registry.tracking import configure_tracking

    if getattr(args, "name", None) is not None:
        check_model_name(args.name)
    if args.action == "decide-canary":  # the registry only when it acts (--apply)
        return _decide_canary(args)
    configure_tracking(create=False)
    if args.action == "list":
        rows = registry.list_models()
        if not rows:
            print("no registered models")
        for row in rows:
            aliases = ", ".join(f"{a}=v{v}" for a, v in row["aliases"].items()) or "-"
            print(f"{row['name']:<30} latest v{row['latest']}  {aliases}")
    elif args.action == "show":
        _print_versions(args.name, limit=args.limit)
    elif args.action == "promote":
        registry.get_model(args.name)
        changed = promote(args.name, args.version, args.why)
        print(f"{args.name}: champion -> v{args.version}" if changed else f"{args.name}: v{args.version} already champion")
    elif args.action == "history":
        events = registry.history(args.name)
        if not events:
            print(f"{args.name}: no alias moves recorded")
        for e in events:
            print(f"{e.at}  {e.alias:<10} v{e.from_version or '-'} -> v{e.to_version}  {e.why}")
        for version, mark in sorted(registry.rolled_back(args.name).items(), key=lambda kv: int(kv[0])):
            print(f"{mark['at']}  v{version} rolled back (to v{mark['to']}): {mark['why']}")
    elif args.action == "rollback":
        event = registry.rollback(args.name, args.why, to=args.to)
        print(f"{args.name}: champion v{event.from_version} -> v{event.to_version} (rolled back)")
    elif args.action == "upgrade":
        _upgrade(args.name, args.version)
    elif args.action == "decide-shadow":
        _decide_shadow(args.name, args.server, args.served_as or args.name, args.token_file)
    return 0


def _decide_canary(args: argparse.Namespace) -> int:
    """Judge the canary on Prometheus' figures; print the decision and the patch; with ``--apply`` carry it out.

    Promote: the champion alias moves to the canary's version by compare-and-set (only over the champion it was
    judged against), then the canary takes all traffic. Roll back: traffic goes back first; then a champion alias
    already on the canary (the pipeline promotes before it deploys) is rolled back to the champion, else the
    canary version is marked rolled back; the reason goes to the registry either way. Exit 0 whatever the
    decision (wait included)."""
    from pillars.components.deploy.canary import pick_versions, read_figures
    from pillars.components.deploy.inference_service import inference_service_name
    from pillars.components.deploy.rollout import CANARY_PERCENT, canary_traffic_patch, kubectl_patch_command
    from pillars.components.evaluation.canary import CanaryRule, decide_canary
    from pillars.components.settings import Settings

    rule = CanaryRule(min_requests=args.min_requests, min_labels=args.min_labels, accuracy_margin=args.accuracy_margin,
                      latency_ratio=args.latency_ratio)
    namespace = args.namespace or Settings().namespace
    isvc = args.isvc or inference_service_name(args.name)
    matchers = {"namespace": args.namespace, "inferenceservice": isvc} if args.namespace else None
    headers = ({"Authorization": f"Bearer {open(args.prometheus_token_file).read().strip()}"}
               if args.prometheus_token_file else None)
    figures = read_figures(args.prometheus, args.served_as or args.name, args.window, matchers, headers)
    champion, canary = pick_versions(figures, args.canary_version, args.champion_version)
    decision = decide_canary(champion, canary, rule)
    print(f"{args.name}: {decision.action}: {decision.reason}")
    for line in decision.findings:
        print(f"  - {line}")
    if decision.action == "wait":
        return 0
    patch = canary_traffic_patch(isvc, namespace, CANARY_PERCENT[decision.action])
    if not args.apply:
        print(kubectl_patch_command(patch))
        return 0
    from pillars.components.deploy import kube
    from pillars.components.deploy.canary import carry_out
    from pillars.components.registry.tracking import configure_tracking

    configure_tracking(create=False)
    for line in carry_out(kube.api_client(), args.name, decision.action, f"canary decision: {decision.reason}",
                          champion.version, canary.version, patch):
        print(line)
    return 0


def _decide_shadow(name: str, server: str, served_as: str, token_file: str | None) -> None:
    """Ask the model server for its shadow decision; promote the challenger when it says so, with its reason."""
    import httpx

    from pillars.components.registry.register import promote

    headers = {"Authorization": f"Bearer {open(token_file).read().strip()}"} if token_file else {}
    try:
        response = httpx.get(f"{server.rstrip('/')}/v2/models/{served_as}/shadow", headers=headers, timeout=10)
    except httpx.HTTPError as e:
        raise ConfigError(f"cannot reach the model server at {server}: {type(e).__name__}") from e
    if response.status_code != 200:
        raise ConfigError(f"{server}: the shadow route answered {response.status_code}: {response.text[:200]}")
    answer = response.json()
    decision, shadow = answer["decision"], answer.get("shadow")
    if decision["action"] != "promote" or not shadow:
        print(f"{name}: {decision['action']}: {decision['reason']}")
        return
    changed = promote(name, shadow["version"], f"shadow decision: {decision['reason']}",
                      expected=answer["version"])  # only over the champion the shadow was judged against
    print(f"{name}: champion -> v{shadow['version']} ({decision['reason']})" if changed
          else f"{name}: v{shadow['version']} already champion")


def _upgrade(name: str, version: str | None) -> None:
    from pillars.components.model.upgrade import upgrade_model

    done = upgrade_model(name, version)
    if not done:
        which = f"v{version}" if version else "every version"
        print(f"{name}: {which} already loads with this Pillars; nothing to upgrade")
    for up in done:
        print(f"{name}: v{up.from_version} re-registered as v{up.to_version} with the current pyfunc code "
              f"(aliases unchanged; promote it with: pillars models promote {name} {up.to_version})")


def _print_versions(name: str, limit: int = 10) -> None:
    from pillars.components import registry

    for row in registry.list_versions(name)[:limit]:
        print(version_line(name, row))


def version_line(name: str, row: VersionRecord) -> str:
    """One ``pillars models show`` line of a :func:`~pillars.components.registry.list_versions` row.

    A trained version shows its gate result, test metrics and why its run started (``reason``); an optimised
    variant (tagged by :mod:`pillars.components.optimize.register`) shows what it is, the version it was made from, its file
    size, its metric's change against that parent and its batch-1 latency.
    """
    tags = row.tags
    aliases = f" [{', '.join(row.aliases)}]" if row.aliases else ""
    head = f"{name} v{row.version}{aliases}  {row.created}"
    if "pillars.variant" in tags:
        size = tags.get("pillars.size_bytes", "")
        parts = [f"variant={tags['pillars.variant']}", f"parent=v{tags.get('pillars.parent_version', '?')}",
                 f"size={_size(int(size)) if size.isdigit() else '?'}",
                 f"{tags.get('pillars.metric', 'metric')} delta={tags.get('pillars.metric_delta', '?')}"]
        if "pillars.latency_ms_b1" in tags:
            parts.append(f"latency={tags['pillars.latency_ms_b1']} ms")
        return f"{head}  {'  '.join(parts)}"
    metrics = "  ".join(f"{k}={v:.4f}" for k, v in row.metrics.items())
    reason = f"  reason={tags['pillars.reason']}" if tags.get("pillars.reason") else ""
    return f"{head}  gate={tags.get('gate_approved', '?')}  {metrics}{_data_lineage(tags)}{reason}"


def _data_lineage(tags: dict[str, str]) -> str:
    """`` data=HASH engine=spark rows=N app=ID feedback=N (+M without inputs)`` of a version whose data step
    recorded them ("" before)."""
    if "data_engine" not in tags:
        return ""
    try:
        rows = sum(json.loads(tags.get("data_rows") or "{}").values())
    except (ValueError, TypeError, AttributeError):
        rows = "?"
    app = f" spark_app={tags['spark_app_id']}" if tags.get("spark_app_id") else ""
    feedback = (f" feedback={tags['feedback_rows']} (+{tags.get('feedback_without_inputs', '?')} without inputs)"
                if "feedback_rows" in tags else "")
    return f"  data={tags.get('data_hash', '?')} engine={tags['data_engine']} rows={rows}{app}{feedback}"


def _size(n: int) -> str:
    """A byte count as people read it (``512 B``, ``41.2 kB``, ``3.1 MB``)."""
    if n < 1000:
        return f"{n} B"
    return f"{n / 1000:.1f} kB" if n < 1_000_000 else f"{n / 1_000_000:.1f} MB"
