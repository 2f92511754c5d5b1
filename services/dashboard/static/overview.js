// The overview's live loop: fetch /api/metrics every few seconds and redraw in place.
(function () {
  "use strict";
  const script = document.getElementById("overview-script");
  const refreshMs = Number(script.dataset.refreshMs || 5000);
  const params = new URLSearchParams(window.location.search);
  let doc = JSON.parse(document.getElementById("initial-metrics").textContent);
  let windowName = doc.window;
  const tenant = params.get("tenant") || "";
  let timer = null;

  function text(id, value) {
    const el = document.getElementById(id);
    if (el) el.textContent = value;
  }

  function fmtInt(v) { return v === null || v === undefined ? "—" : Number(v).toLocaleString(); }
  // Mirrors cards.money() on the server.
  function fmtUsd(v) {
    v = Number(v || 0);
    if (v === 0) return "$0";
    if (Math.abs(v) < 0.01) return `$${v.toFixed(5).replace(/0+$/, "")}`;
    if (Math.abs(v) >= 1000) return `$${Math.round(v).toLocaleString("en-US")}`;
    return `$${v.toLocaleString("en-US", {minimumFractionDigits: 2, maximumFractionDigits: 2})}`;
  }

  function drawCards(cards) {
    const box = document.getElementById("cards");
    const same = cards.length === box.children.length &&
      cards.every((c, i) => box.children[i].id === `card-${c.id}`);
    if (!same) {
      box.replaceChildren(...cards.map((c) => {
        const div = document.createElement("div");
        div.id = `card-${c.id}`;
        div.innerHTML = '<div class="label"></div><div class="value"></div><div class="sub"></div>';
        return div;
      }));
    }
    cards.forEach((c, i) => {
      const div = box.children[i];
      div.className = `card ${c.tone}`;
      div.querySelector(".label").textContent = c.label;
      div.querySelector(".value").textContent = c.value;
      div.querySelector(".sub").textContent = c.sub;
    });
  }

  function row(cells) {
    const tr = document.createElement("tr");
    for (const [value, cls] of cells) {
      const td = document.createElement("td");
      if (cls) td.className = cls;
      if (value instanceof Node) td.appendChild(value); else td.textContent = value;
      tr.appendChild(td);
    }
    return tr;
  }

  function drawTables(d) {
    document.querySelector("#queue-table tbody").replaceChildren(...d.queues.map((q) => row([
      [q.name, "mono"], [fmtInt(q.depth), "num"], [fmtInt(q.unacked), "num"],
      [fmtInt(q.consumers), "num"]])));
    const tenants = d.tenants.map((t) => {
      const a = document.createElement("a");
      a.href = `/tasks?tenant=${encodeURIComponent(t.tenant)}`;
      a.textContent = t.tenant;
      return row([[a], [fmtInt(t.tasks), "num"], [fmtInt(t.failed), "num"],
        [fmtUsd(t.cost_usd), "num"], [fmtUsd(t.saved_usd), "num"]]);
    });
    const body = document.querySelector("#tenant-table tbody");
    if (tenants.length) body.replaceChildren(...tenants);
    else body.replaceChildren(row([["No finished tasks in this window yet.", "muted"]]));
  }

  function draw(d) {
    doc = d;
    drawCards(d.cards);
    drawTables(d);
    window.agentqCharts.drawAll(d);
    if (window.agentqBanner) window.agentqBanner.render(d.alerts);
    text("updated", new Date(d.generated_at * 1000).toLocaleTimeString());
  }

  async function refresh() {
    clearTimeout(timer);
    const live = document.getElementById("live");
    try {
      const q = new URLSearchParams({window: windowName});
      if (tenant) q.set("tenant", tenant);
      const response = await fetch(`/api/metrics?${q}`, {cache: "no-store"});
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      draw(await response.json());
      live.className = "live";
      live.textContent = "live";
    } catch (err) {
      live.className = "live off";
      live.textContent = "offline";
    }
    timer = setTimeout(refresh, refreshMs);
  }

  document.querySelectorAll("#window-select a").forEach((a) => {
    a.addEventListener("click", (event) => {
      event.preventDefault();
      windowName = a.dataset.window;
      document.querySelectorAll("#window-select a").forEach((b) =>
        b.classList.toggle("on", b === a));
      document.querySelector(".tenant-filter input[name=window]").value = windowName;
      params.set("window", windowName);
      window.history.replaceState(null, "", `?${params}`);
      refresh();
    });
  });

  draw(doc);
  timer = setTimeout(refresh, refreshMs);
})();
