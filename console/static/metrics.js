// Live training curves on a sandbox's page: polls the console for new points (a cursor keeps
// each answer small), draws one uPlot chart per metric with a line per rank, and a progress bar
// when the job declared its total steps. Every text drawn here is the console's own words or
// numbers; metric names were paid for from the disclosure budget like the points.
(function () {
  "use strict";
  const box = document.getElementById("metrics");
  if (!box || typeof uPlot === "undefined") return;
  const url = box.dataset.live;
  const charts = document.getElementById("metrics-charts");
  const note = document.getElementById("metrics-note");
  const progress = document.getElementById("metrics-progress");
  const progressText = document.getElementById("metrics-progress-text");
  const COLOURS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4d7c0f", "#be185d"];
  // Steps are whole numbers: ticks fall on 1, 2, 5, 10, 20, 50, ... steps, never on 2.5.
  const STEP_INCREMENTS = [];
  for (let ten = 1; ten <= 1e9; ten *= 10) STEP_INCREMENTS.push(ten, 2 * ten, 5 * ten);
  const series = new Map();  // metric name -> Map(rank -> Map(step -> value))
  const plots = new Map();   // metric name -> {plot, ranks}
  let cursor = 0;

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "";
    if (seconds < 90) return Math.round(seconds) + " s";
    if (seconds < 5400) return Math.round(seconds / 60) + " min";
    return (seconds / 3600).toFixed(1) + " h";
  }

  function width() {  // two charts a row where there is room, else one as wide as the page
    const room = charts.clientWidth || 600;
    return room >= 720 ? Math.floor((room - 16) / 2) : Math.max(240, room);
  }

  function data(name) {
    const ranks = series.get(name);
    const steps = new Set();
    for (const points of ranks.values()) for (const step of points.keys()) steps.add(step);
    const xs = Array.from(steps).sort(function (a, b) { return a - b; });
    const ordered = Array.from(ranks.keys()).sort(function (a, b) { return a - b; });
    return [ordered, [xs].concat(ordered.map(function (rank) {
      const points = ranks.get(rank);
      return xs.map(function (x) { return points.has(x) ? points.get(x) : null; });
    }))];
  }

  function draw(name) {
    const [ranks, columns] = data(name);
    const known = plots.get(name);
    if (known && known.ranks.join() === ranks.join()) {
      known.plot.setData(columns);
      return;
    }
    if (known) known.plot.destroy();
    let figure = document.querySelector('figure[data-metric="' + CSS.escape(name) + '"]');
    if (!figure) {
      figure = document.createElement("figure");
      figure.className = "metric-chart";
      figure.dataset.metric = name;
      const caption = document.createElement("figcaption");
      caption.textContent = name;
      figure.appendChild(caption);
      charts.appendChild(figure);
    }
    const options = {
      width: width(), height: 220,
      scales: {x: {time: false}},
      axes: [{label: "step", incrs: STEP_INCREMENTS}, {}],
      series: [{label: "step"}].concat(ranks.map(function (rank, i) {
        return {label: ranks.length > 1 || Number(box.dataset.ranks) > 1 ? "rank " + rank : name,
                stroke: COLOURS[i % COLOURS.length], width: 1.5, spanGaps: true};
      })),
    };
    plots.set(name, {plot: new uPlot(options, columns, figure), ranks: ranks});
  }

  function showProgress(p) {
    if (!p) return;
    progress.hidden = false;
    progress.max = p.total_steps;
    progress.value = p.step;
    let text = "Step " + p.step.toLocaleString("en") + " of " + p.total_steps.toLocaleString("en") +
      " (" + Math.floor(p.fraction * 100) + "%)";
    if (p.remaining_s !== null) text += ", about " + duration(p.remaining_s) + " left";
    progressText.textContent = text;
  }

  function showNote(body) {
    const parts = [];
    const dropped = Object.entries(body.dropped || {});
    if (dropped.length) {
      parts.push("Not shown: " + dropped.map(function (e) {
        return e[1].toLocaleString("en") + " (" + e[0] + ")";
      }).join(", ") + ".");
    }
    if (body.refused) parts.push(body.refused.reason + " (policy rule " + body.refused.rule + ").");
    if (!body.points && !parts.length) {
      parts.push("No training metrics yet. A job draws curves here with " +
                 "sealroom.log_metrics(step, loss=...); each point spends the disclosure budget.");
    }
    note.textContent = parts.join(" ");
  }

  async function tick() {
    let again = 2000;
    try {
      const r = await fetch(url + "?since=" + cursor, {credentials: "same-origin"});
      if (!r.ok) return;
      const body = await r.json();
      const changed = new Set();
      for (const s of body.series) {
        if (!series.has(s.name)) series.set(s.name, new Map());
        const ranks = series.get(s.name);
        if (!ranks.has(s.rank)) ranks.set(s.rank, new Map());
        const points = ranks.get(s.rank);
        for (const [step, value] of s.points) points.set(step, value);
        changed.add(s.name);
      }
      cursor = body.cursor;
      for (const name of Array.from(changed).sort()) draw(name);
      box.dataset.points = String(body.points);
      showProgress(body.progress);
      showNote(body);
      if (body.more) again = 200;
      else if (!["starting", "running", "stopping"].includes(body.status)) again = 0;
    } finally {
      if (again) setTimeout(tick, again);
    }
  }

  window.addEventListener("resize", function () {
    for (const entry of plots.values()) entry.plot.setSize({width: width(), height: 220});
  });
  tick();
})();
