"""Every serving setting is a flag of ``python -m pillars.serving``, derived from its field (written once)."""

from __future__ import annotations

import pytest

from pillars.serving.__main__ import build_parser, normalize_flags
from pillars.serving.settings import ENV_ONLY, ServingSettings


def _parse(*argv: str):
    parser = build_parser()
    return parser.parse_args(normalize_flags(list(argv), parser))


def test_every_setting_but_the_secret_token_is_a_flag_with_its_docstring_as_help():
    options = build_parser()._option_string_actions
    for name, field in ServingSettings.model_fields.items():
        flag = f"--no_{name}" if field.annotation is bool and field.default else f"--{name}"
        assert (flag in options) is (name not in ENV_ONLY), name
        if name not in ENV_ONLY:
            assert options[flag].help.replace("turn off: ", "")[:20] in " ".join(field.description.split()).replace(
                "``", ""), name
    assert "--auth_token" not in options


def test_flags_default_to_the_environment_and_override_it(monkeypatch):
    monkeypatch.setenv("PILLARS_SERVING_MAX_ROWS", "7")
    monkeypatch.setenv("PILLARS_SERVING_DRIFT", "false")
    args = _parse()
    assert (args.max_rows, args.drift, args.allowed_hosts, args.drift_threshold) == (7, False, [], None)
    args = _parse("--max-rows", "9", "--metrics_open", "--no_drift", "--drift_method", "psi", "--drift_threshold",
                  "0.2", "--allowed_hosts", "a.example,b.example", "--model_dir", "/m")
    assert (args.max_rows, args.metrics_open, args.drift, args.drift_method, args.drift_threshold) == \
        (9, True, False, "psi", 0.2)
    assert args.allowed_hosts == ["a.example", "b.example"] and args.model_dir == "/m"


def test_parsed_flags_make_the_settings_the_server_runs_with():
    args = _parse("--max_batch_size", "8", "--host", "0.0.0.0", "--model_dir", "/m")
    settings = ServingSettings(**{n: getattr(args, n) for n in ServingSettings.model_fields if n not in ENV_ONLY})
    assert (settings.max_batch_size, settings.host, str(settings.model_dir)) == (8, "0.0.0.0", "/m")


def test_a_value_outside_a_settings_choices_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        _parse("--drift_method", "chi2")
    assert "invalid choice: 'chi2'" in capsys.readouterr().err
