"""`deploy dashboard` in a real browser: Debian's chromium, headless, driven by Selenium
through Debian's chromedriver, against a dashboard process serving real LocalAsync jobs."""
from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import psutil
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

import deploy
from conftest import ROOT
from deploy.cli import build_parser
from deploy.environment import LocalAsync
from deploy.worker.processes import process_alive
from waiting import wait_for

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--no-proxy-server"):
        options.add_argument(arg)
    options.binary_location = CHROMIUM
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


class Dashboard:
    """A `deploy dashboard --port 0` process on this test's deploy home."""

    def __init__(self) -> None:
        # run where the jobs' functions import from, as a user would (resume unpickles them)
        env = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "tests")}
        self.proc = subprocess.Popen([sys.executable, "-m", "deploy.cli", "dashboard", "--port", "0"],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT,
                                     text=True, env=env)
        line = self.proc.stdout.readline()          # printed once the socket listens
        assert line.startswith("deploy dashboard: http://"), line + self.proc.stdout.read(2000)
        self.url = line.split(": ", 1)[1].strip().rstrip("/")
        self.port = int(self.url.rsplit(":", 1)[1])
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()   # drain the log

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=30) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def post(self, path: str, headers: dict) -> tuple[int, bytes]:
        request = urllib.request.Request(self.url + path, data=b"", method="POST", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def dashboard():
    board = Dashboard()
    yield board
    board.stop()


def until(driver, condition, timeout: float = 20, what: str = ""):
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(
        lambda d: condition(d), message=f"timed out waiting for {what}")


def text(driver, css: str) -> str | None:
    """An element's text now (the page re-renders while it polls: no element handles kept)."""
    return driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.textContent : null", css)


def click(driver, css: str) -> None:
    """A real click on the element matching `css`, again if a re-render replaced it."""
    for _ in range(20):
        try:
            driver.find_element(By.CSS_SELECTOR, css).click()
            return
        except StaleElementReferenceException:
            time.sleep(0.05)
    raise AssertionError(f"{css} kept being replaced")


def listed(driver) -> dict[str, dict]:
    """The jobs list as shown: name -> status, done, cells."""
    return driver.execute_script("""
        const out = {};
        for (const tr of document.querySelectorAll('#jobs tbody tr')) {
          const p = tr.querySelector('.progress');
          out[tr.dataset.name] = {status: tr.dataset.status, done: p ? +p.dataset.done : null,
                                  cells: [...tr.children].map((td) => td.textContent)};
        }
        return out;""")


def sleepy(x, seconds):
    time.sleep(seconds)
    return x


def test_bound_to_loopback_by_default(dashboard):
    args = build_parser().parse_args(["dashboard"])
    assert (args.host, args.port) == ("127.0.0.1", 8765)
    listening = [c.laddr for c in psutil.Process(dashboard.proc.pid).net_connections("inet")
                 if c.status == psutil.CONN_LISTEN]
    assert [(a.ip, a.port) for a in listening] == [("127.0.0.1", dashboard.port)]
    status, body = dashboard.get("/")
    assert status == 200 and b"deploy dashboard" in body


def test_a_job_whose_directory_is_gone_is_listed_unknown(dashboard):
    import shutil
    job = deploy.map_job.create(sleepy, [{"x": 1, "seconds": 0}], name="gone",
                                environment="local")
    assert job.get_status() == "Completed"
    shutil.rmtree(job._store.local_path(""))
    code, body = dashboard.get("/api/jobs")
    listed_jobs = json.loads(body)["jobs"]
    assert code == 200 and [(j["name"], j["status"]) for j in listed_jobs] == [("gone", "Unknown")]
    assert "no job.json" in listed_jobs[0]["error"]
    code, body = dashboard.get("/api/jobs/gone/metrics")
    assert code == 409 and "no job.json" in json.loads(body)["error"]


def test_the_list_shows_a_running_job_whose_progress_advances(dashboard, browser):
    job = deploy.map_job.create(sleepy, [{"x": i, "seconds": 0.4} for i in range(12)], chunk_size=1,
                                name="advancing", environment=LocalAsync("one", num_workers=1))
    browser.get(dashboard.url + "/")

    def row(d):
        return listed(d).get("advancing") or {}

    until(browser, lambda d: row(d).get("status") == "Running", what="the job listed as Running")
    first = until(browser, lambda d: (row(d).get("done") or 0) >= 1 and row(d), what="a task done")
    assert first["status"] == "Running" and first["done"] < 12
    assert first["cells"][:3] == ["advancing", "one", "Running"]
    assert first["cells"][3].endswith(" / 12")
    until(browser, lambda d: (row(d).get("done") or 0) > first["done"], what="progress to advance")
    until(browser, lambda d: row(d).get("status") == "Completed", timeout=30,
          what="the job to complete")
    assert row(browser)["done"] == 12 and job.get_status() == "Completed"


def breaks(x):
    print(f"working on {x}")
    if x == 3:
        return parse_setting("{broken")
    return x


def parse_setting(text):
    return json.loads(text)


def test_a_failed_tasks_traceback_and_log_are_on_the_job_page(dashboard, browser):
    job = deploy.map_job.create(breaks, [{"x": i} for i in range(8)], name="breaking")
    assert job.wait(timeout=60) == "Failed"
    browser.get(dashboard.url + "/#/job/breaking")
    shown = '#failures .failure[data-task="3"] pre.traceback'
    until(browser, lambda d: text(d, shown), what="the traceback")
    assert browser.find_element(By.CSS_SELECTOR, shown).is_displayed()
    trace = text(browser, shown)
    assert "json.decoder.JSONDecodeError: Expecting property name" in trace
    assert "in parse_setting" in trace and "in breaks" in trace
    assert text(browser, "#failures-title") == "Failed tasks (1)"
    # the metrics table: filter by Failed, open the task: its output
    Select(browser.find_element(By.ID, "status-filter")).select_by_value("Failed")
    until(browser, lambda d: text(d, "#page-info") == "rows 1–1 of 1", what="the filtered table")
    click(browser, '#metrics tr[data-task="3"] .link')
    log = until(browser, lambda d: d.find_elements(By.ID, "task-log"), what="the task's log")[0]
    assert log.text == "working on 3"
    assert browser.find_element(By.ID, "resume-btn").is_enabled()
    assert not browser.find_element(By.ID, "cancel-btn").is_enabled()
    # the timeline: drawn on the page, and as a PNG by deploy.jobs.plot
    assert "Completed 7" in text(browser, "#timeline-legend") and "Failed 1" in text(browser, "#timeline-legend")
    assert browser.execute_script("return document.getElementById('timeline').height") > 50
    code, png = dashboard.get("/api/jobs/breaking/timeline.png")
    assert code == 200 and png.startswith(b"\x89PNG")
    # no column for a cost no job reports
    browser.get(dashboard.url + "/")
    until(browser, lambda d: "breaking" in listed(d), what="the list")
    assert "Est. cost" not in text(browser, "#jobs thead")


def held(x, gate):
    """Runs until the file `gate` exists."""
    while not os.path.exists(gate):
        time.sleep(0.05)
    return x


def test_cancel_and_resume_from_the_page(dashboard, browser, tmp_path):
    gate = str(tmp_path / "gate")
    job = deploy.map_job.create(held, [{"x": i, "gate": gate} for i in range(4)], chunk_size=1,
                                name="long", environment=LocalAsync("two", num_workers=2))
    browser.get(dashboard.url + "/#/job/long")
    button = until(browser, lambda d: (b := d.find_element(By.ID, "cancel-btn")).is_enabled() and b,
                   what="cancel to be enabled")
    until(browser, lambda d: text(d, "#job-status") == "Running", what="Running")
    pids = job._launch()["handle"]["pids"]
    assert pids and all(process_alive(p) for p in pids)
    button.click()
    until(browser, lambda d: text(d, "#job-status") == "Canceled", what="Canceled")
    assert job.get_status() == "Canceled"
    assert set(job.get_metrics().status) == {"Canceled"}
    wait_for(lambda: not any(process_alive(p) for p in pids), timeout=15, what="workers to stop")
    open(gate, "w").close()
    until(browser, lambda d: d.find_element(By.ID, "resume-btn").is_enabled(), what="resume enabled")
    click(browser, "#resume-btn")
    until(browser, lambda d: text(d, "#job-status") == "Completed", timeout=30, what="Completed")
    assert job.get_results() == [0, 1, 2, 3]         # this handle follows the resumed run
    until(browser, lambda d: text(d, "#page-info") == "rows 1–4 of 4", what="the table")
    # the page reloads a finished job's rows once it sees the new run (within seconds)
    until(browser, lambda d: "Canceled" not in (text(d, "#metrics tbody") or "Canceled"),
          timeout=30, what="the table to show the resumed run")


def test_a_job_resumed_elsewhere_runs_again_on_the_page(dashboard, browser, tmp_path):
    gate = str(tmp_path / "gate")
    job = deploy.map_job.create(held, [{"x": i, "gate": gate} for i in range(3)], chunk_size=1,
                                name="elsewhere", environment=LocalAsync("one", num_workers=1))
    job.cancel()
    browser.get(dashboard.url + "/#/job/elsewhere")
    until(browser, lambda d: text(d, "#job-status") == "Canceled", what="Canceled")
    open(gate, "w").close()
    deploy.jobs["elsewhere"].resume()               # as `deploy jobs resume` would
    until(browser, lambda d: text(d, "#job-status") == "Completed", timeout=30,
          what="the page to see the resumed job complete")
    until(browser, lambda d: text(d, "#page-info") == "rows 1–3 of 3"
          and "Canceled" not in text(d, "#metrics tbody"), what="the table")


class _Attacker(http.server.BaseHTTPRequestHandler):
    """Another origin on this machine whose page tries to cancel a job on the dashboard."""
    target = ""

    def do_GET(self):
        page = f"""<!doctype html><body>
        <form id="f" method="POST" action="{self.target}/cancel"></form>
        <script>
          fetch("{self.target}/cancel", {{method: "POST", mode: "no-cors"}})
            .finally(() => {{ document.title = "sent"; document.getElementById("f").submit(); }});
        </script></body>"""
        body = page.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_cross_origin_requests_that_change_state_are_refused(dashboard, browser):
    job = deploy.map_job.create(sleepy, [{"x": i, "seconds": 60} for i in range(2)], chunk_size=1,
                                name="target", environment=LocalAsync("one", num_workers=1))
    path = "/api/jobs/target/cancel"
    own = f"http://127.0.0.1:{dashboard.port}"
    status, page = dashboard.get("/")
    token = page.decode().split('name="deploy-token" content="', 1)[1].split('"', 1)[0]
    refused = {
        "no origin, no token": {},
        "another origin": {"Origin": "http://127.0.0.1:1", "X-Deploy-Token": token},
        "a null origin": {"Origin": "null", "X-Deploy-Token": token},
        "own origin, no token": {"Origin": own},
        "own origin, wrong token": {"Origin": own, "X-Deploy-Token": "x" + token},
        "another host (DNS rebinding)": {"Host": "attacker.example:%d" % dashboard.port,
                                         "Origin": "http://attacker.example:%d" % dashboard.port,
                                         "X-Deploy-Token": token},
    }
    for what, headers in refused.items():
        code, body = dashboard.post(path, headers)
        assert code == 403, (what, code, body)
    assert dashboard.get("/api/jobs")[0] == 200
    # a real page of another origin, in the browser, posting with fetch and with a form
    _Attacker.target = f"{own}/api/jobs/target"
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Attacker)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        browser.get(f"http://127.0.0.1:{server.server_address[1]}/")
        until(browser, lambda d: d.title == "sent" or "403" in d.page_source or "refused" in d.page_source,
              what="the attacker page to post")
        until(browser, lambda d: "cross-origin request refused" in d.page_source,
              what="the form post's answer")
    finally:
        server.shutdown()
    assert job.get_status() == "Running"
    # the dashboard's own page, with its token and origin, may
    code, body = dashboard.post(path, {"Origin": own, "X-Deploy-Token": token})
    assert code == 200 and json.loads(body)["status"] == "Canceled"


