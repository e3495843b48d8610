"""The device config (config.json) on the host: the firmware's own schema,
checked by an independent JSON Schema implementation (the ``jsonschema``
package), plus the firmware's cross checks and poll budget (which a schema
cannot express). ``metergate config check / schema / from-site`` are thin
commands over this module.

    from metergate import config
    errors = config.check(cfg)          # [(path, reason)], [] when valid
    config.schema()                     # the JSON Schema (a dict)
"""

from __future__ import annotations

import copy
import json
import pathlib

import jsonschema

from metergate.codecs import config as fwconfig
from metergate.codecs import config_schema


def schema() -> dict:
    """The device config JSON Schema (a copy: callers may change it)."""
    return copy.deepcopy(config_schema.SCHEMA)


def _strict_integer(checker, instance) -> bool:
    # The firmware's JSON has ints and floats apart: 1.0 is not an integer there.
    return isinstance(instance, int) and not isinstance(instance, bool)


_BASE = jsonschema.Draft202012Validator
Validator = jsonschema.validators.extend(
    _BASE, type_checker=_BASE.TYPE_CHECKER.redefine("integer", _strict_integer))
_VALIDATOR = None


def validator():
    global _VALIDATOR
    if _VALIDATOR is None:
        Validator.check_schema(config_schema.SCHEMA)
        _VALIDATOR = Validator(config_schema.SCHEMA)
    return _VALIDATOR


def _reason(err) -> str:
    s = err.schema if isinstance(err.schema, dict) else {}
    if err.validator == "pattern":
        return config_schema.PATTERN_REASONS.get(err.validator_value) or err.message
    if err.validator == "enum":
        return "must be one of " + ", ".join(fwconfig._text(x) for x in err.validator_value)
    if err.validator in ("minimum", "maximum") and "minimum" in s and "maximum" in s:
        return "must be %s..%s" % (s["minimum"], s["maximum"])
    return err.message


def schema_errors(cfg) -> list[tuple[str, str]]:
    """[(path, reason)] from jsonschema, paths spelled as the firmware does."""
    out = []
    for err in validator().iter_errors(cfg):
        parts = list(err.absolute_path)
        if err.validator == "required":
            props = err.validator_value
            for key in props:
                if isinstance(err.instance, dict) and key not in err.instance:
                    out.append((fwconfig.path_text(parts + [key]), "required"))
            continue
        if err.validator == "additionalProperties":
            known = (err.schema.get("properties") or {}) if isinstance(err.schema, dict) else {}
            for key in err.instance:
                if key not in known:
                    out.append((fwconfig.path_text(parts), "unknown key '%s'" % key))
            continue
        out.append((fwconfig.path_text(parts), _reason(err)))
    return sorted(set(out))


def check(cfg) -> list[tuple[str, str]]:
    """Every error: jsonschema's, then the firmware's cross checks (the poll
    budget only when nothing else is wrong)."""
    out = schema_errors(cfg)
    return fwconfig.cross_errors(cfg, out)


def poll_budget(cfg, **kw) -> dict:
    return fwconfig.poll_budget(cfg, **kw)


def with_defaults(cfg) -> dict:
    return fwconfig.with_defaults(cfg)


class ConfigFileError(ValueError):
    pass


def read_file(path) -> dict:
    """A config file as a dict; ConfigFileError naming the file and where the JSON breaks."""
    path = pathlib.Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeError) as exc:
        raise ConfigFileError("%s: cannot read: %s" % (path, exc))
    cfg, err = fwconfig.parse(text, str(path))
    if err is not None:
        raise ConfigFileError("%s: %s" % err)
    return cfg


def from_site(site, bus_name: str | None = None, **kw) -> dict:
    """A device config for a simulated site (metergate.vboard.gateway.site_config),
    checked against the schema: ValueError listing the errors if it fails."""
    from metergate.vboard.gateway import site_config

    cfg = site_config(site, bus_name, **kw)
    errors = check(cfg)
    if errors:
        raise ValueError("; ".join("%s: %s" % e for e in errors))
    return cfg


def dumps(cfg) -> str:
    return json.dumps(cfg, indent=2, ensure_ascii=False) + "\n"


# -- `metergate config ...` (registered in metergate.cli) ----------------------

import click  # noqa: E402


@click.group("config")
def config_cli():
    """The device config (config.json): check it, print its schema, make one for a site."""


@config_cli.command("check")
@click.argument("file", type=click.Path(dir_okay=False, path_type=pathlib.Path))
@click.option("--json", "as_json", is_flag=True, help="One JSON object: valid, errors [{path, reason}], budget.")
def config_check(file, as_json):
    """Check FILE against the schema and the firmware's checks; exit 1 when invalid."""
    try:
        cfg = read_file(file)
        errors = check(cfg)
    except ConfigFileError as exc:
        cfg, errors = None, [(str(file), str(exc).split(": ", 1)[1])]
    budget = poll_budget(cfg) if cfg is not None and not errors else None
    if as_json:
        out = {"file": str(file), "valid": not errors,
               "errors": [{"path": p, "reason": r} for p, r in errors]}
        if budget is not None:
            out["budget"] = {"utilisation": round(budget["utilisation"], 4), "busy_s": round(budget["busy_s"], 3),
                             "interval_s": budget["interval_s"]}
        click.echo(json.dumps(out, indent=2))
    else:
        for path, reason in errors:
            click.echo("%s: %s: %s" % (file, path, reason))
        if not errors:
            n = len(cfg.get("meters") or [])
            click.echo("%s: valid: %d meter%s, bus %.0f%% busy (%.1f s every %s s)" % (
                file, n, "" if n == 1 else "s", budget["utilisation"] * 100, budget["busy_s"],
                budget["interval_s"]))
    if errors:
        raise SystemExit(1)


@config_cli.command("schema")
def config_schema_cmd():
    """Print the device config JSON Schema (draft 2020-12)."""
    click.echo(json.dumps(config_schema.SCHEMA, indent=2))


@config_cli.command("from-site")
@click.argument("site", type=click.Path(dir_okay=False, exists=True, path_type=pathlib.Path))
@click.option("--bus", "bus_name", default=None, help="Which bus of the site (default: the first).")
@click.option("--device-id", default=None, help="device_id to put in the config.")
@click.option("--poll-interval", type=float, default=None,
              help="Seconds between polls (raised to what the bus can do) [default: what the bus can do].")
@click.option("--out", type=click.Path(dir_okay=False, path_type=pathlib.Path), default=None,
              help="Write here instead of stdout.")
def config_from_site(site, bus_name, device_id, poll_interval, out):
    """Write a device config that polls every meter of a simulated SITE (.toml)."""
    from metergate.sim.site import SiteError, load_site

    try:
        s = load_site(site)
    except SiteError as exc:
        raise click.ClickException(str(exc))
    extra = {"device_id": device_id} if device_id else {}
    try:
        cfg = from_site(s, bus_name, poll_interval_s=poll_interval, **extra)
    except (KeyError, ValueError) as exc:
        raise click.ClickException(str(exc))
    if out is None:
        click.echo(dumps(cfg), nl=False)
    else:
        out.write_text(dumps(cfg))
        click.echo("wrote %s: %d meters" % (out, len(cfg["meters"])), err=True)
