"""`metergate score` and `metergate sample`: thin commands over the scoring library."""
import pathlib

import click

from metergate.scoring import inputs, month, reports, rules as rules_mod, sampling

DATA_HELP = "data directory holding crew.csv, maintenance.csv, collection.csv, ... (docs/scoring.md)"
RULES_HELP = "rules TOML (default: the rules shipped with metergate)"


def _load(data, rules_path):
    try:
        rules = rules_mod.load(rules_path)
        return rules, inputs.load(data, rules)
    except (rules_mod.RulesError, inputs.InputErrors) as exc:
        raise click.ClickException(str(exc))


def _db_records(db_url):
    def records(start, end, problems):
        return inputs.read_collection_db(db_url, start, end, problems)
    return records


@click.command("score")
@click.option("--month", "month_", required=True, help="the month to score, YYYY-MM")
@click.option("--data", type=click.Path(file_okay=False, path_type=pathlib.Path), required=True, help=DATA_HELP)
@click.option("--rules", "rules_path", type=click.Path(dir_okay=False, path_type=pathlib.Path), help=RULES_HELP)
@click.option("--db", "db_url", help="read collection success from the back-office database at this URL "
              "instead of collection.csv")
@click.option("--csv", "csv_dir", type=click.Path(file_okay=False, path_type=pathlib.Path),
              help="write the tables as CSV files into this directory")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=pathlib.Path), help="write JSON here")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=pathlib.Path),
              help="write a standalone HTML report (charts, works offline) here")
@click.option("--explain", "explain_what", metavar="PERSON:YYYY-MM-DD|ORDER",
              help="trace one person's day or one order to its rule and records instead of the table")
@click.option("--quiet", is_flag=True, help="no terminal table")
def score(month_, data, rules_path, db_url, csv_dir, json_path, html_path, explain_what, quiet):
    """Score a month's collector maintenance, rotation and batch orders, complaints
    and manual adjustments, per person and per crew (绩效考核)."""
    from rich.console import Console

    rules, ds = _load(data, rules_path)
    try:
        if db_url:
            rep = month.score_month(ds, rules, month_, _db_records(db_url), "db")
        else:
            rep = month.score_month(ds, rules, month_)
    except inputs.InputErrors as exc:
        raise click.ClickException(str(exc))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--month")
    if explain_what:
        try:
            lines = reports.explain(rep, explain_what)
        except KeyError as exc:
            raise click.BadParameter(exc.args[0], param_hint="--explain")
        click.echo("\n".join(lines))
        return
    if not quiet:
        reports.print_table(rep, Console(width=160))
    if csv_dir:
        for p in reports.write_csv(rep, csv_dir):
            click.echo("wrote %s" % p)
    if json_path:
        reports.write_json(rep, json_path)
        click.echo("wrote %s" % json_path)
    if html_path:
        reports.write_html(rep, html_path)
        click.echo("wrote %s" % html_path)


@click.group("sample")
def sample():
    """Spot-check samples (抽查): draw one for an order, record the inspectors' results."""


@sample.command("draw")
@click.option("--data", type=click.Path(file_okay=False, path_type=pathlib.Path), required=True, help=DATA_HELP)
@click.option("--order", "order_id", required=True, help="the rotation or batch order to sample")
@click.option("--seed", type=click.IntRange(0), help="repeat a recorded draw (default: a new random seed)")
@click.option("--stratify", type=click.Choice(["crew"]), help="draw the rate within each crew")
@click.option("--rules", "rules_path", type=click.Path(dir_okay=False, path_type=pathlib.Path), help=RULES_HELP)
@click.option("--out", type=click.Path(dir_okay=False, path_type=pathlib.Path),
              help="inspectors' CSV (default: DATA/samples/ORDER-SEED.csv)")
def sample_draw(data, order_id, seed, stratify, rules_path, out):
    """Draw the spot-check list of an order and write it as CSV for the inspectors
    (抽查清单), with its draw record (seed, rules version) beside it as .json."""
    rules, ds = _load(data, rules_path)
    try:
        d = sampling.draw(ds, rules, order_id, seed, stratify)
    except sampling.SamplingError as exc:
        raise click.ClickException(str(exc))
    out = out or data / "samples" / (d.sample + ".csv")
    record = sampling.write(d, rules, out)
    for s in d.strata:
        click.echo("%s: %d of %d meters (rate %s)" % (s.key, s.size, s.population, s.rate))
    click.echo("sample %s: %d meters, seed %d, rules %s" % (d.sample, len(d.meters), d.seed, rules.version))
    click.echo("抽查清单 inspector sheet: %s\ndraw record: %s" % (out, record))


@sample.command("record")
@click.argument("sheet", type=click.Path(dir_okay=False, exists=True, path_type=pathlib.Path))
@click.option("--data", type=click.Path(file_okay=False, path_type=pathlib.Path), required=True, help=DATA_HELP)
@click.option("--rules", "rules_path", type=click.Path(dir_okay=False, path_type=pathlib.Path), help=RULES_HELP)
def sample_record(sheet, data, rules_path):
    """Record a filled-in inspector sheet into DATA/spot_checks.csv (录入抽查结果)."""
    rules, ds = _load(data, rules_path)
    try:
        r = sampling.record(ds, rules, sheet, data)
    except (inputs.InputErrors, sampling.SamplingError) as exc:
        raise click.ClickException(str(exc))
    click.echo("sample %s: %d results for %d meters recorded into %s" % (r.sample, r.rows, r.meters,
                                                                        data / "spot_checks.csv"))
    if r.unfilled:
        click.echo("not checked yet 未检查: %s" % " ".join(r.unfilled))
