// The manage page: sign in at Rehive from the browser, then read and act on /manage/api/.
// Everything that comes from an event or from Rehive is put on the page with textContent, never
// as HTML; the token lives in sessionStorage only (this tab), never in a URL, a cookie or a log.
"use strict";

(function () {
  const config = document.body.dataset;
  const REHIVE = config.rehiveApiUrl; // ends with "/"
  const API = config.api; // "/manage/api/"
  const LOCAL = config.localMode === "true";
  const POLL_MS = 3000;
  const PAGE_SIZE = 20;
  const STATES = ["received", "processing", "done", "failed", "dead"];
  const REPLAYABLE = ["failed", "dead", "done"];
  const TOKEN_KEY = "manage.token";
  const USER_KEY = "manage.user";
  const OWN_LOGIN_KEY = "manage.own-login"; // we logged in ourselves, so we may log out

  const $ = (id) => document.getElementById(id);
  const view = { page: 1, status: "", event: "", selected: null, seen: new Set(), first: true, timer: null };

  // -- small helpers ---------------------------------------------------------------------------

  function text(id, value) {
    $(id).textContent = value === null || value === undefined || value === "" ? "—" : String(value);
  }

  function show(id, visible) {
    $(id).hidden = !visible;
  }

  function message(id, value, kind) {
    const node = $(id);
    node.textContent = value || "";
    node.hidden = !value;
    node.classList.toggle("error", kind === "error");
  }

  function cell(value, className) {
    const td = document.createElement("td");
    td.textContent = value === null || value === undefined ? "" : String(value);
    if (className) td.className = className;
    return td;
  }

  function badge(status) {
    const span = document.createElement("span");
    span.className = "badge " + (STATES.includes(status) ? status : "");
    span.textContent = status;
    return span;
  }

  function when(iso) {
    if (!iso) return "—";
    const date = new Date(iso);
    const today = new Date().toDateString() === date.toDateString();
    const time = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
    return today ? time : date.toLocaleDateString() + " " + time;
  }

  function masked(token) {
    return token.length > 8 ? "…" + token.slice(-4) : "…";
  }

  function token() {
    return sessionStorage.getItem(TOKEN_KEY);
  }

  async function call(url, method, body, authToken) {
    const headers = { Accept: "application/json" };
    if (authToken) headers.Authorization = "Token " + authToken;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(url, {
      method: method,
      headers: headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "omit",
      referrerPolicy: "no-referrer",
    });
    let json = null;
    try {
      json = await response.json();
    } catch (error) {
      json = null;
    }
    return { status: response.status, ok: response.ok, body: json };
  }

  function errorOf(answer) {
    const text = answer.body && typeof answer.body.message === "string" ? answer.body.message : "";
    return (text || "HTTP " + answer.status).slice(0, 300);
  }

  // Our API; a 401 or 403 ends the session with the reason.
  async function api(method, path, body) {
    const answer = await call(API + path, method, body, token());
    if (answer.status === 401 || answer.status === 403) {
      const reason = answer.status === 403
        ? "This account may not manage the service: " + errorOf(answer)
        : "Your session ended (" + errorOf(answer) + "). Sign in again.";
      signOut(reason, false);
      throw new Error(reason);
    }
    return answer;
  }

  function rehive(method, path, body, authToken) {
    return call(REHIVE + path, method, body, authToken);
  }

  // -- signing in and out ----------------------------------------------------------------------

  function showSignIn(reason) {
    show("sign-in", true);
    show("app", false);
    show("who", false);
    show("sign-out", false);
    message("login-error", reason, "error");
    $("login-password").value = "";
  }

  function signOut(reason, logOutAtRehive) {
    const old = token();
    if (old && logOutAtRehive && sessionStorage.getItem(OWN_LOGIN_KEY) === "yes") {
      rehive("POST", "auth/logout/", {}, old).catch(() => {}); // a pasted token is left alone
    }
    sessionStorage.removeItem(TOKEN_KEY);
    sessionStorage.removeItem(USER_KEY);
    sessionStorage.removeItem(OWN_LOGIN_KEY);
    clearTimeout(view.timer);
    view.timer = null;
    showSignIn(reason);
  }

  async function login(event) {
    event.preventDefault();
    message("login-error", "");
    $("login-submit").disabled = true;
    const user = $("login-user").value.trim();
    try {
      const answer = await rehive("POST", "auth/login/", {
        user: user,
        company: $("login-company").value.trim(),
        password: $("login-password").value,
      });
      const data = answer.body && answer.body.data;
      if (!answer.ok || !data || typeof data.token !== "string") {
        message("login-error", "Rehive refused the sign-in: " + errorOf(answer), "error");
        return;
      }
      begin(data.token, user, true);
    } catch (error) {
      message("login-error", "Could not reach Rehive from this browser (it may refuse browser logins). " +
        "Paste a token instead.", "error");
      $("paste").open = true;
    } finally {
      $("login-submit").disabled = false;
      $("login-password").value = "";
    }
  }

  function useToken(event) {
    event.preventDefault();
    const value = $("token-input").value.trim();
    $("token-input").value = "";
    if (value) begin(value, "a pasted token", false);
  }

  async function begin(newToken, who, ownLogin) {
    sessionStorage.setItem(TOKEN_KEY, newToken);
    sessionStorage.setItem(USER_KEY, who);
    sessionStorage.setItem(OWN_LOGIN_KEY, ownLogin ? "yes" : "no");
    await start();
  }

  async function start() {
    if (!token()) {
      showSignIn("");
      return;
    }
    try {
      await refreshStatus();
    } catch (error) {
      return; // api() already showed the sign-in form with the reason
    }
    show("sign-in", false);
    show("app", true);
    text("who", "Signed in as " + (sessionStorage.getItem(USER_KEY) || "?"));
    show("who", true);
    show("sign-out", true);
    loadSettings();
    poll();
  }

  // -- status ----------------------------------------------------------------------------------

  async function refreshStatus() {
    const answer = await api("GET", "status/");
    if (!answer.ok) {
      message("app-error", "Could not read the status: " + errorOf(answer), "error");
      return;
    }
    message("app-error", "");
    const data = answer.body.data;
    text("company-name", data.company);
    text("mode", data.mode === "single" ? "single company" : data.mode);
    $("mode").title = data.mode === "single" ? "The service's token comes from REHIVE_ADMIN_TOKEN" : "";
    text("active-since", data.active_since ? when(data.active_since) : "— (configured, not activated)");
    const tokenNames = { valid: "accepted by Rehive", invalid: "REFUSED by Rehive", unknown: "unknown (Rehive unreachable)" };
    text("token-status", tokenNames[data.token_status] || data.token_status);
    $("token-status").className = data.token_status === "invalid" ? "error-text" : "";
    text("webhook-url", data.webhook_url);
    renderCounts(data.counts);
    renderWebhooks(data.webhooks, data.webhooks_error, data.webhook_url);
  }

  function renderCounts(counts) {
    const box = $("counts");
    box.replaceChildren();
    for (const state of STATES) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "count " + state + (view.status === state ? " active" : "");
      const number = document.createElement("strong");
      number.textContent = String(counts[state] || 0);
      const label = document.createElement("span");
      label.textContent = state;
      button.append(number, label);
      button.title = "Show only " + state + " events";
      button.addEventListener("click", () => setFilter(view.status === state ? "" : state));
      box.append(button);
    }
    const dead = counts.dead || 0;
    $("replay-dead").disabled = dead === 0;
    $("replay-dead").textContent = dead ? "Replay all dead (" + dead + ")" : "Replay all dead";
  }

  function renderWebhooks(hooks, error, url) {
    const list = $("webhooks");
    list.replaceChildren();
    message("webhooks-error", error ? error + " The inbox below works regardless." : "");
    if (!hooks) return;
    if (!hooks.length) {
      const item = document.createElement("li");
      item.className = "muted";
      item.textContent = "None: Rehive sends us nothing yet. Add a webhook for " + url + " in Rehive.";
      list.append(item);
    }
    for (const hook of hooks) {
      const item = document.createElement("li");
      const name = document.createElement("code");
      name.textContent = hook.event;
      const state = document.createElement("span");
      state.className = hook.enabled ? "on" : "off";
      state.textContent = hook.enabled ? "enabled" : "disabled";
      item.append(name, state);
      list.append(item);
    }
  }

  // -- the inbox -------------------------------------------------------------------------------

  function setFilter(status) {
    view.status = status;
    $("filter-status").value = status;
    view.page = 1;
    refreshEvents();
    refreshStatus().catch(() => {});
  }

  async function refreshEvents() {
    const query = new URLSearchParams({ page: String(view.page), page_size: String(PAGE_SIZE) });
    if (view.status) query.set("status", view.status);
    if (view.event) query.set("event", view.event);
    const answer = await api("GET", "events/?" + query.toString());
    if (answer.status === 404 && view.page > 1) { // the page emptied meanwhile
      view.page -= 1;
      return refreshEvents();
    }
    if (!answer.ok) {
      message("inbox-message", "Could not read the events: " + errorOf(answer), "error");
      return;
    }
    message("inbox-message", "");
    renderEvents(answer.body.data);
    text("live", "Live · updated " + new Date().toLocaleTimeString());
  }

  function renderEvents(page) {
    const body = $("events");
    body.replaceChildren();
    const names = new Set();
    for (const row of page.results) {
      const key = row.id + "\u0000" + row.status;
      const tr = document.createElement("tr");
      tr.dataset.id = row.id;
      tr.tabIndex = 0;
      if (!view.first && !view.seen.has(key)) tr.classList.add("new");
      view.seen.add(key);
      if (row.id === view.selected) tr.classList.add("selected");
      const received = cell(when(row.received_at));
      received.title = row.received_at;
      const name = cell(row.event);
      const id = document.createElement("div");
      id.className = "mono muted small";
      id.textContent = row.id;
      name.append(id);
      const state = document.createElement("td");
      state.append(badge(row.status));
      // A done event keeps the error of an earlier attempt: show it, but not as a current failure.
      const error = row.status === "done" && row.last_error
        ? cell("earlier: " + row.last_error, "old-error-cell")
        : cell(row.last_error || "", "error-cell");
      tr.append(received, name, state, cell(row.attempts, "num"), error);
      tr.addEventListener("click", () => select(row.id));
      tr.addEventListener("keydown", (event) => { if (event.key === "Enter") select(row.id); });
      body.append(tr);
      names.add(row.event);
    }
    view.first = false;
    const list = $("event-names");
    for (const name of names) {
      if (![...list.options].some((option) => option.value === name)) {
        const option = document.createElement("option");
        option.value = name;
        list.append(option);
      }
    }
    show("no-events", page.count === 0);
    $("no-events").textContent = view.status || view.event
      ? "No events match these filters."
      : "No events yet. They appear here as Rehive delivers them.";
    const start = page.count ? (view.page - 1) * PAGE_SIZE + 1 : 0;
    const end = (view.page - 1) * PAGE_SIZE + page.results.length;
    text("page-info", page.count ? start + "–" + end + " of " + page.count : "");
    $("previous").disabled = !page.previous;
    $("next").disabled = !page.next;
  }

  // -- one event -------------------------------------------------------------------------------

  async function select(id) {
    view.selected = id;
    for (const tr of $("events").children) tr.classList.toggle("selected", tr.dataset.id === id);
    message("replay-message", "");
    await refreshDetail();
  }

  async function refreshDetail() {
    if (view.selected === null) return;
    const answer = await api("GET", "events/" + encodeURIComponent(view.selected) + "/");
    if (!answer.ok) {
      show("detail-body", false);
      text("detail-empty", "Could not read the event: " + errorOf(answer));
      show("detail-empty", true);
      return;
    }
    const event = answer.body.data;
    show("detail-empty", false);
    show("detail-body", true);
    text("d-id", event.id);
    text("d-event", event.event);
    const status = $("d-status");
    status.className = "badge " + event.status;
    status.textContent = event.status;
    text("d-attempts", event.attempts);
    text("d-received", when(event.received_at));
    text("d-updated", when(event.updated_at));
    text("d-next", event.next_attempt_at ? when(event.next_attempt_at)
      : event.lease_expires_at ? "running (lease until " + when(event.lease_expires_at) + ")" : null);
    text("d-error-label", event.status === "done" && event.last_error ? "Earlier error" : "Last error");
    text("d-error", event.last_error);
    $("d-error").classList.toggle("muted", event.status === "done");
    $("d-data").textContent = JSON.stringify(event.data, null, 2);
    $("d-traceback").textContent = event.traceback || "";
    show("d-traceback-box", Boolean(event.traceback));
    const replay = $("replay");
    replay.disabled = !REPLAYABLE.includes(event.status);
    replay.title = replay.disabled ? "Only failed, dead or done events are replayed" : "Run this event's handlers again";
  }

  async function replaySelected() {
    $("replay").disabled = true;
    const answer = await api("POST", "events/" + encodeURIComponent(view.selected) + "/replay/");
    message("replay-message", answer.ok ? "Put back to received: it runs again in a moment." : errorOf(answer),
      answer.ok ? "" : "error");
    await Promise.all([refreshDetail(), refreshEvents(), refreshStatus()]);
  }

  async function replayDead() {
    $("replay-dead").disabled = true;
    const answer = await api("POST", "events/replay-dead/");
    message("inbox-message", answer.ok
      ? answer.body.data.replayed + " dead event(s) put back to received."
      : "Replay failed: " + errorOf(answer), answer.ok ? "" : "error");
    await Promise.all([refreshEvents(), refreshStatus(), refreshDetail()]);
  }

  // -- settings --------------------------------------------------------------------------------

  async function loadSettings() {
    const answer = await api("GET", "settings/");
    if (answer.ok) $("savings-percent").value = String(answer.body.data.savings_percent);
  }

  async function saveSettings(event) {
    event.preventDefault();
    const value = Number($("savings-percent").value);
    const answer = await api("PATCH", "settings/", { savings_percent: value });
    message("settings-message", answer.ok
      ? "Saved: " + answer.body.data.savings_percent + " % from the next credit on."
      : "Not saved: " + errorOf(answer), answer.ok ? "" : "error");
    if (answer.ok) $("savings-percent").value = String(answer.body.data.savings_percent);
  }

  // -- polling ---------------------------------------------------------------------------------

  async function poll() {
    clearTimeout(view.timer);
    if (!token()) return;
    try {
      if (!document.hidden) await Promise.all([refreshEvents(), refreshStatus(), refreshDetail()]);
    } catch (error) {
      if (!token()) return; // signed out
      text("live", "Offline · retrying");
    }
    if (token()) view.timer = setTimeout(poll, POLL_MS);
  }

  // -- try the flow (local mode) ---------------------------------------------------------------

  const trial = { alice: null, credit: null };

  function out(id, value, kind) {
    const node = $(id);
    node.textContent = value;
    node.className = "out " + (kind || "");
  }

  async function tryLogin() {
    const answer = await rehive("POST", "auth/login/", {
      user: "alice@demo.test", company: config.company || "demo", password: "alice-pass-123",
    });
    if (!answer.ok) return out("try-login-out", "refused: " + errorOf(answer), "bad");
    trial.alice = answer.body.data.token;
    out("try-login-out", "Rehive gave alice a token " + masked(trial.alice) + " (step A)", "good");
    $("try-custom").disabled = false;
    $("try-credit").disabled = false;
  }

  async function tryCustom() {
    const answer = await call("/custom/transactions/?page_size=5", "GET", undefined, trial.alice);
    if (!answer.ok) return out("try-custom-out", answer.status + ": " + errorOf(answer), "bad");
    const data = answer.body.data;
    // A user sees Rehive's user-side fields only: no `user`, no partner's email (issue 9).
    const fields = data.results.length ? Object.keys(data.results[0]).length : 0;
    out("try-custom-out", "200: " + data.results.length + " of her " + data.count +
      " transactions, " + fields + " fields each, only her own (steps B–D)", "good");
  }

  async function tryCredit() {
    $("try-credit").disabled = true;
    out("try-event-out", "");
    out("try-savings-out", "");
    const answer = await rehive("POST", "admin/transactions/credit/", {
      user: "alice@demo.test", amount: 1000, currency: "USD", status: "Complete",
    }, token());
    $("try-credit").disabled = false;
    if (!answer.ok) return out("try-credit-out", "refused: " + errorOf(answer), "bad");
    trial.credit = answer.body.data;
    out("try-credit-out", "credit " + trial.credit.id.slice(0, 8) + "… is " + trial.credit.status, "good");
    watchEvent(trial.credit);
  }

  async function findEventOf(credit) {
    const answer = await api("GET", "events/?event=transaction.execute&page_size=10");
    for (const row of answer.ok ? answer.body.data.results : []) {
      const detail = await api("GET", "events/" + encodeURIComponent(row.id) + "/");
      if (detail.ok && detail.body.data.data && detail.body.data.data.id === credit.id) return detail.body.data;
    }
    return null;
  }

  async function watchEvent(credit) {
    out("try-event-out", "waiting for the webhook…");
    for (let tries = 0; tries < 40 && trial.credit === credit; tries += 1) {
      const event = await findEventOf(credit);
      if (event) {
        refreshEvents();
        refreshStatus().catch(() => {});
        out("try-event-out", "event " + event.id.slice(0, 8) + "… is " + event.status +
          " after " + event.attempts + " attempt(s)", event.status === "done" ? "good" : "");
        if (event.status === "done") {
          select(event.id);
          return watchSavings(credit);
        }
      }
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }

  async function watchSavings(credit) {
    const settings = await api("GET", "settings/");
    const percent = settings.ok ? settings.body.data.savings_percent : 0;
    const share = Math.floor((credit.amount * percent) / 100);
    if (!share) return out("try-savings-out", "auto-savings is " + percent + " %: nothing to move (see Settings)");
    const user = credit.user && credit.user.id;
    const accounts = await rehive("GET", "admin/accounts/?user=" + encodeURIComponent(user) + "&name=savings",
      undefined, token());
    const account = accounts.ok && accounts.body.data.results[0];
    if (!account) return out("try-savings-out", "no savings account yet", "bad");
    const legs = await rehive("GET", "admin/transactions/?account=" + encodeURIComponent(account.reference) +
      "&tx_type=credit&page_size=50", undefined, token());
    const moved = legs.ok && legs.body.data.results.find((tx) => tx.amount === share);
    out("try-savings-out", moved
      ? "moved " + (share / 100).toFixed(2) + " USD (" + percent + " %) to savings account " + account.reference
      : "no transfer of " + share + " found yet", moved ? "good" : "bad");
  }

  // -- wiring ----------------------------------------------------------------------------------

  text("rehive-url", REHIVE);
  $("login-company").value = config.company || "";
  $("login-form").addEventListener("submit", login);
  $("token-form").addEventListener("submit", useToken);
  $("sign-out").addEventListener("click", () => signOut("", true));
  $("filter-status").addEventListener("change", (event) => setFilter(event.target.value));
  $("filters").addEventListener("submit", (event) => event.preventDefault());
  $("filter-event").addEventListener("change", (event) => {
    view.event = event.target.value.trim();
    view.page = 1;
    refreshEvents();
  });
  $("previous").addEventListener("click", () => { view.page = Math.max(1, view.page - 1); refreshEvents(); });
  $("next").addEventListener("click", () => { view.page += 1; refreshEvents(); });
  $("replay").addEventListener("click", replaySelected);
  $("replay-dead").addEventListener("click", replayDead);
  $("settings-form").addEventListener("submit", saveSettings);
  if (LOCAL) {
    $("try-login").addEventListener("click", tryLogin);
    $("try-custom").addEventListener("click", tryCustom);
    $("try-credit").addEventListener("click", tryCredit);
  }
  start();
})();
