// The web page's script: the token field, the action buttons (each behind
// a confirmation), the countdowns and the periodic refresh. Plain script,
// no build step; everything shown goes in through textContent.
"use strict";

(function () {
  const body = document.body;
  const refreshMS = Number(body.dataset.refreshMs) || 5000;
  const tokenKey = "tasker-sweeper.admin-token";
  const dialog = document.getElementById("confirm");
  const flash = document.getElementById("flash");
  let pending = null; // the action the open dialog confirms
  let renderedAt = 0; // the server's clock when #live was rendered, ms
  let loadedAt = 0; // the browser's clock then, ms

  // The token lives in this tab's session storage only.
  const tokenInput = document.getElementById("token");
  if (tokenInput) {
    tokenInput.value = sessionStorage.getItem(tokenKey) || "";
    tokenInput.addEventListener("input", function () {
      sessionStorage.setItem(tokenKey, tokenInput.value.trim());
    });
  }

  function say(text, kind) {
    flash.textContent = text;
    flash.className = kind || "";
  }

  const actions = {
    retry: { verb: "Retry", text: "Move step %s to pending now?", path: (s) => "/v1/steps/" + s + "/retry" },
    "retry-force": {
      verb: "Retry early", text: "Move step %s to pending now, before its backoff has passed?",
      path: (s) => "/v1/steps/" + s + "/retry?force=true",
    },
    grant: {
      verb: "Grant", text: "Grant step %s more attempts? It then moves by the normal rule once its backoff has passed.",
      path: (s) => "/v1/steps/" + s + "/grant", attempts: true, reason: true,
    },
    resolve: {
      verb: "Resolve", text: "Resolve step %s by hand? Its children may then run.",
      path: (s) => "/v1/steps/" + s + "/resolve", reason: true,
    },
    pause: { verb: "Pause", text: "Pause sweeping on every replica?", path: () => "/v1/pause", reason: true, optional: true },
    resume: { verb: "Resume", text: "Resume sweeping on every replica?", path: () => "/v1/resume" },
  };

  function field(id, show, required) {
    document.getElementById(id + "-label").hidden = !show;
    const input = document.getElementById(id);
    input.required = show && required;
    return input;
  }

  document.addEventListener("click", function (ev) {
    const button = ev.target.closest("button[data-action]");
    if (!button) {
      return;
    }
    const a = actions[button.dataset.action];
    if (!a) {
      return;
    }
    const step = button.dataset.step || "";
    const who = step ? (button.dataset.name ? button.dataset.name + " (" + step + ")" : step) : "";
    pending = { a: a, step: step, who: who };
    document.getElementById("confirm-text").textContent = a.text.replace("%s", who);
    field("confirm-attempts", !!a.attempts, true).value = "1";
    field("confirm-reason", !!a.reason, !a.optional).value = "";
    document.getElementById("confirm-ok").textContent = a.verb;
    dialog.returnValue = "";
    dialog.showModal();
  });

  dialog.addEventListener("close", function () {
    const p = pending;
    pending = null;
    if (!p || dialog.returnValue !== "ok") {
      return;
    }
    const payload = {};
    if (p.a.attempts) {
      payload.attempts = Number(document.getElementById("confirm-attempts").value);
    }
    if (p.a.reason) {
      payload.reason = document.getElementById("confirm-reason").value.trim();
    }
    post(p, p.a.attempts || p.a.reason ? JSON.stringify(payload) : null);
  });

  async function post(p, payload) {
    const headers = {};
    if (payload !== null) {
      headers["Content-Type"] = "application/json";
    }
    const token = sessionStorage.getItem(tokenKey);
    if (token) {
      headers["Authorization"] = "Bearer " + token;
    }
    const label = p.a.verb + (p.who ? " " + p.who : "");
    say(label + "…");
    body.dataset.busy = "true"; // until the page shows what came of it
    try {
      const resp = await fetch(p.a.path(p.step), { method: "POST", headers: headers, body: payload });
      let answer = {};
      try {
        answer = await resp.json();
      } catch (e) {
        answer = {};
      }
      if (resp.ok) {
        say(label + ": done", "ok");
      } else {
        say(label + " failed (" + (answer.code || "HTTP " + resp.status) + "): " + (answer.error || resp.statusText), "bad");
      }
    } catch (e) {
      say(label + " failed: " + e.message, "bad");
    }
    await refresh();
    delete body.dataset.busy;
  }

  function adopt(live) {
    renderedAt = Date.parse(live.dataset.renderedAt) || Date.now();
    loadedAt = Date.now();
    tick();
  }

  async function refresh() {
    if (dialog.open) {
      return; // not under someone's confirmation
    }
    try {
      const resp = await fetch(location.pathname, { cache: "no-store" });
      if (!resp.ok) {
        say("refresh failed: HTTP " + resp.status, "bad");
        return;
      }
      const doc = new DOMParser().parseFromString(await resp.text(), "text/html");
      const fresh = doc.getElementById("live");
      const live = document.getElementById("live");
      if (fresh && live && !dialog.open) {
        live.replaceWith(document.adoptNode(fresh));
        adopt(fresh);
      }
    } catch (e) {
      say("refresh failed: " + e.message, "bad");
    }
  }

  // countdown writes what the page's countdown() in Go writes.
  function countdown(ms) {
    const secs = Math.ceil(ms / 1000);
    const h = Math.floor(secs / 3600), m = Math.floor(secs / 60) % 60, s = secs % 60;
    const two = (n) => String(n).padStart(2, "0");
    if (h > 0) {
      return h + "h" + two(m) + "m" + two(s) + "s";
    }
    if (m > 0) {
      return m + "m" + two(s) + "s";
    }
    return s + "s";
  }

  function tick() {
    const now = renderedAt + (Date.now() - loadedAt);
    for (const el of document.querySelectorAll(".countdown[data-due-at]")) {
      const left = Date.parse(el.dataset.dueAt) - now;
      el.textContent = left > 0 ? "in " + countdown(left) : "due now";
    }
  }

  adopt(document.getElementById("live"));
  setInterval(tick, 1000);
  setInterval(refresh, refreshMS);
  body.dataset.ready = "true";
})();
