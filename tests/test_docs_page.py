"""/docs works offline: in a real headless Chromium that can resolve no host but the server's,
Swagger UI renders every operation and the page requests nothing from anywhere else.

Needs Chromium and its driver (Debian: `apt-get install chromium chromium-driver`). Without them the
browser test is skipped, unless VAE_REQUIRE_BROWSER=1 (as in CI), which makes it fail instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import urllib.request
from urllib.parse import urlsplit

import pytest

from service.app import create_app
from service.settings import Settings

HOST = "vae-docs.test"  # not a loopback name, so that Swagger UI behaves as it would when deployed


def test_the_page_loads_its_assets_from_the_server(model_dir, asgi_client):
    client = asgi_client(create_app(Settings(model_dir=model_dir)))
    page = client.get("/docs")
    assert page.status_code == 200
    urls = re.findall(r"""(?:src|href|url)\s*[=:]\s*["']([^"']+)["']""", page.text)
    assert sorted(urls) == ["/docs-assets/favicon-32x32.png", "/docs-assets/swagger-ui-bundle.js",
                            "/docs-assets/swagger-ui.css", "/docs/openapi-3.0.json"]
    assert '"validatorUrl": null' in page.text  # Swagger UI's default is the online validator.swagger.io
    for url in urls:
        assert client.get(url).status_code == 200, url
    assert client.get("/redoc").status_code == 404  # ReDoc's assets are not shipped, so it is off


def _browser() -> tuple[str, str]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    missing = [name for name, path in (("chromium", chromium), ("chromedriver", driver)) if path is None]
    if missing:
        reason = f"{' and '.join(missing)} not on PATH (Debian: apt-get install chromium chromium-driver)"
        if os.environ.get("VAE_REQUIRE_BROWSER") == "1":
            pytest.fail(f"VAE_REQUIRE_BROWSER=1, but {reason}")
        pytest.skip(reason)
    return chromium, driver


@pytest.fixture
def chrome(monkeypatch):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = _browser()
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must not look for drivers online
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--no-default-browser-check", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-default-apps", "--no-proxy-server",
                 # Every name but the server's fails to resolve: no request can leave this machine.
                 f"--host-resolver-rules=MAP {HOST} 127.0.0.1, MAP * ~NOTFOUND"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    browser = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    yield browser
    browser.quit()


def test_swagger_ui_renders_every_operation_offline(chrome, model_dir, live_server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _, port, base = live_server(model_dir)
    with urllib.request.urlopen(f"{base}/openapi.json", timeout=10) as response:
        document = json.load(response)
    expected = sum(len(item) for item in document["paths"].values())

    chrome.get(f"http://{HOST}:{port}/docs")
    WebDriverWait(chrome, 60).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock")) >= expected)
    assert len(chrome.find_elements(By.CSS_SELECTOR, ".opblock")) == expected
    assert document["info"]["title"] in chrome.find_element(By.CSS_SELECTOR, ".info .title").text
    assert not chrome.find_elements(By.CSS_SELECTOR, ".errors-wrapper")

    requested = set()
    for entry in chrome.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            requested.add(message["params"]["request"]["url"])
    paths = {urlsplit(url).path for url in requested}
    assert {"/docs", "/docs-assets/swagger-ui-bundle.js", "/docs-assets/swagger-ui.css",
            "/docs/openapi-3.0.json"} <= paths, requested  # the log saw the page's own requests
    elsewhere = sorted(url for url in requested
                       if not url.startswith("data:") and urlsplit(url).hostname != HOST)
    assert elsewhere == []
    severe = [entry["message"] for entry in chrome.get_log("browser") if entry["level"] == "SEVERE"]
    assert severe == []
