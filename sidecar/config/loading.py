"""Reading the configuration: defaults, then one YAML or TOML file, then `AUTHSIDECAR_*`
environment variables, then keyword overrides (tests, `./dev up`), validated once.

The file is named by the caller or by $AUTHSIDECAR_CONFIG and handed to the parser as one of
its sources (`_sources`); no module state carries it. Every failure is a `ConfigError` on ONE
line naming the setting (`setting listen.tcp: ...`), never a traceback.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel, ValidationError
from pydantic_settings import (
    EnvSettingsSource,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsError,
    TomlConfigSettingsSource,
    YamlConfigSettingsSource,
)
from pydantic_settings.sources import DefaultSettingsSource

from sidecar.config.settings import Settings
from sidecar.errors import ConfigError

CONFIG_ENV = "AUTHSIDECAR_CONFIG"
ENV_PREFIX = "AUTHSIDECAR_"


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Load and validate; every failure is a ConfigError whose message names the setting."""
    if config_file is None and os.environ.get(CONFIG_ENV):
        config_file = os.environ[CONFIG_ENV]
    path = Path(config_file) if config_file is not None else None
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist or is not a file")
        if path.suffix.lower() not in (".yaml", ".yml", ".toml"):
            raise ConfigError(f"config file {str(path)!r} must end in .yaml, .yml or .toml")
    # An unreadable or unparsable file. The YAML parser is imported only to read a YAML file:
    # most sidecars run on defaults and the environment, and it costs every start (issue 16).
    file_errors: tuple[type[Exception], ...] = (OSError, ValueError)
    if path is not None and path.suffix.lower() != ".toml":
        import yaml

        file_errors += (yaml.YAMLError,)
    try:
        # `_build_sources`: pydantic-settings' documented way to hand over the sources; the
        # pydantic mypy plugin's synthesised __init__ does not list it yet.
        return Settings(_build_sources=(_sources(path, overrides), overrides))  # type: ignore[call-arg]
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    except SettingsError as exc:  # an AUTHSIDECAR_* variable that is not valid JSON
        raise ConfigError(_one_line(f"invalid configuration: {_env_json(exc)}")) from None
    except file_errors as exc:
        raise ConfigError(
            _one_line(f"config file {str(path)!r} could not be read: {exc}")
        ) from None


def _sources(
    path: Path | None, overrides: dict[str, Any]
) -> tuple[PydanticBaseSettingsSource, ...]:
    """Highest precedence first: overrides, the environment, the file, the defaults (the
    file's source reads it here, so its errors surface inside load_settings' try)."""
    sources: list[PydanticBaseSettingsSource] = [
        InitSettingsSource(Settings, init_kwargs=overrides),
        EnvSettingsSource(Settings),
    ]
    if path is not None:
        if path.suffix.lower() == ".toml":
            sources.append(TomlConfigSettingsSource(Settings, toml_file=path))
        else:
            sources.append(_YamlFile(Settings, yaml_file=path))
    sources.append(DefaultSettingsSource(Settings))
    return tuple(sources)


_KINDS = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}


class _YamlFile(YamlConfigSettingsSource):
    """The YAML file, whose top level must be a mapping of settings.

    The parser hands over whatever the document is; pydantic-settings then merges a list
    or a string into its dict and fails with a TypeError (a traceback) or a message about
    "dictionary update sequence" that names nothing the operator wrote."""

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        data = super()._read_file(file_path)
        if not isinstance(data, dict):
            kind = _KINDS.get(type(data), "a scalar")
            raise ConfigError(
                f"config file {str(file_path)!r}: the top level must be a mapping of settings "
                f"(sections such as listen:, tokens:), not {kind}"
            )
        return data


def _env_json(exc: SettingsError) -> str:
    """pydantic-settings says only 'error parsing value for field "tokens" from source
    "EnvSettingsSource"': name the variables under that section whose values are not JSON
    (names only: a value may hold a secret, such as a Redis password) and say what is
    expected, since `AUTHSIDECAR_TOKENS__AUDIENCES=a,b` is the natural first try."""
    found = re.search(r'field "([^"]+)"', str(exc))
    if found is None:
        return str(exc)
    field = found.group(1)
    prefix = f"{ENV_PREFIX}{field.upper()}"
    suspects = sorted(
        name
        for name, value in os.environ.items()
        if (name.upper() == prefix or name.upper().startswith(prefix + "__"))
        and _takes_json(name[len(ENV_PREFIX) :].lower().split("__"))
        and not _is_json(value)
    )
    named = ", ".join(suspects) if suspects else prefix
    return (
        f"setting {field}: environment variable {named}: lists and sections are written "
        'in JSON there (e.g. \'["a","b"]\' or \'{"tcp":"127.0.0.1:7000"}\')'
    )


def _takes_json(path: list[str]) -> bool:
    """Whether the setting at `path` is a section or a list (what pydantic-settings decodes
    as JSON from the environment), not a plain value such as tokens.issuer."""
    model: type[BaseModel] | None = Settings
    annotation: Any = None
    for part in path:
        field = model.model_fields.get(part) if model is not None else None
        if field is None:
            return False
        annotation = field.annotation
        model = _model_in(annotation)
    if model is not None:
        return True
    kinds = {annotation, *get_args(annotation)}
    return any(getattr(kind, "__origin__", kind) in (list, tuple, dict, set) for kind in kinds)


def _is_json(value: str) -> bool:
    try:
        json.loads(value)
    except ValueError:
        return False
    return True


def _describe(exc: ValidationError) -> str:
    """Every problem on ONE line (issue 14: a log line or a `kubectl logs` tail shows it whole):
    `invalid configuration: setting a.b: why; setting c: why`. A name that is not a setting
    says so and offers the nearest valid one at that level (difflib)."""
    problems = []
    for error in exc.errors():
        loc = error["loc"]
        where = ".".join(str(part) for part in loc) or "settings"
        if error["type"] == "extra_forbidden" and loc:
            problems.append(f"unknown setting {where}{_did_you_mean(loc)}")
            continue
        message = error["msg"].removeprefix("Value error, ")
        problems.append(f"setting {where}: {message}")
    return _one_line("invalid configuration: " + "; ".join(problems))


def _did_you_mean(loc: tuple[int | str, ...]) -> str:
    """` (did you mean tokens.access_ttl_s?)`, or "" when no valid name is close."""
    model: type[BaseModel] | None = Settings
    for part in loc[:-1]:
        if isinstance(part, int) or model is None:
            continue  # an element of a list of models: same model
        field = model.model_fields.get(part)
        model = _model_in(field.annotation) if field is not None else None
    if model is None:
        return ""
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1, cutoff=0.6)
    if not close:
        return ""
    prefix = ".".join(str(part) for part in loc[:-1])
    return f" (did you mean {prefix + '.' if prefix else ''}{close[0]}?)"


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The settings model a field holds, directly or as the element of a tuple."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _one_line(text: str) -> str:
    return " ".join(text.split())
