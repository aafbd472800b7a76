"""EC2 prices and the cheapest fit (issue 11): instance sizes and spot prices from a moto
server process, on-demand prices from the price file (moto has no Pricing API), interruption
frequencies from a spot advisor JSON served on loopback. Never the real AWS or advisor URL."""
from __future__ import annotations

import http.server
import json
import os
import stat
import threading

import pytest

from conftest_ssh import free_port
from deploy.environments.ec2 import fit, pricing
from deploy.environments.ec2.fit import Allocation, NoFit
from deploy.environments.ec2.pricing import Offer, PriceFileError, PricesUnavailable

REGION = "us-east-2"
TYPES = {"m5.large", "c5.xlarge", "r5.xlarge"}
# The advisor's own shape: bands by index, and per region and OS the band ("r") and savings ("s").
ADVISOR = {
    "ranges": [{"index": 0, "label": "<5%", "dots": 0, "max": 5},
               {"index": 1, "label": "5-10%", "dots": 1, "max": 11},
               {"index": 2, "label": "10-15%", "dots": 2, "max": 16},
               {"index": 3, "label": "15-20%", "dots": 3, "max": 22},
               {"index": 4, "label": ">20%", "dots": 4, "max": 100}],
    "spot_advisor": {REGION: {"Linux": {"m5.large": {"s": 60, "r": 0},
                                        "c5.xlarge": {"s": 70, "r": 3},
                                        "r5.xlarge": {"s": 65, "r": 1}},
                              "Windows": {"m5.large": {"s": 40, "r": 4}}}},
}
PRICES = {  # m5.large has no size here: it must come from DescribeInstanceTypes
    "_comment": "on-demand prices for the tests (moto has no Pricing API)",
    "regions": {REGION: {"m5.large": {"on_demand": 0.096},
                         "c5.xlarge": {"vcpu": 4, "memory_gb": 6, "on_demand": 0.17},
                         "r5.xlarge": {"on_demand": 0.252}}},
}


@pytest.fixture
def aws(moto_server, monkeypatch):
    """A boto3 session reaching the moto server through the standard endpoint settings."""
    for name, value in (("AWS_ENDPOINT_URL", moto_server), ("AWS_ACCESS_KEY_ID", "testing"),
                        ("AWS_SECRET_ACCESS_KEY", "testing-secret"),
                        ("AWS_DEFAULT_REGION", REGION)):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    import boto3
    return boto3.Session(region_name=REGION)


