"""What EC2 instances cost and what they hold: the offers the cheapest-fit choice picks from.

Four live sources, each cached under `cache_dir` for `max_age_hours`:
instance types' vCPU and memory (EC2 DescribeInstanceTypes), on-demand prices (the AWS
Pricing API), spot prices (EC2 DescribeSpotPriceHistory) and spot interruption frequencies
(the public spot advisor JSON). A source that cannot be reached is named in one line and its
data comes from the price file instead; a price file with `"replace_live_sources": true`
replaces all four (air-gapped users, tests). The price file format is in `load_price_file`.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import http.client
import json
import math
import os
import pathlib
import re
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Collection
from typing import Any

from ...errors import ConfigError, DeployError

SPOT_ADVISOR_URL = "https://spot-bid-advisor.s3.amazonaws.com/spot-advisor-data.json"
PRICE_FILE_SETTING = "Ec2Config(price_file=...)"
ON_DEMAND, SPOT = "on_demand", "spot"
# The Pricing API answers only in a few regions; the prices it gives cover every region.
PRICING_API_REGION = "us-east-1"
_PRICE_FIELDS = ("vcpu", "memory_gb", "on_demand", "spot", "interruption_pct")


class PricesUnavailable(DeployError):
    """A price source failed and no price file can stand in for it."""


class PriceFileError(ConfigError):
    """The price file cannot be read or does not follow the documented format."""


@dataclasses.dataclass(frozen=True)
class Offer:
    """One way to rent an instance type: its size, market and hourly price.

    `interruption_pct` is the midpoint of the spot advisor's band for the type ("<5%" -> 2.5,
    "5-10%" -> 7.5, ">20%" -> 60), as meadowrun reports it; a price file gives it directly;
    on-demand offers have 0.0.
    """
    instance_type: str
    vcpu: int
    memory_gb: float
    market: str
    price_per_hour: float
    interruption_pct: float

    def describe(self) -> str:
        """`r5n.2xlarge (8 CPU/64.0 GB), spot ($0.0898/hr, 2.5% chance of interruption)`."""
        size = f"{self.instance_type} ({self.vcpu} CPU/{self.memory_gb:.1f} GB)"
        if self.market == SPOT:
            return (f"{size}, spot (${self.price_per_hour:.4f}/hr, "
                    f"{self.interruption_pct:g}% chance of interruption)")
        return f"{size}, on-demand (${self.price_per_hour:.4f}/hr)"


class _SourceFailed(Exception):
    """A live source did not answer usefully; args[0] says why in one line."""


@dataclasses.dataclass
class _Source:
    key: str          # cache file prefix and the field it supplies
    label: str        # what the user reads when it fails
    fetch: Callable[[], dict[str, Any]]
    scope: str        # region and endpoint: a cache entry is only reused for the same scope


def offers(session: Any, region: str, *, price_file: str | None = None,
           cache_dir: pathlib.Path, max_age_hours: float = 6,
           spot_advisor_url: str = SPOT_ADVISOR_URL, say: Callable[[str], None] = print,
           instance_types: Collection[str] | None = None,
           availability_zones: Collection[str] | None = None,
           price_file_setting: str = PRICE_FILE_SETTING) -> list[Offer]:
    """Every on-demand and spot offer in `region` (restricted to `instance_types` if given).

    A spot offer needs a spot price and an interruption frequency; spot prices are the latest
    per availability zone, the lowest zone's (of `availability_zones` if given). Live sources
    win where they answered; the price file fills in failed sources and types they lack.
    """
    cache_dir = pathlib.Path(cache_dir)
    table = load_price_file(price_file, region) if price_file else None
    replace = bool(table and table.replace_live_sources)
    if price_file and table.rows is None and replace:
        raise PriceFileError(f"price file {price_file} has no entry for region {region!r} "
                             f"(it has: {', '.join(table.regions) or 'none'})")
    live: dict[str, dict[str, Any]] = {}
    failed: list[tuple[_Source, str]] = []
    if not replace:
        for source in _sources(session, region, spot_advisor_url):
            try:
                live[source.key] = _cached(cache_dir, source, max_age_hours)
            except _SourceFailed as exc:
                failed.append((source, str(exc)))
    if failed and (table is None or table.rows is None):
        why = "; ".join(f"{s.label} failed: {reason}" for s, reason in failed)
        missing = (f"the price file {price_file} has no entry for region {region!r}"
                   if price_file else f"no price file is set ({price_file_setting})")
        raise PricesUnavailable(f"cannot price EC2 instances in {region}: {why}; and {missing}. "
                                f"Set {price_file_setting} to a JSON price file (format: "
                                f"deploy.environments.ec2.pricing.load_price_file).")
    for source, reason in failed:
        say(f"EC2 prices: {source.label} failed ({reason}); using the price file {price_file}")
    rows = table.rows if table is not None and table.rows is not None else {}

    def column(key: str, field: str) -> dict[str, Any]:
        merged = dict(live.get(key, {}))
        for name, row in rows.items():
            if row.get(field) is not None:
                merged.setdefault(name, row[field])
        return merged

    sizes = column("instance-types", "size")
    on_demand = column("on-demand", "on_demand")
    spot_by_zone = live.get("spot", {})
    spot: dict[str, float] = {}
    for name, zones in spot_by_zone.items():
        prices = [p for z, p in zones.items() if not availability_zones or z in availability_zones]
        if prices:
            spot[name] = min(prices)
    for name, row in rows.items():
        if row.get("spot") is not None:
            spot.setdefault(name, row["spot"])
    interruption = column("spot-advisor", "interruption_pct")

    wanted = set(instance_types) if instance_types is not None else None
    found: list[Offer] = []
    for name in sorted(set(on_demand) | set(spot)):
        if wanted is not None and name not in wanted:
            continue
        if name not in sizes:
            continue      # priced but not offered in this region (or of unknown size)
        vcpu, memory_gb = sizes[name]
        if name in on_demand:
            found.append(Offer(name, int(vcpu), float(memory_gb), ON_DEMAND,
                               float(on_demand[name]), 0.0))
        if name in spot and name in interruption:
            found.append(Offer(name, int(vcpu), float(memory_gb), SPOT, float(spot[name]),
                               float(interruption[name])))
    return found


# ----------------------------------------------------------------------------- price file

@dataclasses.dataclass
class PriceTable:
    """A price file as read: its rows for one region (None if it has none) and its flags."""
    path: str
    regions: list[str]
    rows: dict[str, dict[str, Any]] | None
    replace_live_sources: bool


def load_price_file(path: str | os.PathLike[str], region: str) -> PriceTable:
    """Read and check a price file; its rows for `region`.

    Format (JSON; keys starting with "_" are comments and ignored)::

        {"replace_live_sources": false,
         "regions": {"us-east-2": {
             "m5.large":  {"vcpu": 2, "memory_gb": 8, "on_demand": 0.096,
                           "spot": 0.035, "interruption_pct": 2.5},
             "r5.xlarge": {"vcpu": 4, "memory_gb": 32, "on_demand": 0.252}}}}

    Every field of a type is optional: `on_demand` and `spot` are USD per hour (absent or
    null = not offered in that market), `interruption_pct` is the chance in percent that a
    spot instance is interrupted (a spot price without it gives no spot offer). With
    `replace_live_sources` true the file is the only source and every type needs `vcpu` and
    `memory_gb`; otherwise it fills in for sources that fail and types they lack.
    """
    where = f"price file {os.fspath(path)}"
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except OSError as exc:
        raise PriceFileError(f"cannot read the {where}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise PriceFileError(f"the {where} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise PriceFileError(f"the {where} must be a JSON object with a \"regions\" object")
    _no_unknown_keys(doc, {"regions", "replace_live_sources"}, where)
    regions = doc.get("regions")
    if not isinstance(regions, dict):
        raise PriceFileError(f"the {where} needs a \"regions\" object: "
                             "{\"regions\": {\"<region>\": {\"<instance type>\": {...}}}}")
    replace = doc.get("replace_live_sources", False)
    if not isinstance(replace, bool):
        raise PriceFileError(f"{where}: \"replace_live_sources\" must be true or false")
    names = [r for r in regions if not r.startswith("_")]
    rows = None
    if region in regions:
        rows = _check_region(regions[region], f"{where}, region {region}", replace)
    for other in names:
        if other != region:     # a typo elsewhere in the file is still the user's mistake
            _check_region(regions[other], f"{where}, region {other}", replace)
    return PriceTable(os.fspath(path), names, rows, replace)


def _check_region(types: Any, where: str, replace: bool) -> dict[str, dict[str, Any]]:
    if not isinstance(types, dict):
        raise PriceFileError(f"{where}: must be an object of instance types")
    rows = {}
    for name, row in types.items():
        if name.startswith("_"):
            continue
        at = f"{where}, {name}"
        if not isinstance(row, dict):
            raise PriceFileError(f"{at}: must be an object with {', '.join(_PRICE_FIELDS)}")
        _no_unknown_keys(row, set(_PRICE_FIELDS), at)
        clean: dict[str, Any] = {}
        for field in _PRICE_FIELDS:
            value = row.get(field)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value):
                raise PriceFileError(f"{at}: {field} must be a number, not {value!r}")
            low_ok = value >= 0 if field == "interruption_pct" else value > 0
            if not low_ok or (field == "interruption_pct" and value > 100):
                rule = "between 0 and 100" if field == "interruption_pct" else "above 0"
                raise PriceFileError(f"{at}: {field} must be {rule}, not {value!r}")
            if field == "vcpu" and value != int(value):
                raise PriceFileError(f"{at}: vcpu must be a whole number, not {value!r}")
            clean[field] = value
        if ("vcpu" in clean) != ("memory_gb" in clean):
            raise PriceFileError(f"{at}: give both vcpu and memory_gb, or neither")
        if replace and "vcpu" not in clean:
            raise PriceFileError(f"{at}: needs vcpu and memory_gb (replace_live_sources is true)")
        if "vcpu" in clean:
            clean["size"] = (int(clean["vcpu"]), float(clean["memory_gb"]))
        rows[name] = clean
    return rows


def _no_unknown_keys(obj: dict[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(k for k in obj if k not in known and not str(k).startswith("_"))
    if unknown:
        raise PriceFileError(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} "
                             f"{', '.join(map(repr, unknown))} (known: {', '.join(sorted(known))})")


# ----------------------------------------------------------------------------- live sources

def _sources(session: Any, region: str, advisor_url: str) -> list[_Source]:
    from botocore.config import Config
    # Fail fast where AWS is unreachable: the price file is the fallback, not a long wait.
    config = Config(connect_timeout=5, read_timeout=30,
                    retries={"max_attempts": 2, "mode": "standard"})
    ec2 = session.client("ec2", region_name=region, config=config)
    pricing = session.client("pricing", region_name=PRICING_API_REGION, config=config)
    return [
        _Source("instance-types", "instance sizes from EC2 DescribeInstanceTypes",
                lambda: _instance_types(ec2), f"{region} {ec2.meta.endpoint_url}"),
        _Source("on-demand", "on-demand prices from the AWS Pricing API (GetProducts)",
                lambda: _on_demand_prices(pricing, region),
                f"{region} {pricing.meta.endpoint_url}"),
        _Source("spot", "spot prices from EC2 DescribeSpotPriceHistory",
                lambda: _spot_prices(ec2), f"{region} {ec2.meta.endpoint_url}"),
        _Source("spot-advisor", f"spot interruption frequencies from the spot advisor "
                f"({advisor_url})", lambda: _interruption(advisor_url, region),
                f"{region} {advisor_url}"),
    ]


def _instance_types(ec2: Any) -> dict[str, Any]:
    """{type: [vcpu, memory_gb]} for every type the region offers."""
    sizes = {}
    for page in ec2.get_paginator("describe_instance_types").paginate():
        for it in page["InstanceTypes"]:
            sizes[it["InstanceType"]] = [int(it["VCpuInfo"]["DefaultVCpus"]),
                                         it["MemoryInfo"]["SizeInMiB"] / 1024]
    if not sizes:
        raise _SourceFailed("it listed no instance types")
    return sizes


def _on_demand_prices(pricing: Any, region: str) -> dict[str, float]:
    """{type: USD per hour} for Linux, shared tenancy, no pre-installed software."""
    filters = [{"Type": "TERM_MATCH", "Field": field, "Value": value} for field, value in (
        ("regionCode", region), ("operatingSystem", "Linux"), ("tenancy", "Shared"),
        ("preInstalledSw", "NA"), ("capacitystatus", "Used"))]
    items = [item for page in pricing.get_paginator("get_products").paginate(
        ServiceCode="AmazonEC2", Filters=filters, FormatVersion="aws_v1")
        for item in page["PriceList"]]
    prices = parse_price_list(items)
    if not prices:
        raise _SourceFailed(f"it listed no Linux on-demand prices for {region}")
    return prices


def parse_price_list(items: Collection[str | dict[str, Any]]) -> dict[str, float]:
    """{type: USD per hour} from Pricing API products (JSON strings, format aws_v1)."""
    prices: dict[str, float] = {}
    for item in items:
        product = json.loads(item) if isinstance(item, str) else item
        name = product.get("product", {}).get("attributes", {}).get("instanceType")
        for term in product.get("terms", {}).get("OnDemand", {}).values():
            for dim in term.get("priceDimensions", {}).values():
                usd = float(dim.get("pricePerUnit", {}).get("USD", 0) or 0)
                if name and usd > 0 and dim.get("unit", "").lower().startswith("hr"):
                    # several products can pass the filters (usage variants): the lowest
                    # is the plain box usage rate
                    prices[name] = min(usd, prices.get(name, usd))
    return prices


def _spot_prices(ec2: Any) -> dict[str, dict[str, float]]:
    """{type: {availability zone: latest USD per hour}} for Linux/UNIX."""
    latest: dict[tuple[str, str], tuple[datetime.datetime, float]] = {}
    now = datetime.datetime.now(datetime.timezone.utc)
    for page in ec2.get_paginator("describe_spot_price_history").paginate(
            ProductDescriptions=["Linux/UNIX"], StartTime=now):
        for row in page["SpotPriceHistory"]:
            if not row.get("ProductDescription", "").startswith("Linux/UNIX"):
                continue
            key = (row["InstanceType"], row["AvailabilityZone"])
            if key not in latest or row["Timestamp"] > latest[key][0]:
                latest[key] = (row["Timestamp"], float(row["SpotPrice"]))
    prices: dict[str, dict[str, float]] = {}
    for (name, zone), (_, price) in latest.items():
        if price > 0:
            prices.setdefault(name, {})[zone] = price
    return prices


def _interruption(url: str, region: str) -> dict[str, float]:
    """{type: interruption percent} for Linux in `region`, from the spot advisor JSON."""
    with urllib.request.urlopen(url, timeout=15) as response:
        doc = json.loads(response.read())
    bands = {}
    previous_high = 0.0
    for band in sorted(doc["ranges"], key=lambda r: r["index"]):
        low, high = _band(band.get("label", ""), previous_high, float(band["max"]))
        bands[band["index"]] = (low + high) / 2
        previous_high = high
    types = doc["spot_advisor"].get(region, {}).get("Linux", {})
    return {name: bands[entry["r"]] for name, entry in types.items() if entry.get("r") in bands}


def _band(label: str, previous_high: float, max_: float) -> tuple[float, float]:
    """The percent range a spot advisor band label names: "<5%", "5-10%", ">20%"."""
    numbers = [float(n) for n in re.findall(r"\d+(?:\.\d+)?", label)]
    if label.strip().startswith("<") and numbers:
        return 0.0, numbers[0]
    if label.strip().startswith(">") and numbers:
        return numbers[0], 100.0
    if len(numbers) == 2:
        return numbers[0], numbers[1]
    return previous_high, max_


# ----------------------------------------------------------------------------- cache

def _cached(cache_dir: pathlib.Path, source: _Source, max_age_hours: float) -> dict[str, Any]:
    """The source's data from a fresh cache file, else fetched (and cached)."""
    digest = hashlib.sha256(source.scope.encode()).hexdigest()[:16]
    path = cache_dir / f"{source.key}-{digest}.json"
    try:
        doc = json.loads(path.read_text())
        age = time.time() - float(doc["fetched_at"])
        if doc.get("scope") == source.scope and 0 <= age < max_age_hours * 3600:
            return doc["data"]
    except (OSError, ValueError, KeyError, TypeError):
        pass        # missing or unreadable: fetch again
    try:
        data = source.fetch()
    except _SourceFailed:
        raise
    except Exception as exc:  # noqa: BLE001  (any failure of a source means: use the file)
        from botocore.exceptions import BotoCoreError, ClientError
        if not isinstance(exc, (BotoCoreError, ClientError, OSError, ValueError, KeyError,
                                TypeError, http.client.HTTPException)):
            raise
        raise _SourceFailed(_one_line(exc)) from exc
    _write_private(cache_dir, path, {"fetched_at": time.time(), "scope": source.scope,
                                     "data": data})
    return data


def _write_private(cache_dir: pathlib.Path, path: pathlib.Path, doc: Any) -> None:
    """Write whole or not at all, readable by the owner only (dir 0700, file 0600)."""
    cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(cache_dir, 0o700)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def _one_line(exc: BaseException) -> str:
    """An error as one short line: markup and line breaks from error pages removed."""
    if isinstance(exc, urllib.error.HTTPError):
        text = f"HTTP {exc.code} {exc.reason}"
    elif isinstance(exc, urllib.error.URLError):
        text = str(exc.reason)
    else:
        text = str(exc)
    if re.search(r"</\w+>|<!doctype", text, re.IGNORECASE):
        text = re.sub(r"<[^>]*>", " ", text)
    text = " ".join(text.split()) or type(exc).__name__
    text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= 200 else text[:197] + "..."
