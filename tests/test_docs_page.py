"""/docs works offline: in a real headless Chromium that can resolve no host but the server's,
Swagger UI renders every operation and the page requests nothing from anywhere else.

The browser is the `chrome` fixture of tests/conftest.py (skipped without Chromium, unless
VAE_REQUIRE_BROWSER=1 as in CI, which makes it fail instead).
"""

from __future__ import annotations

import json
import re
import urllib.request
from urllib.parse import urlsplit


from service.app import create_app
from service.settings import Settings



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


def test_swagger_ui_renders_every_operation_offline(chrome, requested_urls, browser_host, model_dir, live_server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _, port, base = live_server(model_dir)
    with urllib.request.urlopen(f"{base}/openapi.json", timeout=10) as response:
        document = json.load(response)
    expected = sum(len(item) for item in document["paths"].values())

    chrome.get(f"http://{browser_host}:{port}/docs")
    WebDriverWait(chrome, 60).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock")) >= expected)
    assert len(chrome.find_elements(By.CSS_SELECTOR, ".opblock")) == expected
    assert document["info"]["title"] in chrome.find_element(By.CSS_SELECTOR, ".info .title").text
    assert not chrome.find_elements(By.CSS_SELECTOR, ".errors-wrapper")

    requested = requested_urls()
    paths = {urlsplit(url).path for url in requested}
    assert {"/docs", "/docs-assets/swagger-ui-bundle.js", "/docs-assets/swagger-ui.css",
            "/docs/openapi-3.0.json"} <= paths, requested  # the log saw the page's own requests
    elsewhere = sorted(url for url in requested
                       if not url.startswith("data:") and urlsplit(url).hostname != browser_host)
    assert elsewhere == []
    severe = [entry["message"] for entry in chrome.get_log("browser") if entry["level"] == "SEVERE"]
    assert severe == []
