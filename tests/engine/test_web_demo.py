"""demo/app.py in a real browser: the Gradio page served on a loopback port by a tiny random
GLIP, driven by Selenium with headless Chromium (Debian's chromium and chromium-driver, which
tools/install.sh installs). The screenshot goes to $GLIP_WEB_SCREENSHOT (default tmp_path)."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

ROOT = Path(__file__).resolve().parents[2]
CONFIG = "configs/quick_schedules/glip_tiny.yaml"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
CATEGORIES = ["red circle", "blue square"]
START_TIMEOUT_S = 120  # importing torch, detectron2 and Gradio on a busy 2-core CI machine
RUN_TIMEOUT_S = 60

pytestmark = pytest.mark.skipif(
    not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)),
    reason="needs Chromium and its driver (/usr/bin/chromium, /usr/bin/chromedriver: Debian's "
    "chromium and chromium-driver, installed by tools/install.sh when run as root)",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app's URL; the app runs as a subprocess, as `make web` starts it."""
    folder = tmp_path_factory.mktemp("web")
    port = _free_port()
    command = [
        sys.executable,
        "demo/app.py",
        "--config-file",
        CONFIG,
        "--port",
        str(port),
        "--confidence-threshold",
        "0",
        "--examples",
        "1",
        # Random weights: keep every box (the model's own pre-NMS threshold too) so the
        # table has rows.
        "--opts",
        "MODEL.DEVICE",
        "cpu",
        "MODEL.ATSS.INFERENCE_TH",
        "0.0",
    ]
    env = dict(os.environ, GRADIO_TEMP_DIR=str(folder / "gradio"), HF_HUB_OFFLINE="1")
    log_path = folder / "app.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"demo/app.py exited ({process.returncode}):\n{log_path.read_text()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"demo/app.py did not serve {url}:\n{log_path.read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument("--window-size=1400,1400")
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _image_file(folder: Path) -> Path:
    """A grey PNG with a red circle and a blue square."""
    image = np.full((160, 200, 3), 200, np.uint8)
    cv2.circle(image, (60, 80), 30, (40, 40, 220), -1)
    cv2.rectangle(image, (120, 50), (180, 110), (225, 80, 40), -1)
    path = folder / "shapes.png"
    cv2.imwrite(str(path), image)
    return path


def _status(driver) -> str:
    return driver.find_element(By.CSS_SELECTOR, "#status textarea").get_property("value")


def _run_and_wait_for_status(driver, previous: str) -> str:
    driver.find_element(By.CSS_SELECTOR, "#run").click()
    WebDriverWait(driver, RUN_TIMEOUT_S).until(lambda d: _status(d) not in ("", previous))
    return _status(driver)


def test_web_demo_detects_in_the_browser(server, browser, tmp_path):
    screenshot = Path(os.environ.get("GLIP_WEB_SCREENSHOT") or tmp_path / "web_demo.png")
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    wait = WebDriverWait(browser, RUN_TIMEOUT_S)
    browser.get(server)
    try:
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#run"))
        assert "glip_swin_t.yaml" in browser.page_source  # how to load official weights

        # A file that is not an image.
        bad = tmp_path / "notes.png"
        bad.write_text("not an image")
        browser.find_element(By.CSS_SELECTOR, "#image input[type=file]").send_keys(str(bad))
        categories = browser.find_element(By.CSS_SELECTOR, "#categories textarea")
        categories.send_keys(", ".join(CATEGORIES))
        status = _run_and_wait_for_status(browser, "")
        assert "not an image" in status, status

        # An image without a prompt.
        browser.find_element(By.CSS_SELECTOR, "#image button[aria-label='Clear']").click()
        # WebElement.clear() fires no input event, so Gradio would keep the old value.
        categories.send_keys(Keys.CONTROL, "a")
        categories.send_keys(Keys.BACKSPACE)
        browser.find_element(By.CSS_SELECTOR, "#image input[type=file]").send_keys(
            str(_image_file(tmp_path))
        )
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#preview img"))
        status = _run_and_wait_for_status(browser, status)
        assert "Type at least one category" in status, status

        categories.send_keys(", ".join(CATEGORIES))
        status = _run_and_wait_for_status(browser, status)
        assert "detection(s)" in status, status
        rows = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#detections tbody tr"))
        table = browser.find_element(By.CSS_SELECTOR, "#detections").text
        assert rows and all(name in table for name in CATEGORIES), table
        picture = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#picture img"))
        assert picture[0].get_attribute("src")
        assert wait.until(
            lambda d: d.execute_script("return arguments[0].naturalWidth", picture[0])
        )
        assert browser.find_elements(By.CSS_SELECTOR, "#json a"), "no COCO json download"
    finally:
        browser.save_screenshot(str(screenshot))
