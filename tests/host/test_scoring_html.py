"""The HTML score report opened in headless Chromium (Debian chromium +
chromium-driver, driven by selenium): what a manager sees - names, figures,
the rules version, and both charts drawn - with nothing fetched from a network."""
import pathlib
import shutil
import tempfile

import pytest
from click.testing import CliRunner

from metergate.cli import main

DATA = pathlib.Path(__file__).parent / "scoring_data" / "nov"


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium")
    driver_path = shutil.which("chromedriver")
    assert chromium and driver_path, "Debian packages chromium and chromium-driver are required (scripts/system-deps.sh)"
    profile = tempfile.mkdtemp(prefix="metergate-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,2000", "--user-data-dir=" + profile):
        opts.add_argument(arg)
    drv = webdriver.Chrome(service=Service(driver_path), options=opts)
    try:
        yield drv
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def page(browser, tmp_path_factory):
    out = tmp_path_factory.mktemp("html") / "2026-11.html"
    res = CliRunner().invoke(main, ["score", "--month", "2026-11", "--data", str(DATA), "--html", str(out),
                                    "--quiet"])
    assert res.exit_code == 0, res.output
    browser.get(out.as_uri())
    return browser


def _by(page, css):
    from selenium.webdriver.common.by import By

    return page.find_elements(By.CSS_SELECTOR, css)


def test_title_and_provenance(page):
    assert page.title == "Metergate scores 2026-11"
    prov = _by(page, "#provenance")[0]
    assert prov.is_displayed()
    assert "2026.11-1" in prov.text and "collection.csv" in prov.text and "101 records" in prov.text


def test_people_table_shows_names_and_figures(page):
    rows = {r.find_elements("css selector", "td")[0].text: [c.text for c in r.find_elements("css selector", "td")]
            for r in _by(page, "#people tbody tr")}
    assert set(rows) == {"P01", "P02", "P03"}
    assert rows["P02"][1] == "李娜 Li Na" and rows["P02"][-1] == "-22"
    assert rows["P01"][-1] == "12" and rows["P03"][-1] == "-10"
    neg = _by(page, "#people tbody tr:nth-child(2) td:last-child")[0]
    assert "neg" in neg.get_attribute("class")
    crews = [[c.text for c in r.find_elements("css selector", "td")] for r in _by(page, "#crews tbody tr")]
    assert [(c[0], c[-1]) for c in crews] == [("A", "-10"), ("B", "-10")]


def test_rate_chart_is_drawn(page):
    svg = _by(page, "svg#rate-chart")[0]
    assert svg.is_displayed() and svg.size["width"] > 500 and svg.size["height"] > 200
    points = _by(page, "svg#rate-chart circle.point")
    assert len(points) == 4  # one per person-day
    titles = sorted(p.find_element("css selector", "title").get_attribute("textContent") for p in points)
    assert "李娜 Li Na 2026-11-03 carrier 14/20 = 70%, 0%" in titles
    assert "王芳 Wang Fang 2026-11-04 wireless 2/3 = 66.67%, -10%" in titles
    assert all(p.size["width"] > 0 for p in points)
    labels = sorted(t.text for t in _by(page, "svg#rate-chart text.threshold-label"))
    assert labels == ["70% carrier", "80% wireless, carrier", "90% carrier"]
    # a higher rate is drawn higher: 90 % (Zhang Wei, 11-04) above 66.67 % (Wang Fang, 11-04)
    cy = {t.find_element("css selector", "title").get_attribute("textContent").split(" = ")[1].split("%")[0]:
          float(t.get_attribute("cy")) for t in points}
    assert cy["90"] < cy["80"] < cy["70"] < cy["66.67"]


def test_adjustment_chart_is_drawn(page):
    svg = _by(page, "svg#adjust-chart")[0]
    assert svg.is_displayed()
    bars = {b.find_element("css selector", "title").get_attribute("textContent"): b
            for b in _by(page, "svg#adjust-chart rect.bar")}
    assert set(bars) == {"张伟 Zhang Wei maintenance: +15%", "张伟 Zhang Wei complaints: -3%",
                         "李娜 Li Na late: -20%", "李娜 Li Na manual: -2%", "王芳 Wang Fang maintenance: -10%"}
    late, bonus = bars["李娜 Li Na late: -20%"], bars["张伟 Zhang Wei maintenance: +15%"]
    assert late.rect["x"] + late.rect["width"] <= bonus.rect["x"] + 1  # deductions left of zero, bonuses right
    assert late.rect["width"] > bonus.rect["width"] > bars["李娜 Li Na manual: -2%"].rect["width"] > 0


def test_nothing_fetched_from_a_network(page):
    assert page.execute_script("return performance.getEntriesByType('resource').length") == 0
    assert "http://" not in page.page_source.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in page.page_source
