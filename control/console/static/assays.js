// Charts of one assay (templates/assays.html): score per window with the warning and alert
// lines, and the chosen window's densities beside the baseline's. The data comes from the
// JSON endpoint named in #score-chart's data-src (no inline script: the CSP forbids it).
(function () {
  "use strict";
  const COLOURS = { score: "#2563eb", warning: "#d97706", alert: "#dc2626",
                    baseline: "#6b7280", ok: "#16a34a", no_data: "#9ca3af" };

  function width(el) { return Math.max(320, el.clientWidth || 600); }

  function scoreChart(el, data) {
    const xs = data.windows.map(w => w.start);
    const series = [{}, { label: data.metric, stroke: COLOURS.score, width: 1.5,
                          spanGaps: true, points: { show: true, size: 7 } }];
    const ys = [xs, data.windows.map(w => w.score)];
    for (const name of ["warning", "alert"]) {
      if (data[name] !== null && data[name] !== undefined) {
        series.push({ label: name + " " + data[name], stroke: COLOURS[name], dash: [6, 4],
                      width: 1, points: { show: false } });
        ys.push(xs.map(() => data[name]));
      }
    }
    return new uPlot({ width: width(el), height: 260, series: series,
                       scales: { x: { time: true } },
                       // Times in UTC, as every other page shows them.
                       tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"),
                       axes: [{}, { label: data.metric }] }, ys, el);
  }

  function densityChart(el, win) {
    const xs = win.labels.map((_, i) => i);
    // Side by side: the baseline's bar left of its bin, the window's right of it.
    const bars = (align) => uPlot.paths.bars({ size: [0.4, 60], align: align });
    const opts = {
      width: width(el), height: 260,
      scales: { x: { time: false, range: [-0.6, xs.length - 0.4] } },
      axes: [{ values: (u, ticks) => ticks.map(t => win.labels[t] ?? ""), splits: () => xs },
             { label: "density" }],
      series: [{ label: "bin", value: (u, i) => i === null ? "-" : win.labels[i] },
               { label: "baseline", fill: COLOURS.baseline + "99", stroke: COLOURS.baseline,
                 paths: bars(-1), points: { show: false } },
               { label: "window", fill: (COLOURS[win.status] || COLOURS.score) + "99",
                 stroke: COLOURS[win.status] || COLOURS.score, paths: bars(1),
                 points: { show: false } }],
    };
    return new uPlot(opts, [xs, win.baseline, win.window], el);
  }

  function when(seconds) { return new Date(seconds * 1000).toISOString().slice(0, 19).replace("T", " "); }

  async function draw() {
    const scoreEl = document.getElementById("score-chart");
    if (!scoreEl || !scoreEl.dataset.src) { return; }
    const answer = await fetch(scoreEl.dataset.src, { credentials: "same-origin" });
    if (!answer.ok) { throw new Error("assay data: " + answer.status); }
    const data = await answer.json();
    if (!data.windows.length) { return; }
    scoreChart(scoreEl, data);
    const densityEl = document.getElementById("density-chart");
    const pick = document.getElementById("window-pick");
    if (!densityEl || !pick) {  // a performance assay: no bins to draw
      scoreEl.dataset.drawn = String(data.windows.length);
      return;
    }
    data.windows.forEach((w, i) => {
      const option = document.createElement("option");
      option.value = String(i);
      option.textContent = when(w.start) + " UTC (" + w.status.replace("_", " ") + ")";
      pick.appendChild(option);
    });
    let current = null;
    const show = () => {
      if (current) { current.destroy(); }
      current = densityChart(densityEl, data.windows[Number(pick.value)]);
      densityEl.dataset.window = String(data.windows[Number(pick.value)].start);
    };
    pick.value = String(data.windows.length - 1);
    pick.addEventListener("change", show);
    show();
    scoreEl.dataset.drawn = String(data.windows.length);
  }

  document.addEventListener("DOMContentLoaded", () => {
    draw().catch((e) => console.error(String(e)));
  });
})();
