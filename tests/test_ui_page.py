"""The results page at /ui: served from the server alone under a strict Content-Security-Policy, off
with VAE_UI=0, behind the token when one is set (a sign-in form sets an HttpOnly session cookie that
counts only with the page's X-VAE-UI header), and, in a real headless Chromium that can reach no
other host, showing for an uploaded digit the score POST /models/{name}/anomaly gives it and its
heatmap.

The browser test needs Chromium and its driver (see the `chrome` fixture in conftest.py).
"""

from __future__ import annotations

import base64
import io
import json
import re
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from PIL import Image

from service.app import create_app
from service.http.auth import SESSION_COOKIE, SESSION_SECONDS, session_cookie
from service.settings import Settings

TOKEN = "s3cret-for-the-page"
ASSETS = {"/ui/ui.css": "text/css", "/ui/ui.js": "text/javascript"}


def test_the_page_and_its_assets_come_from_the_server_under_a_strict_policy(model_dir, asgi_client):
    client = asgi_client(create_app(Settings(model_dir=model_dir)))
    page = client.get("/ui")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy and "connect-src 'self'" in policy
    assert 'data-auth="none"' in page.text  # no token: no sign-out button
    urls = re.findall(r"""(?:src|href|action)\s*=\s*["']([^"']+)["']""", page.text)
    assert sorted(urls) == ["data:,", "ui/ui.css", "ui/ui.js"]  # relative, so they also work behind a path prefix
    texts = [page.text]
    for path, media_type in ASSETS.items():
        asset = client.get(path)
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(media_type), path
        texts.append(asset.text)
    for text in texts:
        assert re.findall(r"(?:https?:)?//[\w.-]+", text) == []  # no URL names another host
    assert client.get("/ui/missing.js").status_code == 404


def test_the_page_is_off_with_the_setting(model_dir, asgi_client):
    client = asgi_client(create_app(Settings(model_dir=model_dir, ui=False, api_token=TOKEN)))
    for path in ("/ui", "/ui/ui.js"):
        assert client.get(path).status_code == 404, path
    assert client.post("/ui/session", data={"token": TOKEN}).status_code == 404
    # Without the page there is no session: a cookie signed with the token opens nothing.
    cookie = {"cookie": f"{SESSION_COOKIE}={session_cookie(TOKEN)}", "x-vae-ui": "1"}
    assert client.get("/models", headers=cookie).status_code == 401


def test_with_a_token_the_page_needs_it_and_its_session_cookie_opens_only_what_the_token_does(
        model_dir, asgi_client):
    client = asgi_client(create_app(Settings(model_dir=model_dir, api_token=TOKEN)))
    refused = client.get("/ui")
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    assert 'name="token"' in refused.text and "ui.js" not in refused.text  # a sign-in form, not the page
    assert client.get("/ui", headers={"authorization": "Bearer nope"}).status_code == 401
    by_header = client.get("/ui", headers={"authorization": f"Bearer {TOKEN}"})
    assert by_header.status_code == 200 and 'data-auth="token"' in by_header.text

    wrong = client.post("/ui/session", data={"token": "nope"})
    assert wrong.status_code == 401 and "not the server&#x27;s token" in wrong.text
    assert SESSION_COOKIE not in client.client.cookies
    signed_in = client.post("/ui/session", data={"token": TOKEN})
    assert signed_in.status_code == 303 and signed_in.headers["location"] == "/ui"
    set_cookie = signed_in.headers["set-cookie"].lower()
    assert "httponly" in set_cookie and "samesite=strict" in set_cookie and "path=/" in set_cookie
    assert TOKEN not in set_cookie  # the cookie is a signature, never the token itself
    assert client.get("/ui").status_code == 200  # the client keeps the cookie, as a browser does

    # The cookie stands in for the token only with the page's header, which another site cannot send.
    assert client.get("/models").status_code == 401
    assert client.get("/models", headers={"x-vae-ui": "1"}).status_code == 200
    # An Authorization header is judged on its own, cookie or not.
    assert client.get("/models", headers={"x-vae-ui": "1", "authorization": "Bearer nope"}).status_code == 401

    assert client.request("DELETE", "/ui/session").status_code == 204
    assert SESSION_COOKIE not in client.client.cookies
    assert client.get("/ui").status_code == 401

    expired = session_cookie(TOKEN, now=time.time() - SESSION_SECONDS - 1)
    other = session_cookie("another token")
    forged = session_cookie(TOKEN).split(".")[0] + ".0"
    for value in (expired, other, forged, "", "²." + session_cookie(TOKEN).split(".")[1]):
        headers = {"cookie": f"{SESSION_COOKIE}={value}".encode(), "x-vae-ui": "1"}  # bytes: "²" is not ASCII
        assert client.get("/ui", headers=headers).status_code == 401, value
        assert client.get("/models", headers=headers).status_code == 401, value


