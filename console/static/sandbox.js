// Live view of one sandbox: appends new log bytes (of one rank's lines when a cluster's rank is
// chosen), updates status, refreshes the outbox.
(function () {
  "use strict";
  // A sandbox in these statuses has not ended yet (a stopping one ends as stopped).
  const LIVE = ["starting", "running", "stopping"];
  const log = document.getElementById("log");
  if (!log) return;
  const url = log.dataset.live;
  let offset = 0;
  let done = false;
  let logRefused = false;
  let outboxPending = document.getElementById("outbox").dataset.state === "hashing";
  const rankChoice = document.getElementById("log-rank");
  let rank = "";
  let view = 0;  // which choice of rank a reply belongs to: replies for an older one are dropped
  let timer = null;
  let more = false;  // a finished sandbox's log has more than one reply's worth
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
    try {
      const r = await fetch(url + "?offset=" + offset + (done && !outboxPending ? "" : "&outbox=1") +
                            (logRefused ? "&log=0" : "") + (rank ? "&rank=" + rank : ""),
                            {credentials: "same-origin"});
      if (!r.ok || mine !== view) return;
      const body = await r.json();
      if (mine !== view) return;
      if (body.log) log.textContent += body.log;
      if (body.log_refused && !logRefused) {
        logRefused = true;
        const note = document.createElement("span");
        note.className = "log-refused";
        note.id = "log-refused";
        note.textContent = "\n[Sealroom] " + body.log_refused + " (policy rule " + body.rule + ")";
        log.appendChild(note);
      }
      if (body.skipped > 0) {
        log.appendChild(document.createTextNode(
          "\n[Sealroom] " + body.skipped.toLocaleString("en") + " older bytes are no longer kept\n"));
      }
      more = !logRefused && body.offset > offset && body.offset < body.total;
      offset = body.offset;
      const s = body.sandbox;
      const status = document.getElementById("status");
      status.textContent = s.status.replace("_", " ");
      status.className = "status " + s.status;
      text("reason", s.reason || "—");
      text("exit-code", s.exit_code === null ? "—" : String(s.exit_code));
      text("duration", s.duration_s === null ? "—" : s.duration_s.toFixed(1) + " s");
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
    } finally {
      if (mine === view && (!done || outboxPending || more)) timer = setTimeout(tick, done && more ? 100 : 1500);
    }
  }

  if (rankChoice) {
    rankChoice.addEventListener("change", function () {
      view += 1;
      rank = rankChoice.value;
      offset = 0;
      logRefused = false;
      log.replaceChildren();
      if (timer !== null) clearTimeout(timer);
      tick();
    });
  }
  tick();
})();
