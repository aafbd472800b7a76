"""Make the README's dashboard screenshots and example timelines with the code that ships.

    python scripts/make_screenshots.py [OUT_DIR]      (default docs/images)

Runs real LocalAsync jobs in a fresh deploy home (one with failures, retries and a worker
killed mid-run; a canceled one; one still running; a million tiny tasks), draws their
timelines with job.plot(), serves `deploy dashboard` and photographs its pages with
Debian's headless chromium through Selenium (/usr/bin/chromedriver).
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def work(seconds: float, i: int, marker: str) -> int:
    """A task: sleeps, fails now and then, and fails its first try when i % 17 == 5."""
    import os
    import time
    time.sleep(seconds)
    print(f"task {i}: slept {seconds:.3f} s")
    if i % 23 == 7:
        raise ValueError(f"input {i} is out of range")
    if i % 17 == 5 and not os.path.exists(f"{marker}-{i}"):
        open(f"{marker}-{i}", "w").close()
        raise ConnectionError(f"flaky service for {i}")
    return i * i


def hang(i: int) -> int:
    import time
    time.sleep(120)
    return i


def double(x: int) -> int:
    return 2 * x


def wait_for(condition, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.05)


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="deploy-screens-"))
    os.environ.update(DEPLOY_HOME=str(home), DEPLOY_CONFIG=str(home / "none.toml"),
                      DEPLOY_PROGRESS="false", DEPLOY_LEASE_SECONDS="3",
                      DEPLOY_HEARTBEAT_SECONDS="0.5")
    sys.path.insert(0, str(ROOT))
    import deploy
    from deploy.environment import LocalAsync
    from deploy.jobdir import layout

    LocalAsync("workstation", num_workers=4).save()
    from deploy.environments.ssh.cluster import SshCluster   # saved only: no host is contacted
    SshCluster("lab", hosts=["alice@node1", "alice@node2:2222"], workers_per_host=8,
               additional_packages=["numpy"], forward_env=["WANDB_API_KEY"]).save()
    rng = random.Random(4)
    marker = str(home / "flaky")
    params = [{"seconds": rng.choice([0.02, 0.04, 0.08]) * rng.uniform(0.5, 2.5), "i": i,
               "marker": marker} for i in range(240)]
    features = deploy.map_job.create(work, params, name="features", chunk_size=4, max_retries=1,
                                     environment=LocalAsync("workstation", num_workers=4))
    time.sleep(1.0)                       # let every worker take work, then kill one of them
    claims = sorted(features._store.list(layout.CLAIMS))
    owner = features._store.get(f"{layout.CLAIMS}/{claims[-1]}").decode()
    pid = json.loads(features._store.get(layout.heartbeat(owner)))["pid"]
    os.kill(pid, signal.SIGKILL)
    print("features:", features.wait(timeout=300))
    print("timeline:", features.plot(str(out / "timeline.png")))

    million = deploy.map_job.create(double, [{"x": i} for i in range(1_000_000)], name="million",
                                    environment=LocalAsync("workstation", num_workers=2))
    print("million:", million.wait(timeout=600))
    print("timeline:", million.plot(str(out / "timeline-million.png")))

    stopped = deploy.map_job.create(hang, [{"i": i} for i in range(6)], name="stopped", chunk_size=1,
                                    environment=LocalAsync("workstation", num_workers=2))
    wait_for(lambda: stopped.get_status() == "Running")
    time.sleep(1.5)
    stopped.cancel()
    running = deploy.map_job.create(work, [{"seconds": 0.5, "i": 1000 + i, "marker": marker}
                                           for i in range(400)], name="nightly-sweep",
                                    chunk_size=1, environment=LocalAsync("workstation", num_workers=2))
    wait_for(lambda: running.get_status() and running._counts().get("Completed", 0) >= 12)

    server = subprocess.Popen([sys.executable, "-m", "deploy.cli", "dashboard", "--port", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    try:
        url = server.stdout.readline().split(": ", 1)[1].strip().rstrip("/")
        shoot(url, out)
    finally:
        server.terminate()
        server.wait()
        running.cancel()
        shutil.rmtree(home, ignore_errors=True)


def shoot(url: str, out: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,400",
                "--hide-scrollbars"):
        options.add_argument(arg)
    options.binary_location = "/usr/bin/chromium"
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    text = "const e = document.querySelector(arguments[0]); return e ? e.textContent : ''"
    try:
        driver.get(url + "/")
        WebDriverWait(driver, 60).until(lambda d: "million" in d.execute_script(text, "#jobs"))
        time.sleep(1.5)
        driver.save_screenshot(str(out / "dashboard-jobs.png"))
        driver.set_window_size(1280, 1450)
        driver.get(url + "/#/job/features")
        WebDriverWait(driver, 60).until(lambda d: "tasks" in d.execute_script(text, "#timeline-legend")
                                        and d.execute_script(text, "#page-info"))
        Select(driver.find_element(By.ID, "page-size")).select_by_value("10")
        WebDriverWait(driver, 30).until(lambda d: d.execute_script(text, "#page-info").startswith("rows 1–10 "))
        driver.execute_script("document.querySelector('#metrics tr[data-task=\"7\"] .link').click()")
        WebDriverWait(driver, 30).until(lambda d: d.execute_script(text, "#task-log"))
        driver.execute_script("window.scrollTo(0, 0)")
        time.sleep(0.5)
        driver.save_screenshot(str(out / "dashboard-job.png"))
        driver.set_window_size(1280, 760)
        driver.get(url + "/#/environments")
        WebDriverWait(driver, 30).until(lambda d: "workstation" in d.execute_script(text, "#environments"))
        driver.save_screenshot(str(out / "dashboard-environments.png"))
    finally:
        driver.quit()
    for name in ("dashboard-jobs.png", "dashboard-job.png", "dashboard-environments.png"):
        print("screenshot:", out / name)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "images")