def double(x):
    return 2 * x


def test_the_pages_stay_responsive_with_a_million_task_job(dashboard, browser):
    n = 1_000_000
    big = deploy.map_job.create(double, [{"x": i} for i in range(n)], name="million",
                                environment=LocalAsync("two", num_workers=2))
    assert big.wait(timeout=300) == "Completed"
    deploy.map_job.create(sleepy, [{"x": i, "seconds": 0.3} for i in range(10)], chunk_size=1,
                          name="small", environment=LocalAsync("one", num_workers=1))
    timings = {}
    start = time.monotonic()
    browser.get(dashboard.url + "/")
    until(browser, lambda d: (listed(d).get("million") or {}).get("status") == "Completed",
          timeout=60, what="the million-task job listed")
    timings["list"] = time.monotonic() - start
    # the list keeps updating the small running job while the big one is listed
    until(browser, lambda d: (listed(d).get("small") or {}).get("status") == "Completed",
          timeout=30, what="the small job to complete on the list")

    start = time.monotonic()
    browser.get(dashboard.url + "/#/job/million")
    until(browser, lambda d: text(d, "#page-info") == "rows 1–50 of 1,000,000",
          timeout=60, what="the first page of rows")
    timings["job page"] = time.monotonic() - start
    assert len(browser.find_elements(By.CSS_SELECTOR, "#metrics tbody tr")) == 50

    start = time.monotonic()
    header = 'th[data-sort="run_time"]'
    click(browser, header)                                                      # ascending
    until(browser, lambda d: "▲" in text(d, header), what="sorted by run time")
    click(browser, header)                                                      # descending
    until(browser, lambda d: "▼" in text(d, header), what="sorted by run time, longest first")
    timings["sort twice"] = time.monotonic() - start
    shown = [float(td.text.split()[0]) for td in
             browser.find_elements(By.CSS_SELECTOR, "#metrics tbody tr td:nth-child(4)")]
    assert shown == sorted(shown, reverse=True) and len(shown) == 50
    metrics = big.get_metrics()
    assert shown[0] == pytest.approx(metrics.run_time.max(), abs=1e-3)

    start = time.monotonic()
    click(browser, "#next-page")
    until(browser, lambda d: text(d, "#page-info") == "rows 51–100 of 1,000,000",
          what="the second page")
    timings["next page"] = time.monotonic() - start

    legend = until(browser, lambda d: "bars for 1,000,000 tasks" in (text(d, "#timeline-legend") or "")
                   and text(d, "#timeline-legend"), what="the timeline")
    assert "Completed 1,000,000" in legend
    # what the page fetches stays small however large the job
    code, page = dashboard.get("/api/jobs/million/metrics?limit=50&sort=run_time&desc=1")
    code2, timeline_json = dashboard.get("/api/jobs/million/timeline.json")
    assert code == code2 == 200
    assert len(page) < 50_000 and len(timeline_json) < 500_000, (len(page), len(timeline_json))
    assert len(json.loads(timeline_json)["bars"]["lane"]) <= 2000
    start = time.monotonic()
    code, _ = dashboard.get("/api/jobs")
    timings["list api (cached)"] = time.monotonic() - start
    print("\n[dashboard] 1,000,000 tasks: " + ", ".join(f"{k} {v:.2f} s" for k, v in timings.items()))
    # measured on the 2-core machine: list 0.7-0.8 s, job page 0.9-2.7 s, two sorts
    # 0.5-1.2 s, next page 0.1-0.25 s (the higher figures with the machine busy); the
    # bounds leave room for a busier one
    assert timings["list"] < 30 and timings["job page"] < 30
    assert timings["sort twice"] < 15 and timings["next page"] < 5
    assert timings["list api (cached)"] < 2


