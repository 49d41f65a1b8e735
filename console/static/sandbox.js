// Live view of one sandbox: appends new log bytes (of one rank's lines when a cluster's rank is
// chosen) and keeps the end of the log in view while the reader is at the end ("following");
// scrolling up stops following until "Jump to the end". Also updates status, time and resource
// use, and refreshes the outbox. A long log opens on its last window ("Show from the start" asks
// for the rest); the console charges each block of log once, so asking again from where the last
// answer ended costs nothing twice.
(function () {
  "use strict";
  // A sandbox in these statuses has not ended yet (a stopping one ends as stopped).
  const LIVE = ["starting", "running", "stopping"];
  const log = document.getElementById("log");
  if (!log) return;
  const url = log.dataset.live;
  const windowBytes = Number(log.dataset.window) || 262144;
  const followState = document.getElementById("log-follow");
  const jump = document.getElementById("log-jump");
  const fromStart = document.getElementById("log-from-start");
  let offset = -windowBytes;  // the first answer: the log's last window
  let done = false;
  let logRefused = false;
  let outboxPending = document.getElementById("outbox").dataset.state === "hashing";
  const rankChoice = document.getElementById("log-rank");
  let rank = "";
  let view = 0;  // which choice of rank a reply belongs to: replies for an older one are dropped
  let timer = null;
  let more = false;  // the log has more than one reply's worth past `offset`: ask again at once
  let following = true;
  // A form sent from this page (Stop) is answered by a page of its own, with the message
  // saying what was recorded: a reload now would abandon it, message and all.
  let submitted = false;
  document.addEventListener("submit", function (event) {
    if (!event.defaultPrevented) submitted = true;  // not one a confirmation called off
  });

  function reload() {
    if (!submitted) location.reload();
  }

  function text(id, value) {
    const el = document.getElementById(id);
    if (el) el.textContent = value;
  }

  function atEnd() {
    return log.scrollHeight - log.scrollTop - log.clientHeight < 4;
  }

  function setFollowing(on) {
    following = on;
    log.dataset.following = on ? "yes" : "no";
    if (followState) {
      followState.textContent = on ? (done && !more ? "At the end of the log." : "Following the end of the log.")
                                   : "Not following: scrolled up.";
    }
    if (jump) jump.hidden = on;
  }

  function toEnd() {
    log.scrollTop = log.scrollHeight;
  }

  function note(message, className) {
    const span = document.createElement("span");
    span.className = className || "log-note";
    span.textContent = message;
    log.appendChild(span);
    return span;
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    const s = Math.max(0, Math.round(seconds));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    if (h) return h + " h " + String(m).padStart(2, "0") + " min";
    if (m) return m + " min " + String(r).padStart(2, "0") + " s";
    return r + " s";
  }

  function meter(id, used, limit) {
    const el = document.getElementById(id);
    if (!el) return;
    el.hidden = used === null || used === undefined;
    if (!el.hidden) { el.max = limit; el.value = used; }
  }

  function renderUsage(u) {
    if (!u) return;
    text("elapsed", u.elapsed_s === null ? "—" : duration(u.elapsed_s) + " of " + duration(u.time_limit_s));
    text("remaining", u.remaining_s === null ? "—" : duration(u.remaining_s));
    meter("elapsed-meter", u.elapsed_s === null ? null : Math.min(u.elapsed_s, u.time_limit_s), u.time_limit_s);
    text("cpu-use", u.cpus_used === null ? "—" :
         (u.cpus_used ? "about " + u.cpus_used : "under " + (u.cpus_limit / 20)) + " of " + u.cpus_limit + " CPU (" + Math.round(100 * u.cpus_used / u.cpus_limit) + " %)");
    meter("cpu-meter", u.cpus_used, u.cpus_limit);
    // Figures come in steps of 5 % of the limit: the lowest step reads "under" it.
    text("memory-use", u.memory_mb_used === null ? "—" :
         (u.memory_mb_used ? "about " + u.memory_mb_used.toLocaleString("en")
                           : "under " + Math.round(u.memory_mb_limit / 20).toLocaleString("en")) +
         " of " + u.memory_mb_limit.toLocaleString("en") +
         " MB (" + Math.round(100 * u.memory_mb_used / u.memory_mb_limit) + " %)");
    meter("memory-meter", u.memory_mb_used, u.memory_mb_limit);
  }

  function renderOutbox(outbox) {
    const files = outbox.files || [];
    const table = document.getElementById("outbox");
    table.dataset.state = outbox.state;
    const body = table.querySelector("tbody");
    body.replaceChildren();
    if (!files.length) {
      const row = body.insertRow();
      row.className = "empty";
      const cell = row.insertCell();
      cell.colSpan = 4;
      cell.textContent = outbox.state === "hashing" ? "Listing and hashing the outbox…" : "Empty.";
      return;
    }
    for (const f of files) {
      const row = body.insertRow();
      row.insertCell().textContent = String(f.position);
      const name = row.insertCell();
      name.textContent = f.label + (f.kind === "file" ? "" : " (ignored: not a regular file)");
      if (f.withheld) name.style.fontStyle = "italic";
      row.insertCell().textContent = f.size.toLocaleString("en");
      const code = document.createElement("code");
      code.className = "hash";
      code.textContent = f.sha256 || "—";
      row.insertCell().appendChild(code);
    }
  }

  async function tick() {
    timer = null;
    const mine = view;
    const asked = offset;
    try {
      const r = await fetch(url + "?offset=" + offset + (done && !outboxPending ? "" : "&outbox=1") +
                            (logRefused ? "&log=0" : "") + (rank ? "&rank=" + rank : ""),
                            {credentials: "same-origin"});
      if (!r.ok || mine !== view) return;
      const body = await r.json();
      if (mine !== view) return;
      if (asked < 0 && body.start > 0 && fromStart) {
        fromStart.hidden = false;
        note("[Sealroom] The first " + body.start.toLocaleString("en") +
             " bytes of the log are not shown here (Show from the start).\n");
      }
      if (body.skipped > 0) {
        note("\n[Sealroom] " + body.skipped.toLocaleString("en") + " older bytes are no longer kept\n");
      }
      if (body.log) log.appendChild(document.createTextNode(body.log));
      if (body.log_refused && !logRefused) {
        logRefused = true;
        note("\n[Sealroom] " + body.log_refused + " (policy rule " + body.rule + ")", "log-refused").id = "log-refused";
      }
      more = !logRefused && Boolean(body.more) && body.offset > asked;
      if (body.offset !== undefined && !body.log_refused) offset = body.offset;
      const s = body.sandbox;
      const status = document.getElementById("status");
      status.textContent = s.status.replace("_", " ");
      status.className = "status " + s.status;
      text("reason", s.reason || "—");
      text("exit-code", s.exit_code === null ? "—" : String(s.exit_code));
      text("duration", s.duration_s === null ? "—" : s.duration_s.toFixed(1) + " s");
      renderUsage(body.usage);
      if (body.outbox) {
        renderOutbox(body.outbox);
        const wasPending = outboxPending;
        outboxPending = body.outbox.state === "hashing";
        // Listed and hashed at last: render again to offer the release form.
        if (wasPending && !outboxPending) setTimeout(reload, 300);
      }
      if (!LIVE.includes(s.status)) {
        done = true;
        // The page was rendered while running: render it again to offer the release form.
        if (LIVE.includes(log.dataset.status)) {
          log.dataset.status = s.status;
          setTimeout(reload, 300);
        }
        const stop = document.getElementById("stop-form");
        if (stop) stop.remove();
      }
      if (following) toEnd();
      setFollowing(following);
    } finally {
      if (mine === view && (!done || outboxPending || more)) timer = setTimeout(tick, more ? 50 : 1500);
    }
  }

  function restart(from) {
    view += 1;
    offset = from;
    logRefused = false;
    more = false;
    log.replaceChildren();
    if (fromStart) fromStart.hidden = true;
    if (timer !== null) clearTimeout(timer);
    setFollowing(true);
    tick();
  }

  log.addEventListener("scroll", function () {
    if (atEnd() !== following) setFollowing(atEnd());
  });
  if (jump) jump.addEventListener("click", function () { toEnd(); setFollowing(true); });
  if (fromStart) {
    fromStart.addEventListener("click", function () {
      restart(0);
      setFollowing(false);  // the reader asked for the start: stay there
    });
  }
  if (rankChoice) {
    rankChoice.addEventListener("change", function () {
      rank = rankChoice.value;
      restart(rank ? 0 : -windowBytes);
    });
  }
  tick();
})();