@pytest.fixture
def advisor():
    """A spot advisor on 127.0.0.1 serving `server.doc`; `server.hits` counts its requests."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            server.hits += 1
            body = json.dumps(server.doc).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.hits, server.doc = 0, json.loads(json.dumps(ADVISOR))
    server.url = f"http://127.0.0.1:{server.server_address[1]}/spot-advisor-data.json"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def write(path, doc) -> str:
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return str(path)


def by_key(found):
    return {(o.instance_type, o.market): o for o in found}


def test_live_sources_with_the_price_file_standing_in_for_the_pricing_api(aws, advisor, tmp_path):
    said = []
    cache = tmp_path / "cache"
    found = pricing.offers(aws, REGION, price_file=write(tmp_path / "prices.json", PRICES),
                           cache_dir=cache, spot_advisor_url=advisor.url, say=said.append,
                           instance_types=TYPES)
    # one line, naming the failed source and what stands in for it
    assert len(said) == 1 and "\n" not in said[0], said
    assert "AWS Pricing API" in said[0] and str(tmp_path / "prices.json") in said[0]
    offers = by_key(found)
    assert set(offers) == {(t, m) for t in TYPES for m in ("on_demand", "spot")}
    # m5.large's size came from moto's DescribeInstanceTypes (the file has none)
    assert offers["m5.large", "on_demand"] == Offer("m5.large", 2, 8.0, "on_demand", 0.096, 0.0)
    # the file fills in types the live source lacks, but moto's answer wins where it has one
    assert offers["c5.xlarge", "on_demand"].memory_gb == 8.0
    assert offers["r5.xlarge", "on_demand"].vcpu == 4 and offers["r5.xlarge", "on_demand"].memory_gb == 32.0
    # spot prices are moto's DescribeSpotPriceHistory (a constant); interruption the band midpoint
    spot = {t: offers[t, "spot"] for t in TYPES}
    assert {o.price_per_hour for o in spot.values()} == {0.00001}
    assert {t: o.interruption_pct for t, o in spot.items()} == {
        "m5.large": 2.5, "c5.xlarge": 17.5, "r5.xlarge": 7.5}
    assert offers["m5.large", "spot"].describe() == \
        "m5.large (2 CPU/8.0 GB), spot ($0.0000/hr, 2.5% chance of interruption)"
    # cached: the three live sources that answered, owner-only
    files = sorted(p.name.rsplit("-", 1)[0] for p in cache.iterdir())
    assert files == ["instance-types", "spot", "spot-advisor"]
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in cache.iterdir()} == {0o600}
    sizes = json.loads(next(cache.glob("instance-types-*")).read_text())["data"]
    assert len(sizes) > 500 and sizes["m5.large"] == [2, 8.0]   # all of moto's types

    # the choice over these offers: spot m5.large is the cheapest per task within 5%
    best = fit.cheapest(found, cpu_per_task=1, memory_gb_per_task=2, interruption_threshold=5)
    assert (best[0].offer.instance_type, best[0].offer.market, best[0].tasks_per_instance) == \
        ("m5.large", "spot", 2)
    on_demand = fit.cheapest(found, cpu_per_task=1, memory_gb_per_task=2, interruption_threshold=0)
    assert [(a.offer.instance_type, a.tasks_per_instance) for a in on_demand] == \
        [("c5.xlarge", 4), ("m5.large", 2), ("r5.xlarge", 4)]    # $0.0425, 0.048, 0.063 a task
    assert {a.offer.market for a in on_demand} == {"on_demand"}


def test_cache_is_reused_then_refetched_when_expired(aws, advisor, tmp_path):
    cache = tmp_path / "cache"
    args = dict(price_file=write(tmp_path / "prices.json", PRICES), cache_dir=cache,
                spot_advisor_url=advisor.url, say=lambda line: None, instance_types=TYPES)
    first = pricing.offers(aws, REGION, **args)
    assert advisor.hits == 1
    stamps = {p.name: json.loads(p.read_text())["fetched_at"] for p in cache.iterdir()}
    advisor.doc["spot_advisor"][REGION]["Linux"]["m5.large"]["r"] = 2
    assert pricing.offers(aws, REGION, **args) == first       # from the cache
    assert advisor.hits == 1
    assert {p.name: json.loads(p.read_text())["fetched_at"] for p in cache.iterdir()} == stamps

    # seven hours later (default max_age_hours=6) the advisor is asked again
    path = next(cache.glob("spot-advisor-*"))
    doc = json.loads(path.read_text())
    doc["fetched_at"] -= 7 * 3600
    path.write_text(json.dumps(doc))
    again = by_key(pricing.offers(aws, REGION, **args))
    assert advisor.hits == 2
    assert again["m5.large", "spot"].interruption_pct == 12.5
    # max_age_hours=0 never trusts the cache
    pricing.offers(aws, REGION, max_age_hours=0, **args)
    assert advisor.hits == 3
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_unreachable_sources_without_a_price_file_raise_naming_them(advisor, tmp_path, monkeypatch):
    import boto3
    closed = free_port()       # nothing listens there: every AWS call is refused
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")
    session = boto3.Session(region_name=REGION)
    advisor_url = f"http://127.0.0.1:{free_port()}/spot-advisor-data.json"
    with pytest.raises(PricesUnavailable) as raised:
        pricing.offers(session, REGION, cache_dir=tmp_path / "cache", spot_advisor_url=advisor_url,
                       say=pytest.fail)
    message = str(raised.value)
    for source in ("DescribeInstanceTypes", "AWS Pricing API", "DescribeSpotPriceHistory",
                   "spot advisor", "Ec2Config(price_file=...)", REGION):
        assert source in message, message

    # a price file without this region cannot stand in either
    other = write(tmp_path / "other.json", {"regions": {"eu-west-1": PRICES["regions"][REGION]}})
    with pytest.raises(PricesUnavailable, match="has no entry for region 'us-east-2'"):
        pricing.offers(session, REGION, price_file=other, cache_dir=tmp_path / "cache",
                       spot_advisor_url=advisor_url, say=lambda line: None)

    # with one, each failed source is one line and the file's full rows are the offers
    said = []
    full = {"regions": {REGION: {
        "m5.large": {"vcpu": 2, "memory_gb": 8, "on_demand": 0.096, "spot": 0.04,
                     "interruption_pct": 2.5},
        "r5.xlarge": {"vcpu": 4, "memory_gb": 32, "on_demand": 0.252, "spot": 0.07}}}}
    found = pricing.offers(session, REGION, price_file=write(tmp_path / "full.json", full),
                           cache_dir=tmp_path / "cache", spot_advisor_url=advisor_url,
                           say=said.append)
    assert len(said) == 4 and all("\n" not in line and "full.json" in line for line in said)
    assert any("spot advisor" in line and "Connection refused" in line for line in said), said
    assert by_key(found) == {
        ("m5.large", "on_demand"): Offer("m5.large", 2, 8.0, "on_demand", 0.096, 0.0),
        ("m5.large", "spot"): Offer("m5.large", 2, 8.0, "spot", 0.04, 2.5),
        ("r5.xlarge", "on_demand"): Offer("r5.xlarge", 4, 32.0, "on_demand", 0.252, 0.0)}
    assert not any((tmp_path / "cache").glob("*.json"))     # failures are never cached
    assert advisor.hits == 0


def test_a_price_file_can_replace_every_live_source(aws, advisor, tmp_path):
    doc = {"replace_live_sources": True, "regions": {REGION: {
        "t3.micro": {"vcpu": 2, "memory_gb": 1, "on_demand": 0.0104, "spot": 0.0031,
                     "interruption_pct": 2.5},
        "x9.custom": {"vcpu": 64, "memory_gb": 512, "on_demand": 3.0}}}}
    said = []
    found = pricing.offers(aws, REGION, price_file=write(tmp_path / "p.json", doc),
                           cache_dir=tmp_path / "cache", spot_advisor_url=advisor.url,
                           say=said.append)
    assert said == [] and advisor.hits == 0 and not (tmp_path / "cache").exists()
    assert [(o.instance_type, o.market, o.price_per_hour) for o in found] == [
        ("t3.micro", "on_demand", 0.0104), ("t3.micro", "spot", 0.0031),
        ("x9.custom", "on_demand", 3.0)]
    with pytest.raises(PriceFileError, match="no entry for region 'eu-west-1'"):
        pricing.offers(aws, "eu-west-1", price_file=str(tmp_path / "p.json"),
                       cache_dir=tmp_path / "cache", spot_advisor_url=advisor.url)


@pytest.mark.parametrize("content, complaint", [
    (None, "cannot read the price file"),
    ("{not json", "is not valid JSON"),
    ([1, 2], "must be a JSON object"),
    ({"prices": {}}, "unknown key 'prices'"),
    ({"replace_live_sources": "yes", "regions": {}}, "must be true or false"),
    ({"regions": {REGION: {"m5.large": {"ondemand": 0.1}}}}, "m5.large: unknown key 'ondemand'"),
    ({"regions": {REGION: {"m5.large": {"on_demand": -1}}}}, "on_demand must be above 0"),
    ({"regions": {REGION: {"m5.large": {"spot": "0.1"}}}}, "spot must be a number"),
    ({"regions": {REGION: {"m5.large": {"interruption_pct": 150}}}}, "between 0 and 100"),
    ({"regions": {REGION: {"m5.large": {"vcpu": 2.5, "memory_gb": 8}}}}, "whole number"),
    ({"regions": {REGION: {"m5.large": {"vcpu": 2}}}}, "both vcpu and memory_gb"),
    ({"regions": {"eu-west-1": {"m5.large": 0.1}}}, "region eu-west-1, m5.large: must be an object"),
    ({"replace_live_sources": True, "regions": {REGION: {"m5.large": {"on_demand": 0.1}}}},
     "needs vcpu and memory_gb"),
])
def test_a_bad_price_file_is_a_clear_error(tmp_path, advisor, content, complaint):
    path = tmp_path / "prices.json"
    if content is not None:
        write(path, content)
    with pytest.raises(PriceFileError) as raised:
        pricing.offers(None, REGION, price_file=str(path), cache_dir=tmp_path / "cache",
                       spot_advisor_url=advisor.url)
    assert complaint in str(raised.value) and str(path) in str(raised.value)
    assert advisor.hits == 0      # checked before any source is asked


# ---------------------------------------------------------------------------- the choice

def offer(name, vcpu, memory_gb, market, price, interruption=0.0):
    return Offer(name, vcpu, memory_gb, market, price, interruption)


OFFERS = [
    offer("m5.large", 2, 8, "on_demand", 0.096),
    offer("m5.large", 2, 8, "spot", 0.040, 2.5),
    offer("m5.2xlarge", 8, 32, "on_demand", 0.384),
    offer("m5.2xlarge", 8, 32, "spot", 0.120, 12.5),      # cheapest per task, but risky
    offer("r5.2xlarge", 8, 64, "on_demand", 0.504),
    offer("r5.2xlarge", 8, 64, "spot", 0.180, 7.5),
    offer("c5.4xlarge", 16, 32, "on_demand", 0.680),
]


def test_cheapest_is_the_lowest_price_per_concurrent_task_that_fits():
    ranked = fit.cheapest(OFFERS, cpu_per_task=2, memory_gb_per_task=8, interruption_threshold=15)
    assert [(a.offer.instance_type, a.offer.market, a.tasks_per_instance) for a in ranked] == [
        ("m5.2xlarge", "spot", 4),       # $0.03 per task
        ("m5.large", "spot", 1),         # 0.04
        ("r5.2xlarge", "spot", 4),       # 0.045
        ("m5.large", "on_demand", 1),    # 0.096
        ("m5.2xlarge", "on_demand", 4),  # 0.096 too: the dearer machine second
        ("r5.2xlarge", "on_demand", 4),  # 0.126
        ("c5.4xlarge", "on_demand", 4),  # 0.17 (memory bound: 32 GB / 8)
    ]
    prices = [a.price_per_task_hour for a in ranked]
    assert prices == sorted(prices)
    assert ranked[0].price_per_task_hour == pytest.approx(0.03)
    assert all(a.offer.vcpu >= 2 * a.tasks_per_instance and
               a.offer.memory_gb >= 8 * a.tasks_per_instance for a in ranked)
    assert ranked[0].describe() == ("m5.2xlarge (8 CPU/32.0 GB), spot ($0.1200/hr, 12.5% chance "
                                    "of interruption), will run 4 tasks at a time")
    # memory decides: 32 GB per task leaves only the r5 (2 per instance) and the 32 GB machines
    big = fit.cheapest(OFFERS, cpu_per_task=1, memory_gb_per_task=32, interruption_threshold=15)
    assert [(a.offer.instance_type, a.offer.market, a.tasks_per_instance) for a in big] == [
        ("r5.2xlarge", "spot", 2), ("m5.2xlarge", "spot", 1), ("r5.2xlarge", "on_demand", 2),
        ("m5.2xlarge", "on_demand", 1), ("c5.4xlarge", "on_demand", 1)]


def test_the_interruption_threshold_limits_spot_and_zero_means_on_demand_only():
    within_10 = fit.cheapest(OFFERS, cpu_per_task=2, memory_gb_per_task=8, interruption_threshold=10)
    assert (within_10[0].offer.instance_type, within_10[0].offer.market) == ("m5.large", "spot")
    assert all(a.offer.interruption_pct <= 10 for a in within_10)
    assert ("m5.2xlarge", "spot") not in {(a.offer.instance_type, a.offer.market) for a in within_10}
    on_demand = fit.cheapest(OFFERS, cpu_per_task=2, memory_gb_per_task=8, interruption_threshold=0)
    assert {a.offer.market for a in on_demand} == {"on_demand"}
    assert (on_demand[0].offer.instance_type, on_demand[0].tasks_per_instance) == ("m5.large", 1)


def test_exclude_moves_on_to_the_next_choice():
    """A capacity or quota error on the best (type, market) falls back to the next."""
    args = dict(cpu_per_task=2, memory_gb_per_task=8, interruption_threshold=15)
    first = fit.cheapest(OFFERS, **args)[0].offer
    second = fit.cheapest(OFFERS, exclude=[(first.instance_type, first.market)], **args)
    assert (second[0].offer.instance_type, second[0].offer.market) == ("m5.large", "spot")
    # excluding every spot offer leaves on-demand
    spots = [(o.instance_type, "spot") for o in OFFERS]
    assert {a.offer.market for a in fit.cheapest(OFFERS, exclude=spots, **args)} == {"on_demand"}
    everything = [(o.instance_type, o.market) for o in OFFERS]
    with pytest.raises(NoFit, match="7 fitting offers were excluded after capacity or quota errors"):
        fit.cheapest(OFFERS, exclude=everything, **args)


def test_no_fit_says_what_was_asked_and_the_largest_offers():
    with pytest.raises(NoFit) as raised:
        fit.cheapest(OFFERS, cpu_per_task=32, memory_gb_per_task=16, interruption_threshold=5)
    message = str(raised.value)
    assert message.startswith("no EC2 instance fits 32 CPU / 16 GB per task (on-demand, or spot "
                              "with at most 5% chance of interruption): the largest offered are ")
    assert "c5.4xlarge (16 CPU/32.0 GB)" in message and "r5.2xlarge (8 CPU/64.0 GB)" in message
    assert isinstance(raised.value, ValueError)
    assert [o.instance_type for o in raised.value.largest] == ["c5.4xlarge", "r5.2xlarge"]
    with pytest.raises(NoFit, match=r"1 spot offer would fit but exceed the interruption threshold"):
        fit.cheapest(OFFERS[3:4], cpu_per_task=2, memory_gb_per_task=8, interruption_threshold=5)
    with pytest.raises(NoFit, match=r"\(on-demand only\): there are no offers at all"):
        fit.cheapest([], cpu_per_task=1, memory_gb_per_task=1, interruption_threshold=0)
    with pytest.raises(ValueError, match="cpu_per_task must be above 0"):
        fit.cheapest(OFFERS, cpu_per_task=0, memory_gb_per_task=1, interruption_threshold=0)


def test_plan_launches_enough_instances_of_one_type():
    ranked = fit.cheapest(OFFERS, cpu_per_task=2, memory_gb_per_task=8, interruption_threshold=15)
    [(allocation, count)] = fit.plan(ranked, 10)       # 10 tasks at 4 per m5.2xlarge spot
    assert (allocation, count) == (ranked[0], 3)
    # 1 task: one m5.large spot ($0.04/hr) beats a 4-task m5.2xlarge ($0.12/hr) that sits 3/4 idle
    [(small, one)] = fit.plan(ranked, 1)
    assert (small.offer.instance_type, small.offer.market, one) == ("m5.large", "spot", 1)
    assert fit.plan(ranked, 0) == []
    # 3 / (0.1 + 0.2) is 9.999...: still 10 tasks
    assert fit.tasks_per_instance(offer("c.odd", 3, 3, "on_demand", 1), 0.1 + 0.2, 0.1 + 0.2) == 10
    assert Allocation(OFFERS[0], 2).price_per_task_hour == pytest.approx(0.048)


def test_pricing_api_products_are_read_as_hourly_usd():
    """The Pricing API's own product format (aws_v1): the OnDemand term's hourly USD rate."""
    def product(name, usd, unit="Hrs"):
        return json.dumps({
            "product": {"productFamily": "Compute Instance", "attributes": {
                "instanceType": name, "vcpu": "2", "memory": "8 GiB", "operatingSystem": "Linux",
                "tenancy": "Shared", "preInstalledSw": "NA", "capacitystatus": "Used",
                "regionCode": REGION}, "sku": "SKU1"},
            "serviceCode": "AmazonEC2",
            "terms": {"OnDemand": {"SKU1.JRTCKXETXF": {"priceDimensions": {
                "SKU1.JRTCKXETXF.6YS6EN2CT7": {"unit": unit, "beginRange": "0", "endRange": "Inf",
                                              "pricePerUnit": {"USD": usd}}}}},
                      "Reserved": {"SKU1.4NA7Y494T4": {"priceDimensions": {"SKU1.4NA7Y494T4.2TG2D8R56U": {
                          "unit": "Quantity", "pricePerUnit": {"USD": "500"}}}}}}})
    assert pricing.parse_price_list([
        product("m5.large", "0.0960000000"), product("m5.large", "0.1200000000"),
        product("c5.large", "0.0000000000"), product("r5.large", "3.0", unit="Quantity"),
        product("t3.micro", "0.0104000000")]) == {"m5.large": 0.096, "t3.micro": 0.0104}


def test_the_example_price_file_gives_meadowruns_choice(tmp_path):
    """tests/data/ec2-prices.json alone (replace_live_sources): 4 CPU / 32 GB per task, up to
    15% interruption, 3 tasks at once -> two r5n.2xlarge spot instances, 2 tasks each."""
    example = os.path.join(os.path.dirname(__file__), "data", "ec2-prices.json")
    found = pricing.offers(None, REGION, price_file=example, cache_dir=tmp_path / "cache",
                           spot_advisor_url="http://127.0.0.1:9/never-asked.json", say=pytest.fail)
    assert len(found) == 14
    ranked = fit.cheapest(found, cpu_per_task=4, memory_gb_per_task=32, interruption_threshold=15)
    [(allocation, count)] = fit.plan(ranked, 3)
    assert count == 2 and allocation.describe() == (
        "r5n.2xlarge (8 CPU/64.0 GB), spot ($0.0898/hr, 2.5% chance of interruption), "
        "will run 2 tasks at a time")
    # r5.4xlarge spot (17.5%) is over the threshold; on-demand only picks r5.xlarge
    assert ("r5.4xlarge", "spot") not in {(a.offer.instance_type, a.offer.market) for a in ranked}
    [(on_demand, n)] = fit.plan(fit.cheapest(found, cpu_per_task=4, memory_gb_per_task=32,
                                             interruption_threshold=0), 3)
    assert (on_demand.offer.instance_type, on_demand.offer.market, n) == ("r5.xlarge", "on_demand", 3)