def test_environments_page_shows_settings_and_never_secrets(dashboard, browser):
    from deploy import state
    from deploy.environments.ssh.cluster import SshCluster
    LocalAsync("workstation", num_workers=3).save()
    SshCluster("lab", hosts=["alice@node1:2222", "node2"], workers_per_host=2,
               forward_env=["WANDB_API_KEY"]).save()
    # a backend that wrongly kept a credential among its settings: the page hides it
    with state.connect() as db:
        db.execute("insert into environments (name, kind, data, saved) values (?, ?, ?, ?)",
                   ("leaky", "custom", json.dumps({"kind": "custom", "name": "leaky", "settings": {
                       "region": "eu-west-1", "aws_secret_access_key": "AKIA-SECRET-VALUE",
                       "nested": {"password": "hunter2"}}}), time.time()))
    browser.get(dashboard.url + "/#/environments")
    until(browser, lambda d: "leaky" in (text(d, "#environments tbody") or ""), what="the list")
    shown = text(browser, "#environments tbody")
    for expected in ("workstation", "local-async", '"num_workers": 3', "lab", "alice@node1:2222",
                     "WANDB_API_KEY", '"workers_per_host": 2', "eu-west-1"):
        assert expected in shown, expected
    assert "AKIA-SECRET-VALUE" not in shown and "hunter2" not in shown and "•••" in shown
    code, body = dashboard.get("/api/environments")
    assert code == 200 and b"AKIA-SECRET-VALUE" not in body and b"hunter2" not in body


