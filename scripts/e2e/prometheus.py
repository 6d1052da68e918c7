# ruff: noqa: T201  (a command-line tool: it reports on stdout)
"""The monitoring of `make e2e` (scripts/e2e/scenario.sh): the scrape configuration, and what
must hold of what was scraped. Run on the host with the project's venv.

Debian's Prometheus is built without Kubernetes discovery (Debian removed it: the Kubernetes
client's dependencies), so the scraping is done by Debian's vmagent (VictoriaMetrics), whose
scraper implements Prometheus's `kubernetes_sd_configs` and relabeling, and which writes what it
scrapes to Debian's Prometheus (its remote-write receiver); the queries run in that Prometheus.

Subcommands:
  config      The chart's two scrape configurations (tests/monitoring/scrape_configs.py, made
              from the release's rendered objects) with Kubernetes discovery through the real
              API server: the scrape configuration file.
  discovered  Each scrape job has found exactly the release's server pod, by its name and
              address, with the labels the autoscaling queries select on, and scraped it, and
              its `up` is 1 in Prometheus; with --gone, no job still has that pod (a rollout
              replaced it). Then the chart tests' relabeling model must keep and drop what
              the scraper keeps and drops, with the same labels.
  queries     The KEDA query as the chart renders it, the prometheus-adapter rule as the
              adapter expands it, and the request counters' increase over the Locust run
              (what Locust reports, and the requests its users had in flight when it stopped),
              through Prometheus's HTTP API.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.chart.scrape_model import finish, relabel  # noqa: E402
from tests.monitoring.scrape_configs import KUBERNETES_PODS, scrape_configs  # noqa: E402

ADAPTER = ROOT / "charts" / "resnet-serve" / "monitoring" / "prometheus-adapter-values.yaml"
# The routes of the kubelet's probes and of the scrapes themselves: not the load's.
NOT_LOAD = "/healthz|/readyz|/metrics"


class NotYet(Exception):
    """What does not hold yet (discovery and the first scrapes take a few seconds)."""


def rendered(path: Path) -> list[dict]:
    return [o for o in yaml.safe_load_all(path.read_text()) if o]


def config(objs: list[dict], api: str, ca: Path, token: Path, interval: str) -> dict:
    sd = {
        "api_server": api,
        "tls_config": {"ca_file": str(ca)},
        "authorization": {"credentials_file": str(token)},
    }
    return {"global": {"scrape_interval": interval}, "scrape_configs": scrape_configs(objs, sd)}


def api(url: str, path: str, **params: object) -> dict:
    query = urllib.parse.urlencode(params)
    with urllib.request.urlopen(f"{url}/api/v1/{path}?{query}", timeout=10) as response:
        body = json.load(response)
    if body.get("status") != "success":
        raise SystemExit(f"FAIL: {path} {params}: {body}")
    return body["data"]


def query(url: str, expr: str, at: float) -> list[dict]:
    return api(url, "query", query=expr, time=f"{at:.3f}")["result"]


def metrics_service(objs: list[dict]) -> dict:
    """The Service whose `metrics` port the ServiceMonitor scrapes."""
    (service,) = [
        o
        for o in objs
        if o["kind"] == "Service" and "metrics" in {p["name"] for p in o["spec"]["ports"]}
    ]
    return service


def jobs_of(objs: list[dict]) -> dict[str, str]:
    """Each scrape job's name and the `job` label of its series (the Operator's: the
    Service's name)."""
    service = metrics_service(objs)["metadata"]["name"]
    return {
        j["job_name"]: KUBERNETES_PODS if j["job_name"] == KUBERNETES_PODS else service
        for j in scrape_configs(objs)
    }


