// Chart builders: each turns one /api/metrics document into Plotly traces and a layout.
(function () {
  "use strict";

  const C = {
    green: "#2f9e6e", red: "#d9534f", blue: "#3a6fd8", sky: "#7aa5f0", navy: "#1d3f8f",
    orange: "#e8893a", peach: "#f3b98a", rust: "#b35a16", teal: "#1fa3a3",
    purple: "#7d5bd6", grey: "#9aa3af", amber: "#d9a21b",
  };
  const PALETTE = [C.blue, C.orange, C.teal, C.purple, C.green, C.amber, C.red, C.grey];
  const TIER_COLORS = {cheap: C.teal, standard: C.blue, premium: C.purple};

  function pad(n) { return String(n).padStart(2, "0"); }

  // Plotly shows date strings as given: send local wall-clock time.
  function local(epochSeconds) {
    const d = new Date(epochSeconds * 1000);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
      `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  function layout(doc, extra) {
    const s = doc.series;
    const base = {
      margin: {l: 52, r: 18, t: 6, b: 30},
      paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)",
      font: {family: "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif", size: 11,
        color: "#5b6472"},
      xaxis: {type: "date", gridcolor: "#eef0f4", linecolor: "#d9dde3", fixedrange: true,
        // Half a bin past now, so the current bin's bar is not cut in half at the edge.
        range: [local(s.t[0]), local(doc.generated_at + ((s.t[1] - s.t[0]) || 60) / 2)]},
      yaxis: {gridcolor: "#eef0f4", zeroline: false, rangemode: "tozero", fixedrange: true,
        automargin: true},
      legend: {orientation: "h", x: 0, y: 1.02, yanchor: "bottom", font: {size: 11},
        traceorder: "normal"},
      hovermode: "x unified", hoverlabel: {font: {size: 11}},
      barmode: "stack", bargap: 0.12, showlegend: true,
    };
    return Object.assign(base, extra || {});
  }

  function empty(lay, text) {
    lay.annotations = [{text: text || "No data in this window", showarrow: false,
      xref: "paper", yref: "paper", x: 0.5, y: 0.5, font: {size: 13, color: "#9aa3af"}}];
    return lay;
  }

  function anyValue(arrays) {
    return arrays.some((a) => a.some((v) => v !== null && v !== 0));
  }

  function throughput(doc) {
    const s = doc.series, x = s.t.map(local);
    const traces = [
      {type: "bar", name: "succeeded", x, y: s.succeeded_per_min, marker: {color: C.green}},
      {type: "bar", name: "failed", x, y: s.failed_per_min, marker: {color: C.red}},
    ];
    const lay = layout(doc, {yaxis: Object.assign(layout(doc).yaxis, {title: {text: "tasks/min"}})});
    return [traces, anyValue([s.succeeded_per_min, s.failed_per_min]) ? lay : empty(lay)];
  }

  function queueDepth(doc) {
    const traces = [];
    const queues = Object.entries(doc.series.queue_depth).filter(([, q]) => q.t.length);
    // Queues that stayed empty all window only crowd the legend; keep them if all are empty.
    const busy = queues.filter(([, q]) => q.depth.some((d) => d > 0));
    (busy.length ? busy : queues).forEach(([name, q], i) => {
      const short = name.startsWith(doc.namespace + ".") ? name.slice(doc.namespace.length + 1) : name;
      traces.push({type: "scatter", mode: "lines", name: short, x: q.t.map(local), y: q.depth,
        line: {width: 2, color: PALETTE[i % PALETTE.length], shape: "hv"}});
    });
    const lay = layout(doc, {barmode: "group"});
    lay.shapes = doc.scale_events.map((e) => ({type: "line", xref: "x", yref: "paper",
      x0: local(e.ts), x1: local(e.ts), y0: 0, y1: 1,
      line: {color: e.direction === "up" ? C.green : C.amber, width: 1, dash: "dot"}}));
    lay.annotations = doc.scale_events.slice(0, 20).map((e) => ({x: local(e.ts), y: 0.98,
      xref: "x", yref: "paper", showarrow: false, yanchor: "top", xanchor: "right",
      font: {size: 10, color: e.direction === "up" ? C.green : C.amber},
      text: `${e.direction === "up" ? "▲" : "▼"} ${e.from_count}→${e.to_count}`}));
    return [traces, traces.length ? lay : empty(lay, "No queue samples yet")];
  }

  function latency(doc) {
    const s = doc.series, x = s.t.map(local), traces = [];
    const shades = {llm: [C.sky, C.blue, C.navy], queue: [C.peach, C.orange, C.rust]};
    for (const stage of ["llm", "queue"]) {
      ["p50", "p95", "p99"].forEach((q, i) => {
        traces.push({type: "scatter", mode: "lines", name: `${stage === "llm" ? "LLM" : "queue"} ${q}`,
          x, y: s.latency[stage][q], connectgaps: false,
          line: {width: q === "p95" ? 2.4 : 1.4, color: shades[stage][i],
            dash: stage === "queue" ? "dash" : "solid"}});
      });
    }
    const lay = layout(doc, {yaxis: Object.assign(layout(doc).yaxis, {title: {text: "ms"}})});
    return [traces, anyValue(traces.map((t) => t.y)) ? lay : empty(lay)];
  }

  function cost(doc) {
    const s = doc.series, x = s.t.map(local);
    const traces = [
      {type: "bar", name: "cost", x, y: s.cost_per_hour, marker: {color: C.blue}},
      {type: "scatter", mode: "lines", name: "saved", x, y: s.saved_per_hour,
        line: {color: C.green, width: 2}},
    ];
    const lay = layout(doc, {yaxis: Object.assign(layout(doc).yaxis,
      {title: {text: "USD/h"}, tickprefix: "$"})});
    return [traces, anyValue([s.cost_per_hour, s.saved_per_hour]) ? lay : empty(lay)];
  }

  function cache(doc) {
    const s = doc.series, x = s.t.map(local);
    const traces = [
      {type: "bar", name: "exact hits", x, y: s.cache_exact, marker: {color: C.teal}},
      {type: "bar", name: "semantic hits", x, y: s.cache_semantic, marker: {color: C.purple}},
      {type: "bar", name: "misses", x, y: s.cache_miss, marker: {color: "#d5dae2"}},
      {type: "scatter", mode: "lines", name: "hit rate %", x, y: s.cache_hit_rate_pct,
        yaxis: "y2", connectgaps: false, line: {color: C.amber, width: 2}},
    ];
    const lay = layout(doc, {yaxis2: {overlaying: "y", side: "right", range: [0, 100],
      tickmode: "array", tickvals: [0, 25, 50, 75, 100], showgrid: false, ticksuffix: "%",
      fixedrange: true}});
    lay.margin = Object.assign({}, lay.margin, {r: 44});
    return [traces, anyValue([s.cache_exact, s.cache_semantic, s.cache_miss]) ? lay : empty(lay)];
  }

  function tiers(doc) {
    const names = Object.keys(doc.tier_mix);
    const values = names.map((n) => doc.tier_mix[n]);
    const total = values.reduce((a, b) => a + b, 0);
    const traces = [{type: "pie", hole: 0.58, labels: names, values, sort: false,
      marker: {colors: names.map((n, i) => TIER_COLORS[n] || PALETTE[i % PALETTE.length])},
      textinfo: "label+percent", hoverinfo: "label+value+percent", textfont: {size: 12}}];
    const lay = layout(doc, {margin: {l: 10, r: 10, t: 10, b: 10}, showlegend: false});
    delete lay.xaxis; delete lay.yaxis;
    lay.annotations = [{text: total ? `<b>${total.toLocaleString()}</b><br>tasks` : "No tasks",
      showarrow: false, font: {size: 14, color: "#2b3340"}}];
    return [total ? traces : [], lay];
  }

  function limiter(doc) {
    const s = doc.series, x = s.t.map(local), traces = [];
    Object.entries(s.limiter_util_pct).forEach(([pool, y], i) => {
      traces.push({type: "scatter", mode: "lines", name: `${pool} use %`, x, y,
        connectgaps: false, line: {width: 2, color: PALETTE[i % PALETTE.length]}});
    });
    traces.push({type: "bar", name: "429s", x, y: s.rate_limited, yaxis: "y2",
      marker: {color: "rgba(217,83,79,0.55)"}});
    // Whole-number ticks: with few 429s "auto" ticks at 0.5 steps print 0, 1, 1 under ",d".
    const most429 = Math.max(0, ...s.rate_limited.filter((v) => v !== null));
    const lay = layout(doc, {
      yaxis: Object.assign(layout(doc).yaxis, {range: [0, 105], ticksuffix: "%", rangemode: "normal"}),
      yaxis2: Object.assign({overlaying: "y", side: "right", showgrid: false,
        rangemode: "tozero", tickformat: ",d", fixedrange: true, title: {text: "429s"}},
        most429 < 5 ? {tickmode: "linear", dtick: 1, range: [0, Math.max(1, most429)]}
                    : {tickmode: "auto", nticks: 5})});
    lay.margin = Object.assign({}, lay.margin, {r: 48});
    const has = traces.length > 1 || anyValue([s.rate_limited]);
    return [traces, has ? lay : empty(lay, "No limiter stats yet")];
  }


  // A "lines" trace draws nothing for a point without a drawn neighbour (the first minute
  // of data, or one minute between gaps): give such points, and the latest one, a dot.
  function markLonely(trace) {
    if (trace.type !== "scatter" || trace.mode !== "lines") return;
    const y = trace.y, has = (i) => i >= 0 && i < y.length && y[i] !== null && y[i] !== undefined;
    let last = y.length - 1;
    while (last >= 0 && !has(last)) last -= 1;
    const size = y.map((v, i) => has(i) && ((!has(i - 1) && !has(i + 1)) || i === last) ? 6 : 0);
    if (!size.some((n) => n)) return;
    trace.mode = "lines+markers";
    trace.marker = {size, color: trace.line && trace.line.color};
    trace.cliponaxis = false;
  }

  const BUILDERS = {throughput, "queue-depth": queueDepth, latency, cost, cache, tiers, limiter};
  const CONFIG = {displayModeBar: false, responsive: true};

  function drawAll(doc) {
    for (const [id, build] of Object.entries(BUILDERS)) {
      const div = document.getElementById(`chart-${id}`);
      if (!div || !window.Plotly) continue;
      const [traces, lay] = build(doc);
      traces.forEach(markLonely);
      window.Plotly.react(div, traces, lay, CONFIG);
      // For tests and people: how many points this chart drew.
      div.dataset.points = String(traces.reduce((n, t) => n + ((t.y || t.values || []).filter(
        (v) => v !== null && v !== 0).length), 0));
    }
  }

  window.agentqCharts = {drawAll};
})();