def test_a_cost_is_shown_when_a_job_reports_one(dashboard, browser):
    from deploy.jobdir import layout
    from deploy.worker.runner import HOST
    job = deploy.map_job.create(sleepy, [{"x": i, "seconds": 0.2} for i in range(3)], name="priced",
                                environment=LocalAsync("one", num_workers=1))
    deploy.map_job.create(sleepy, [{"x": 1, "seconds": 0}], name="free", environment="local")
    assert job.wait(timeout=60) == "Completed"
    # what the EC2 backend writes into the launch record: each host's hourly price
    launch = json.loads(job._store.get(layout.LAUNCH))
    launch["handle"]["hourly_prices"] = {HOST: 36.0}
    job._store.put(layout.LAUNCH, json.dumps(launch).encode())
    reopened = deploy.jobs["priced"]
    cost = reopened.get_estimated_cost()
    assert 0.005 < cost < 0.1                   # 36 $/h over 0.6 s and more
    browser.get(dashboard.url + "/")
    until(browser, lambda d: "Est. cost" in (text(d, "#jobs thead") or ""), what="the cost column")
    rows = listed(browser)
    assert rows["priced"]["cells"][6] == f"${cost:.4f}"
    assert rows["free"]["cells"][6] == ""
    browser.get(dashboard.url + "/#/job/priced")
    until(browser, lambda d: f"${cost:.4f}" in (text(d, "#job-facts") or ""), what="the cost")


def test_without_the_extra_the_command_says_what_to_install():
    code = ("import sys; sys.modules['uvicorn'] = None\n"
            "from deploy.cli import main\n"
            "sys.exit(main(['dashboard', '--port', '0']))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=ROOT)
    assert out.returncode == 2 and "pip install deploy[dashboard]" in out.stderr, out
