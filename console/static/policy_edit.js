// The policy editor: the textarea becomes a CodeMirror editor (bundled in vendor/codemirror:
// line numbers, YAML colours) that still posts the textarea. The document is checked on the
// server as you type; each problem is listed above the editor with its line, marked in the
// gutter and on the line itself, and clicking a problem (or its marker) goes to that line.
// A dry run's activation form is disabled once the text changes, so only a dry-run text can be
// activated. Without CodeMirror the plain textarea does all of this but the markers.
(function () {
  "use strict";
  const form = document.getElementById("policy-form");
  const text = document.getElementById("policy-text");
  const out = document.getElementById("validation");
  if (!form || !text || !out) return;
  const activate = document.getElementById("activate");
  const dryRunText = text.value;
  const GUTTER = "policy-problems";
  let timer = null;
  let sequence = 0;

  // --- the document: CodeMirror when bundled, else the textarea itself ---------------------
  const cm = window.CodeMirror ? window.CodeMirror.fromTextArea(text, {
    mode: "yaml",
    lineNumbers: true,
    gutters: [GUTTER, "CodeMirror-linenumbers"],
    indentUnit: 2,
    tabSize: 2,
    lineWrapping: false,
    viewportMargin: Infinity, // a policy is short: render every line (find in page works)
    extraKeys: {
      Tab: function (editor) { editor.replaceSelection("  "); }, // YAML indents with spaces
      "Shift-Tab": "indentLess",
      // Tab indents, so the keyboard leaves the editor with Esc (to the Dry run button)
      Esc: function () { const next = document.getElementById("dry-run"); if (next) next.focus(); },
    },
  }) : null;
  let marked = [];

  function value() { return cm ? cm.getValue() : text.value; }

  if (cm) {
    const input = cm.getInputField();
    input.setAttribute("aria-labelledby", "policy-text-label");
    input.setAttribute("aria-multiline", "true");
    const keys = document.getElementById("policy-keys");
    if (keys) {
      keys.hidden = false;
      input.setAttribute("aria-describedby", "policy-keys");
    }
    const label = document.getElementById("policy-text-label");
    if (label) label.addEventListener("click", function () { cm.focus(); });
    cm.on("gutterClick", function (editor, line) { selectLine(line + 1); });
    form.addEventListener("submit", function () { cm.save(); });
  }

  function selectLine(line) {
    if (cm) {
      const n = Math.min(line, cm.lineCount()) - 1;
      const indent = cm.getLine(n).search(/\S|$/); // select what is written, not its indentation
      cm.focus();
      cm.setSelection({line: n, ch: indent}, {line: n, ch: cm.getLine(n).length});
      cm.scrollIntoView({line: n, ch: 0}, 80);
      return;
    }
    const lines = text.value.split("\n");
    const start = lines.slice(0, line - 1).reduce(function (n, l) { return n + l.length + 1; }, 0);
    text.focus();
    text.setSelectionRange(start, start + (lines[line - 1] || "").length);
  }

  function clearMarks() {
    if (!cm) return;
    cm.clearGutter(GUTTER);
    marked.forEach(function (handle) {
      cm.removeLineClass(handle, "background", "policy-problem-line");
      cm.removeLineClass(handle, "background", "policy-warning-line");
    });
    marked = [];
  }

  function mark(problem, warning) {
    if (!cm || !problem.line) return;
    const n = Math.min(problem.line, cm.lineCount()) - 1;
    const info = cm.lineInfo(n);
    const existing = info && info.gutterMarkers && info.gutterMarkers[GUTTER];
    const marker = existing || document.createElement("span");
    if (!existing) {
      marker.className = warning ? "policy-marker warning" : "policy-marker";
      marker.textContent = warning ? "!" : "\u2716";
      marker.title = "";
    } else if (!warning) {
      marker.className = "policy-marker"; // an error outranks a warning on the same line
      marker.textContent = "\u2716";
    }
    marker.title = (marker.title ? marker.title + "\n" : "") + (problem.path ? problem.path + ": " : "") + problem.message;
    marker.setAttribute("aria-label", (warning ? "warning" : "problem") + " on line " + (n + 1));
    marker.dataset.line = String(n + 1);
    cm.setGutterMarker(n, GUTTER, marker);
    marked.push(cm.addLineClass(n, "background", warning ? "policy-warning-line" : "policy-problem-line"));
  }

  // --- the list of problems, above the editor ----------------------------------------------
  function item(problem, prefix) {
    const li = document.createElement("li");
    const where = problem.line ? "line " + problem.line + ": " : "";
    const path = problem.path ? problem.path + ": " : "";
    li.textContent = prefix + where + path + problem.message;
    if (problem.line) {
      li.className = "goto";
      li.title = "Go to line " + problem.line;
      li.dataset.line = String(problem.line);
      li.tabIndex = 0;
      li.addEventListener("click", function () { selectLine(problem.line); });
      li.addEventListener("keydown", function (event) {
        if (event.key === "Enter") selectLine(problem.line);
      });
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
    const invalid = body.valid ? "false" : "true";
    text.setAttribute("aria-invalid", invalid);
    clearMarks();
    if (cm) {
      cm.getInputField().setAttribute("aria-invalid", invalid);
      cm.getWrapperElement().classList.toggle("policy-invalid", !body.valid);
      body.warnings.forEach(function (w) { mark(w, true); });
      body.problems.forEach(function (p) { mark(p, false); });
    }
  }

  async function check() {
    const mine = ++sequence;
    try {
      const r = await fetch(form.dataset.check, {
        method: "POST",
        credentials: "same-origin",
        headers: {"Content-Type": "application/json", "X-CSRFToken": form.dataset.csrf},
        body: JSON.stringify({yaml: value()}),
      });
      if (!r.ok || mine !== sequence) return;
      show(await r.json());
    } catch (e) {
      // offline or logged out: the dry run still validates on the server
    }
  }

  function changed() {
    if (activate) {
      const edited = value() !== dryRunText;
      activate.disabled = edited;
      activate.title = edited ? "The text changed since the dry run: dry run again" : "";
    }
    clearTimeout(timer);
    timer = setTimeout(check, 300);
  }

  if (cm) cm.on("changes", changed); else text.addEventListener("input", changed);
  // Problems the server listed (a refused dry run): check once so they get their markers.
  if (out.querySelector("li")) check();
})();