def _digit_png(tmp_path: Path) -> tuple[bytes, Path]:
    """The first embedded MNIST test digit as an 8-bit grey PNG file."""
    from model.data.loading import load_raw

    _, test = load_raw("embedded", None)
    pixels = (test.x[0, 0] * 255).round().byte().numpy()  # (28, 28)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    path = tmp_path / "digit.png"
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue(), path


def _post(url: str, body: dict, token: str) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers={
        "content-type": "application/json", "authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


def test_the_page_scores_an_uploaded_digit_as_the_api_does_offline(chrome, requested_urls, browser_host, model_dir, live_server,
                                                                  tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    _, port, base = live_server(model_dir, VAE_API_TOKEN=TOKEN)
    png, path = _digit_png(tmp_path)
    # The page asks with seed 0: the score is an estimate from random importance samples.
    expected = _post(f"{base}/models/tiny/anomaly", {"images_png": [base64.b64encode(png).decode()], "seed": 0},
                     TOKEN)

    origin = f"http://{browser_host}:{port}"
    chrome.get(f"{origin}/ui")
    chrome.find_element(By.ID, "token").send_keys(TOKEN)
    chrome.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    wait = WebDriverWait(chrome, 60)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#model option[value=tiny]"))
    assert chrome.execute_script("return document.cookie") == ""  # HttpOnly: no script can read the session
    Select(chrome.find_element(By.ID, "model")).select_by_value("tiny")
    chrome.find_element(By.ID, "files").send_keys(str(path))

    result = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#results .result:not(:has(dl[hidden]))")
                        or d.find_elements(By.CSS_SELECTOR, "#results .error:not([hidden])"))[0]
    errors = [e.text for e in chrome.find_elements(By.CSS_SELECTOR, "#results .error:not([hidden])")]
    assert errors == []
    assert result.find_element(By.CSS_SELECTOR, ".name").text == "digit.png"
    score = result.find_element(By.CSS_SELECTOR, ".score")
    assert float(score.get_attribute("value")) == expected["scores"][0]  # the number itself, not a rounding
    assert score.text == f"{expected['scores'][0]:.2f}"
    assert float(result.find_element(By.CSS_SELECTOR, ".percentile").get_attribute("value")) == \
        expected["percentiles"][0]
    flag = result.find_element(By.CSS_SELECTOR, ".flag").text
    assert flag.startswith("anomalous" if expected["is_anomaly"][0] else "normal"), flag

    heatmap = result.find_element(By.CSS_SELECTOR, "figure.map:not([hidden]) img.heatmap")
    wait.until(lambda d: d.execute_script("return arguments[0].complete", heatmap))
    assert chrome.execute_script("return arguments[0].naturalWidth", heatmap) > 0
    assert chrome.execute_script("return arguments[0].naturalWidth", result.find_element(By.CSS_SELECTOR,
                                                                                           "img.input")) == 28

    requested = requested_urls()
    paths = {urlsplit(url).path for url in requested}
    assert {"/ui", "/ui/session", "/ui/ui.css", "/ui/ui.js", "/models", "/models/tiny",
            "/models/tiny/anomaly"} <= paths, requested  # the log saw the page's own requests
    elsewhere = sorted(url for url in requested
                       if not url.startswith("data:") and urlsplit(url).hostname != browser_host)
    assert elsewhere == []
    refusal = f"{origin}/ui - Failed to load resource: the server responded with a status of 401"  # the sign-in form
    severe = [entry["message"] for entry in chrome.get_log("browser")
              if entry["level"] == "SEVERE" and not entry["message"].startswith(refusal)]
    assert severe == []