def check_discovered(
    agent: str,
    url: str,
    objs: list[dict],
    namespace: str,
    release: str,
    pod: str,
    ip: str,
    gone: str,
) -> list[str]:
    """One line per job saying what it scrapes; NotYet while it does not hold."""
    (deployment,) = [o for o in objs if o["kind"] == "Deployment"]
    port = deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"]
    service = metrics_service(objs)
    want = {
        "namespace": namespace,
        "pod": pod,
        "app_kubernetes_io_name": "resnet-serve",
        "app_kubernetes_io_instance": release,
        "app_kubernetes_io_component": "server",
    }
    active = api(agent, "targets", state="active")["activeTargets"]
    lines = []
    for job, job_label in jobs_of(objs).items():
        # vmagent names a target's pool by its `job` label, Prometheus by the job's name.
        targets = [t for t in active if t["scrapePool"] in (job, job_label)]
        pods = sorted(t["labels"].get("pod", "") for t in targets)
        if pods != [pod]:
            raise NotYet(f"{job}: scrapes pods {pods}, expected exactly [{pod}]")
        (t,) = targets
        labels = t["labels"]
        if job == KUBERNETES_PODS:
            want_job = {"job": KUBERNETES_PODS}
        else:
            want_job = {
                "job": service["metadata"]["name"],
                "service": service["metadata"]["name"],
                "endpoint": "metrics",
                "container": "server",
            }
        wrong = {k: labels.get(k) for k, v in (want | want_job).items() if labels.get(k) != v}
        if wrong:
            raise SystemExit(f"FAIL: {job}: labels {wrong}, expected {want | want_job}")
        scrape_url = f"http://{ip}:{port}/metrics"
        if t["scrapeUrl"] != scrape_url:
            raise SystemExit(f"FAIL: {job}: scrapes {t['scrapeUrl']}, expected {scrape_url}")
        if t["health"] != "up":
            raise NotYet(f"{job}: {pod} health {t['health']!r} {t.get('lastError', '')}")
        up = query(url, f'up{{job="{labels["job"]}",pod="{pod}"}}', time.time())
        if [float(s["value"][1]) for s in up] != [1.0]:
            raise NotYet(f"{job}: up{{pod={pod!r}}} is {up}")
        lines.append(f"{job}: {pod} at {t['scrapeUrl']}, up, job={labels['job']!r}")
    if gone:
        still = sorted({t["scrapePool"] for t in active if t["labels"].get("pod") == gone})
        if still:
            raise NotYet(f"the replaced pod {gone} is still a target of {still}")
        lines.append(f"the replaced pod {gone} is no target any more")
    return lines


def model_agrees(agent: str, objs: list[dict], gone: str = "") -> str:
    """The chart tests' relabeling model (tests/chart/scrape_model.py), given what the scraper
    discovered through the API server (every pod and endpoint of the cluster, the `helm test`
    and Locust pods included), keeps the targets the scraper keeps, with its labels, and drops
    those it drops.

    vmagent lists a dropped target for minutes after its pod went: the targets of ``gone`` (a
    pod deleted from the API server) that it dropped as duplicates then have no kept twin left
    to pair with, so they are counted apart rather than checked."""
    jobs = {j["job_name"]: j for j in scrape_configs(objs)}
    data = api(agent, "targets")

    def model(t: dict) -> tuple | None:
        job = jobs[t["discoveredLabels"]["job"]]
        kept = finish(job, relabel(t["discoveredLabels"], job["relabel_configs"]))
        return None if kept is None else (kept.job, kept.labels)

    for t in data["activeTargets"]:
        if model(t) is None or dict(model(t)[1]) != t["labels"]:  # type: ignore[index]
            raise SystemExit(
                f"FAIL: the relabeling model makes {model(t)} of {t['discoveredLabels']}, "
                f"the scraper {t['labels']}"
            )
    # A target the scraper drops but the model keeps must be a duplicate: another discovered
    # target (another port of the same pod) relabels to the same labels, and one is scraped.
    every = Counter(model(t) for t in data["activeTargets"] + data["droppedTargets"])
    duplicates = remembered = 0
    for t in data["droppedTargets"]:
        if gone and t["discoveredLabels"].get("__meta_kubernetes_pod_name") == gone:
            remembered += 1
            continue
        if model(t) is not None:
            if every[model(t)] < 2:
                raise SystemExit(f"FAIL: the relabeling model keeps {model(t)}, the scraper not")
            duplicates += 1
    dropped = len(data["droppedTargets"]) - duplicates - remembered
    return (
        f"the relabeling model keeps the {len(data['activeTargets'])} targets the scraper "
        f"keeps, with the same labels, and drops the {dropped} it drops; the {duplicates} "
        f"more it drops are another port of a kept pod, the same target once relabeled"
        + (f"; {remembered} dropped ones of the replaced pod {gone} not checked" if gone else "")
    )


