"""The web page in a real browser: Playwright for Python driving Debian's chromium, against a real `reverb serve`
with the tiny model. A key typed in, a streamed answer with its price and the credit left, a stopped answer, edit
and resend, conversations kept across a reload (the key only in the tab's session storage), the admin views with
real ledger rows, a CSV download whose rows are `reverb usage`'s, a key that is not an admin's seeing none of it,
and XSS through a model's answer, a key's name and a model's name rendered as text.

Screenshots of each view are saved under the test's tmp dir (their paths are printed), and also in
$REVERB_UI_SCREENSHOTS when it is set. The tests skip, loudly,
only where chromium or playwright is missing (`make install` installs both where it can).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from reverb.money import MICRO, format_money

from .conftest import Server, reverb

pytestmark = [pytest.mark.model, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
XSS_KEY = "<img src=x onerror=alert('key')>"
XSS_MODEL = "<img src=x onerror=alert('model')>"
ECHO = "<img src=x onerror=alert(1)>"
SLOW = 300_000   # ms: a deadline for a stuck test on a busy machine, never a performance claim


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("!!! playwright is not installed (make install): the browser tests are SKIPPED")
    if not CHROMIUM.exists():
        pytest.skip("!!! /usr/bin/chromium not found (apt-get install chromium; make install does it as root): "
                    "the browser tests are SKIPPED")
    pw = sync_playwright().start()
    try:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()
    finally:
        pw.stop()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    work = tmp_path_factory.mktemp("ui-browser")
    srv = Server(work, "--parallel", "2", "--log-bodies")   # bodies: what the page sent, read from the ledger
    with srv.ledger() as ledger:
        ledger.create_team("eng", 10 * MICRO)
        keys = {"ann": ledger.create_key("ann", 5 * MICRO, team="eng"),
                "boss": ledger.create_key("boss", MICRO, admin=True),
                XSS_KEY: ledger.create_key(XSS_KEY, MICRO)}
    srv.start()
    try:
        with srv.client(keys[XSS_KEY]) as http:   # real ledger rows under hostile names, and refusals by code
            assert http.post("/v1/chat/completions", json=chat("Hi", max_tokens=3)).status_code == 200
        with srv.client(keys["ann"]) as http:
            assert http.post("/v1/chat/completions", json=chat("Hi", model=XSS_MODEL)).status_code == 404
            assert http.get("/v1/admin/keys").status_code == 403
        shots = work / "screenshots"
        shots.mkdir()
        yield srv, keys, shots
    finally:
        srv.stop()
    with srv.ledger() as ledger:
        inv = ledger.invariant()
    assert inv["ok"], inv


def chat(content: str, **kw) -> dict:
    return {"model": "smollm2-135m", "messages": [{"role": "user", "content": content}], **kw}


class Page:
    """One browser context (fresh storage) signed in with ``key``; records page errors, CSP reports and dialogs."""

    def __init__(self, browser, srv: Server, key: str):
        self.context = browser.new_context(viewport={"width": 1280, "height": 860}, accept_downloads=True)
        self.page = p = self.context.new_page()
        p.set_default_timeout(SLOW)
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        p.on("pageerror", lambda e: self.errors.append(str(e)))
        p.on("console", lambda m: m.type == "error" and not m.text.startswith("Failed to load resource")
             and self.errors.append(m.text))
        p.on("dialog", self._dialog)
        self.requests: list[tuple[str, dict]] = []
        p.on("request", lambda r: self.requests.append((r.url, r.headers)))
        self.base = srv.base_url
        self.key = key
        p.goto(self.base + "/ui")
        p.fill("#key-input", key)
        p.click("#login-form button[type=submit]")
        p.wait_for_selector("#view-chat:not([hidden])")

    def _dialog(self, dialog):
        if dialog.type == "confirm" and dialog.message.startswith("Revoke"):
            dialog.accept()
        else:
            self.dialogs.append(dialog.message)   # an alert() would be script that ran: an XSS
            dialog.dismiss()

    def setting(self, field: str, value: str) -> None:
        p = self.page
        if p.is_hidden("#settings"):
            p.click("#toggle-settings")
        p.fill(f"#{field}", value)
        p.dispatch_event(f"#{field}", "change")

    def ask(self, text: str) -> dict:
        """Send ``text`` and wait for the answer's price; returns the last answer's stats."""
        p = self.page
        n = p.locator("#messages .msg.assistant").count()
        p.fill("#prompt", text)
        p.click("#send")
        return self.answer(n)

    def answer(self, index: int) -> dict:
        stats = self.page.locator("#messages .msg.assistant .stats").nth(index)
        stats.and_(self.page.locator("[data-price]")).wait_for()
        return stats.evaluate("e => ({...e.dataset, text: e.textContent})")

    def shot(self, shots: Path, name: str) -> Path:
        path = shots / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        print(f"screenshot: {path}")
        if os.environ.get("REVERB_UI_SCREENSHOTS"):   # also keep them where pytest's tmp rotation cannot reach
            keep = Path(os.environ["REVERB_UI_SCREENSHOTS"])
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, keep / path.name)
        return path

    def close(self) -> None:
        assert not self.errors, self.errors    # no script error, no CSP violation
        # Offline and same-origin: every request goes to this server (a download is a blob: URL); the key travels
        # only as a Bearer header, and no cookie is ever sent.
        assert all(url.startswith((self.base + "/", "blob:")) for url, _ in self.requests), self.requests
        assert not any("cookie" in headers for _, headers in self.requests)
        assert all(h.get("authorization", "Bearer ").startswith("Bearer ") for _, h in self.requests)
        assert any("authorization" in h for _, h in self.requests)
        assert not any(self.key in url for url, _ in self.requests)
        assert not self.dialogs, f"script from a hostile text ran: {self.dialogs}"
        self.context.close()


def row(srv: Server, request_id: str) -> dict:
    with srv.ledger() as ledger:
        return ledger.request(request_id)


def balance(srv: Server, name: str) -> str:
    with srv.ledger() as ledger:
        return format_money(next(k["balance"] for k in ledger.list_keys() if k["name"] == name and
                                 not k["revoked_at"]))


def test_chat_streams_prices_stops_edits_and_keeps_conversations(browser, site):
    srv, keys, shots = site
    ui = Page(browser, srv, keys["ann"])
    p = ui.page
    assert p.eval_on_selector_all("#model option", "os => os.map(o => o.value)") == ["smollm2-135m"]
    assert p.is_hidden("#nav a[data-view=spend]") and p.is_hidden("#nav a[data-view=keys]")
    ui.setting("max_tokens", "16")
    ui.setting("temperature", "0")   # greedy: an answer of several tokens, not a sampled early end
    ui.setting("seed", "7")
    ui.setting("system", "Answer in one line.")
    first = ui.ask("Name three colors.")
    got = row(srv, first["requestId"])
    sent = json.loads(got["body"])
    assert sent["messages"] == [{"role": "system", "content": "Answer in one line."},
                                {"role": "user", "content": "Name three colors."}]
    assert (sent["max_tokens"], sent["temperature"], sent["top_p"], sent["seed"], sent["stream"]) == (16, 0, 0.95, 7,
                                                                                                      True)
    assert got["status"] in ("completed", "cancelled") and got["key"] == "ann"
    assert first["price"] == format_money(got["price"]) and int(first["tokens"]) == got["completion_tokens"]
    assert int(first["pieces"]) == got["completion_tokens"] > 1      # streamed: one event per token
    assert float(first["tps"]) > 0 and float(first["ttft"]) > 0
    assert f"price {first['price']} credit" in first["text"]
    p.wait_for_function("b => document.querySelector('#credit').dataset.balance === b", arg=balance(srv, "ann"))
    ui.shot(shots, "chat")

    # Stop a running answer: the ledger charges what was streamed, and the page shows that price. The model may
    # end an answer on its own between the first words and the click: then the row says so, and the next try
    # (the conversation goes on) stops one that is still running.
    ui.setting("system", "")
    ui.setting("max_tokens", "1500")
    for attempt in range(1, 6):
        p.fill("#prompt", "Count from 1 to 1000, separated by commas." if attempt == 1 else "Go on counting.")
        p.click("#send")
        p.wait_for_function("() => { const b = [...document.querySelectorAll('#messages .msg.assistant .body')]"
                            ".pop(); return (b && b.textContent.length >= 6) || $stop.hidden }"
                            .replace("$stop", "document.querySelector('#stop')"))
        p.evaluate("document.querySelector('#stop').click()")   # a no-op if the answer has ended meanwhile
        stopped = ui.answer(attempt)
        got = row(srv, stopped["requestId"])
        assert stopped["price"] == format_money(got["price"]) and int(stopped["tokens"]) == got["completion_tokens"]
        if got["status"] == "cancelled":
            assert stopped["stopped"] == "true"
            break
        assert got["status"] == "completed" and "stopped" not in stopped, (got, stopped)   # the ledger's word
    assert got["status"] == "cancelled" and 0 < got["completion_tokens"] < 1500, got

    # Edit the first question and resend: the conversation is cut there and answered again.
    ui.setting("max_tokens", "12")
    p.locator("#messages .msg.user .edit").first.click()
    p.fill("#messages .msg.user textarea", "Name two animals.")
    p.click("#messages .msg.user .resend")
    p.wait_for_function("() => document.querySelectorAll('#messages .msg').length === 2")
    ui.answer(0)
    assert p.locator("#messages .msg.user .body").text_content() == "Name two animals."

    # A blocking answer's price comes from its x-reverb-price header.
    p.uncheck("#stream")
    p.dispatch_event("#stream", "change")
    blocking = ui.ask("Say yes.")
    assert blocking["price"] == format_money(row(srv, blocking["requestId"])["price"])

    # Conversations survive a reload; the key is only in the tab's session storage, never in local storage or a
    # cookie.
    p.reload()
    p.wait_for_selector("#view-chat:not([hidden])")
    assert p.locator("#messages .msg").count() == 4 and p.locator("#conv-list li").count() == 1
    assert keys["ann"] not in p.evaluate("JSON.stringify(localStorage)")
    assert p.evaluate("sessionStorage.getItem('reverb.key')") == keys["ann"]
    assert ui.context.cookies() == []
    ui.close()


def test_hostile_text_from_a_model_a_key_or_a_model_name_renders_as_text(browser, site):
    srv, keys, shots = site
    ui = Page(browser, srv, keys["ann"])
    p = ui.page
    ui.setting("temperature", "0")
    ui.setting("max_tokens", "24")
    ui.ask(f"Repeat exactly: {ECHO}")   # the tiny model, greedy, repeats the tag
    stored = json.loads(p.evaluate("localStorage.getItem('reverb.conversations')"))
    answer = stored[0]["messages"][-1]["content"]
    assert ECHO in answer, answer
    body = p.locator("#messages .msg.assistant .body").last
    assert ECHO in body.text_content()
    assert p.locator("#messages img, #messages script, #messages iframe").count() == 0

    # The same renderer over markdown with hostile links, markup and code, from the browser's own storage.
    hostile = ("**bold** [safe](https://example.com/a) [bad](javascript:alert(2)) <script>alert(3)</script> "
               "<iframe src=x></iframe>\n\n```html\n<img src=x onerror=alert(4)>\n```\n")
    p.evaluate("""text => {
        const list = JSON.parse(localStorage.getItem('reverb.conversations'));
        list.unshift({id: 'x', title: '<b>title</b>', model: 'smollm2-135m', settings: list[0].settings,
                      updated: Date.now(), messages: [{role: 'user', content: '<b>hi</b>'},
                                                      {role: 'assistant', content: text, stats: {}}]});
        localStorage.setItem('reverb.conversations', JSON.stringify(list));
    }""", hostile)
    p.reload()
    p.wait_for_selector("#view-chat:not([hidden])")
    links = p.eval_on_selector_all("#messages a", "as => as.map(a => [a.href, a.rel, a.target])")
    assert links == [["https://example.com/a", "noopener noreferrer nofollow", "_blank"]]
    assert p.locator("#messages script, #messages iframe, #messages img, #conv-list b").count() == 0
    text = p.locator("#messages").text_content()
    assert "javascript:alert(2)" in text and "<script>alert(3)</script>" in text and "<img src=x" in text
    assert p.locator("#messages strong").text_content() == "bold"
    assert p.locator("#messages .msg.user .body").text_content() == "<b>hi</b>"
    # Trusted Types: the page cannot turn a string into markup at all.
    assert p.evaluate("() => { try { document.body.innerHTML = '<b>x</b>'; return 'assigned' }"
                      " catch (e) { return e.name } }") == "TypeError"
    assert len(ui.errors) == 1 and "TrustedHTML" in ui.errors[0], ui.errors   # the browser reports the block
    ui.errors.clear()
    ui.close()

    admin = Page(browser, srv, keys["boss"])
    a = admin.page
    a.goto(srv.base_url + "/ui#keys")
    a.wait_for_selector("body[data-keys-loaded]")
    assert XSS_KEY in a.locator("#keys-table .key-name").all_text_contents()
    a.goto(srv.base_url + "/ui#spend")
    a.wait_for_selector("body[data-spend-loaded]")
    table = a.locator("#usage-table").text_content()
    assert XSS_KEY in table and "unknown:" + XSS_MODEL in table
    assert XSS_KEY in a.locator("#chart .legend").text_content()
    assert a.locator("#view-spend img, #view-keys img, #view-spend script").count() == 0
    admin.close()


def test_admin_views_show_the_ledger_and_manage_keys(browser, site, no_eos):
    srv, keys, shots = site
    ui = Page(browser, srv, keys["boss"])
    p = ui.page
    assert p.is_visible("#nav a[data-view=spend]")
    today = datetime.now(timezone.utc).date()

    p.click("#nav a[data-view=spend]")
    p.wait_for_selector("body[data-spend-loaded]")
    p.fill("#since", today.isoformat())
    p.fill("#until", today.isoformat())
    p.click("#spend-form button[type=submit]")
    p.wait_for_selector(f"body[data-spend-loaded^='{today}/{today}/']")
    with p.expect_download() as download:
        p.click("#csv")
    downloaded = Path(download.value.path()).read_text()
    cli = reverb("usage", "--db", str(srv.db), "--group-by", "day,key,model,team", "--format", "csv",
                 "--since", today.isoformat(), "--until", (today + timedelta(days=1)).isoformat())
    assert cli.returncode == 0, cli.stderr
    rows = list(csv.reader(io.StringIO(downloaded)))
    assert rows == list(csv.reader(io.StringIO(cli.stdout))) and len(rows) > 3
    ann = [r for r in csv.DictReader(io.StringIO(downloaded)) if r["key"] == "ann" and r["model"] == "smollm2-135m"]
    assert int(ann[0]["completed"]) + int(ann[0]["cancelled"]) >= 3
    assert p.locator("#chart svg rect[data-series]").count() >= 2
    assert {r["team"] for r in csv.DictReader(io.StringIO(downloaded))
            if r["key"] == "ann" and r["model"] == "smollm2-135m"} == {"eng"}     # the team's requests that ran
    for by, name in (("model", "smollm2-135m"), ("team", "eng"), ("key", "ann")):
        p.select_option("#spend-by", by)
        assert name in p.locator("#chart .legend").all_text_contents()[0]
        assert p.locator(f"#chart svg rect[data-series='{name}']").count() == 1    # one day, one bar part
    p.select_option("#measure", "tokens")
    tokens = sum(int(r["prompt_tokens"]) + int(r["completion_tokens"]) for r in csv.DictReader(io.StringIO(downloaded)))
    bars = p.eval_on_selector_all("#chart svg rect[data-series]", "rs => rs.map(r => Number(r.dataset.value))")
    assert sum(bars) == tokens
    assert p.locator("#usage-table tbody tr").count() == len(rows)   # the rows and a total
    ui.shot(shots, "spend")

    p.click("#nav a[data-view=keys]")
    p.wait_for_selector("body[data-keys-loaded]")
    ann_row = p.locator("#keys-table tbody tr", has=p.locator(".key-name", has_text="ann"))
    assert balance(srv, "ann") in ann_row.text_content() and "eng" in ann_row.text_content()
    assert "eng" in p.locator("#teams-table").text_content()
    assert today.isoformat() in ann_row.locator("td").nth(8).text_content()    # last use
    p.fill("#nk-name", "carol")
    p.fill("#nk-credit", "2")
    p.fill("#nk-rpm", "30")
    p.click("#create-key button[type=submit]")
    p.wait_for_selector("#new-key:not([hidden])")
    new_key = p.text_content("#new-key-value")
    with httpx.Client(base_url=srv.base_url, headers={"Authorization": f"Bearer {new_key}"}) as http:
        assert http.get("/v1/models").status_code == 200
    ui.shot(shots, "keys-created")
    p.click("#new-key-done")
    assert p.text_content("#new-key-value") == "" and p.is_hidden("#new-key")     # shown once
    carol = p.locator("#keys-table tbody tr", has=p.locator(".key-name", has_text="carol"))
    assert "30 req/min" in carol.text_content()
    carol.locator("input").fill("1.5")
    carol.locator(".topup").click()
    p.wait_for_function("() => [...document.querySelectorAll('#keys-table tbody tr')].some(r => "
                        "r.textContent.startsWith('carol') && r.children[2].textContent === '3.5')")
    assert balance(srv, "carol") == "3.5"
    carol.locator(".revoke").click()
    p.wait_for_selector("#keys-table tbody tr.revoked")
    with httpx.Client(base_url=srv.base_url, headers={"Authorization": f"Bearer {new_key}"}) as http:
        assert http.get("/v1/models").status_code == 401
    ui.shot(shots, "keys")

    # Live activity: a request running shows as running, with tokens per second, read from /metrics.
    p.click("#nav a[data-view=activity]")
    card = p.locator(".live .card[data-model='smollm2-135m']")
    card.wait_for()
    assert card.locator(".slots").text_content() == "0 / 2"
    stop = threading.Event()

    def run_one():
        with srv.client(keys["ann"]) as http, http.stream("POST", "/v1/chat/completions", json=chat(
                "Count from 1 to 1000, separated by commas.", stream=True, max_tokens=1500, temperature=0,
                    logit_bias=no_eos)) as r:   # it runs until stopped, never a quick answer the page could miss
            for _ in r.iter_bytes():
                if stop.is_set():
                    return
    worker = threading.Thread(target=run_one)
    worker.start()
    try:
        p.wait_for_function("() => document.querySelector(\".live .card[data-model='smollm2-135m'] .running\")"
                            ".textContent === '1'")
        p.wait_for_function("() => parseFloat(document.querySelector(\".live .card[data-model='smollm2-135m'] "
                            ".tps\").textContent) > 0")
        ui.shot(shots, "activity")
    finally:
        stop.set()
        worker.join()
    codes = p.locator("#refusals-table tbody td:first-child").all_text_contents()
    assert "model_not_found" in codes and "permission_denied" in codes
    ui.close()


def test_a_key_that_is_not_an_admins_sees_no_admin_view(browser, site):
    srv, keys, shots = site
    ui = Page(browser, srv, keys["ann"])
    p = ui.page
    assert p.is_hidden("#nav a[data-view=spend]")
    for view, error in (("spend", "#spend-error"), ("keys", "#keys-error"), ("activity", "#activity-error")):
        p.goto(f"{srv.base_url}/ui#{view}")
        p.wait_for_function(f"() => document.querySelector('{error}').textContent.includes('admin keys only')")
    assert p.locator("#usage-table tr, #keys-table tr, #refusals-table tr, .live .card").count() == 0
    with srv.client(keys["ann"]) as http:
        for path in ("/ui/api/usage?since=2026-01-01&until=2026-01-01", "/ui/api/last-use", "/ui/api/refusals",
                     "/v1/admin/keys"):
            assert http.get(path).status_code == 403, path
    ui.shot(shots, "not-admin")
    ui.close()


def test_the_page_needs_a_key_that_works(browser, site):
    srv, keys, shots = site
    context = browser.new_context()
    p = context.new_page()
    p.goto(srv.base_url + "/ui")
    p.fill("#key-input", "rk-not-a-key")
    p.click("#login-form button[type=submit]")
    p.wait_for_function("() => document.querySelector('#login-error').textContent.length > 0")
    assert "not accepted" in p.text_content("#login-error") and p.is_hidden("#view-chat")
    assert p.evaluate("sessionStorage.getItem('reverb.key')") is None
    p.screenshot(path=str(shots / "login.png"))
    context.close()
