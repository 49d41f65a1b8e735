// The policy editor: checks the document on the server as you type and lists each problem
// with its line; clicking a problem selects that line. A dry run's activation form is
// disabled once the text changes, so only a dry-run text can be activated.
(function () {
  "use strict";
  const form = document.getElementById("policy-form");
  const text = document.getElementById("policy-text");
  const out = document.getElementById("validation");
  if (!form || !text || !out) return;
  const activate = document.getElementById("activate");
  const dryRunText = text.value;
  let timer = null;
  let sequence = 0;

  function selectLine(line) {
    const lines = text.value.split("\n");
    const start = lines.slice(0, line - 1).reduce(function (n, l) { return n + l.length + 1; }, 0);
    text.focus();
    text.setSelectionRange(start, start + (lines[line - 1] || "").length);
  }

  function item(problem, prefix) {
    const li = document.createElement("li");
    const where = problem.line ? "line " + problem.line + ": " : "";
    const path = problem.path ? problem.path + ": " : "";
    li.textContent = prefix + where + path + problem.message;
    if (problem.line) {
      li.className = "goto";
      li.title = "Go to line " + problem.line;
      li.addEventListener("click", function () { selectLine(problem.line); });
    }
    return li;
  }

  function show(body) {
    out.replaceChildren();
    const head = document.createElement("p");
    head.id = "validation-summary";
    head.className = body.valid ? "flash" : "flash error";
    head.textContent = body.valid ? "Valid." : "The policy does not validate:";
    out.appendChild(head);
    const list = document.createElement("ul");
    list.className = "problems";
    body.problems.forEach(function (p) { list.appendChild(item(p, "")); });
    body.warnings.forEach(function (w) { list.appendChild(item(w, "warning: ")); });
    if (list.children.length) out.appendChild(list);
    text.setAttribute("aria-invalid", body.valid ? "false" : "true");
  }

  async function check() {
    const mine = ++sequence;
    try {
      const r = await fetch(form.dataset.check, {
        method: "POST",
        credentials: "same-origin",
        headers: {"Content-Type": "application/json", "X-CSRFToken": form.dataset.csrf},
        body: JSON.stringify({yaml: text.value}),
      });
      if (!r.ok || mine !== sequence) return;
      show(await r.json());
    } catch (e) {
      // offline or logged out: the dry run still validates on the server
    }
  }

  text.addEventListener("input", function () {
    if (activate) {
      const changed = text.value !== dryRunText;
      activate.disabled = changed;
      activate.title = changed ? "The text changed since the dry run: dry run again" : "";
    }
    clearTimeout(timer);
    timer = setTimeout(check, 300);
  });
})();