def discovered(args: argparse.Namespace) -> None:
    objs = rendered(args.rendered)
    deadline = time.monotonic() + args.timeout
    while True:
        try:
            lines = check_discovered(
                args.agent,
                args.url,
                objs,
                args.namespace,
                args.release,
                args.pod,
                args.ip,
                args.gone,
            )
            break
        except (NotYet, OSError) as exc:
            if time.monotonic() > deadline:
                raise SystemExit(f"FAIL after {args.timeout} s: {exc}") from None
            time.sleep(0.5)
    lines.append(model_agrees(args.agent, objs, args.gone))
    for line in lines:
        print(f"PASS {line}", flush=True)


def scraped_since(url: str, job: str, pod: str, since: float, timeout: float = 60) -> None:
    """Wait for a scrape of ``pod`` by ``job`` that began after ``since``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = query(url, f'timestamp(up{{job="{job}",pod="{pod}"}})', time.time())
        if found and float(found[0]["value"][1]) > since:
            return
        time.sleep(0.5)
    raise SystemExit(f"FAIL: no scrape of {pod} by {job} after {since}")


def locust_requests(stats: Path) -> int:
    with stats.open() as f:
        (row,) = [r for r in csv.DictReader(f) if r["Name"] == "Aggregated"]
    return int(row["Request Count"])


def queries(args: argparse.Namespace) -> None:
    objs = rendered(args.rendered)
    url, ns, pod = args.url, args.namespace, args.pod
    until = time.time()
    for job in jobs_of(objs).values():
        scraped_since(url, job, pod, until)
    now = time.time()

    # The load: what each job saw the pod answer during the Locust run is what Locust sent.
    sent = locust_requests(args.locust_stats)
    for job in jobs_of(objs).values():
        selector = (
            f'{{__name__=~"serve_request_(success|failure)_total",job="{job}",'
            f'namespace="{ns}",pod="{pod}",route!~"{NOT_LOAD}"}}'
        )
        before = query(url, f"sum({selector})", args.since)
        after = query(url, f"sum({selector})", now)
        routes = {
            s["metric"]["route"]: float(s["value"][1])
            for s in query(url, f"sum by (route) ({selector})", now)
        }
        if not before or not after:
            raise SystemExit(f"FAIL: {job}: no request counters ({before}, {after})")
        answered = float(after[0]["value"][1]) - float(before[0]["value"][1])
        # Locust stops its users mid-request when the run ends: the answers to those (one a
        # user at most, each user waiting for its answer) are in the counters, not in its report.
        if not sent <= answered <= sent + args.locust_users:
            raise SystemExit(
                f"FAIL: {job}: {pod} answered {answered:g} requests during the Locust run, "
                f"Locust reports {sent} from {args.locust_users} users "
                f"(by route, in all: {routes})"
            )
        print(
            f"PASS {job}: {pod} answered {answered:g} requests during the Locust run; Locust "
            f"reports {sent} from {args.locust_users} users (by route, in all: {routes})",
            flush=True,
        )

    # KEDA's query, exactly as the chart renders it in the ScaledObject.
    (scaled,) = [o for o in objs if o["kind"] == "ScaledObject"]
    keda = scaled["spec"]["triggers"][0]["metadata"]["query"]
    result = query(url, keda, now)
    if len(result) != 1:
        raise SystemExit(f"FAIL: the KEDA query {keda} returned {result}")
    # Its highest value during the run: Locust's users had images in flight at some scrape,
    # one image each at most (one a request, each user waiting for its answer).
    window = f"[{int(until - args.since) + 1}s:2s]"
    (high,) = query(url, f"max_over_time(({keda}){window})", until)
    if not 1 <= float(high["value"][1]) <= args.locust_users:
        raise SystemExit(f"FAIL: the KEDA query's highest value in the run: {high}")
    print(
        f"PASS KEDA query {keda} = {result[0]['value'][1]} now, "
        f"{high['value'][1]} at most during the Locust run",
        flush=True,
    )

    # The adapter: its seriesQuery discovers the pod; its metricsQuery, expanded as it expands
    # it for this release's pods (LabelMatchers: namespace and pod; GroupBy: pod), serves it.
    (rule,) = yaml.safe_load(ADAPTER.read_text())["rules"]["custom"]
    hpa_metric = rule["name"]["as"]
    series = api(url, "series", **{"match[]": rule["seriesQuery"], "start": now - 60, "end": now})
    found = {(s["namespace"], s["pod"]) for s in series if s["__name__"] == hpa_metric}
    if (ns, pod) not in found:
        raise SystemExit(f"FAIL: the adapter's seriesQuery finds {found}, not ({ns}, {pod})")
    expanded = (
        rule["metricsQuery"]
        .replace("<<.Series>>", hpa_metric)
        .replace("<<.LabelMatchers>>", f'namespace="{ns}",pod=~"{pod}"')
        .replace("<<.GroupBy>>", "pod")
    )
    per_pod = {s["metric"].get("pod"): s["value"][1] for s in query(url, expanded, now)}
    high = {
        s["metric"].get("pod"): float(s["value"][1])
        for s in query(url, f"max_over_time(({expanded}){window})", until)
    }
    if list(per_pod) != [pod] or list(high) != [pod] or not 1 <= high[pod] <= args.locust_users:
        raise SystemExit(f"FAIL: the adapter's query {expanded}: {per_pod} now, {high} at most")
    print(f"PASS prometheus-adapter: {expanded} = {per_pod} now, {high} at most", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("config")
    p.add_argument("--rendered", type=Path, required=True, help="`helm template` output")
    p.add_argument("--api", required=True, help="the API server's URL")
    p.add_argument("--ca", type=Path, required=True)
    p.add_argument("--token-file", type=Path, required=True, help="a ServiceAccount's token")
    p.add_argument("--interval", default="2s")
    p = sub.add_parser("discovered")
    p.add_argument("--agent", required=True, help="the scraper (its /api/v1/targets)")
    p.add_argument("--url", required=True, help="Prometheus")
    p.add_argument("--rendered", type=Path, required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--release", required=True)
    p.add_argument("--pod", required=True)
    p.add_argument("--ip", required=True, help="the pod's address")
    p.add_argument("--gone", default="", help="a pod no job may scrape any more")
    p.add_argument("--timeout", type=float, default=60)
    p = sub.add_parser("queries")
    p.add_argument("--url", required=True, help="Prometheus")
    p.add_argument("--rendered", type=Path, required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--pod", required=True)
    p.add_argument("--since", type=float, required=True, help="when the Locust run began")
    p.add_argument("--locust-stats", type=Path, required=True)
    p.add_argument("--locust-users", type=int, required=True)
    args = parser.parse_args()
    if args.command == "config":
        objs = rendered(args.rendered)
        print(yaml.safe_dump(config(objs, args.api, args.ca, args.token_file, args.interval)))
    elif args.command == "discovered":
        discovered(args)
    elif args.command == "queries":
        queries(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
