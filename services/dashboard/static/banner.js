// The firing-alert banner on every page: redrawn from /api/alerts (or, on the overview,
// from each /api/metrics refresh) so a new alert shows up without a reload.
(function () {
  "use strict";
  const banner = document.getElementById("alert-banner");
  const list = document.getElementById("alert-list");
  const count = document.getElementById("alert-count");

  function render(alerts) {
    if (!banner) return;
    list.replaceChildren(...alerts.map((a) => {
      const li = document.createElement("li");
      li.dataset.rule = a.rule;
      li.dataset.state = a.state;
      li.textContent = a.text;
      return li;
    }));
    count.textContent = `${alerts.length} alert${alerts.length === 1 ? "" : "s"} firing`;
    banner.hidden = alerts.length === 0;
  }

  async function poll() {
    try {
      const response = await fetch("/api/alerts", {cache: "no-store"});
      if (response.ok) render((await response.json()).alerts);
    } catch (err) {
      // The dashboard restarted or the network blinked: keep the last banner.
    }
  }

  window.agentqBanner = {render};
  // The overview refreshes the banner itself with every metrics fetch.
  if (document.body.dataset.page !== "overview") setInterval(poll, 5000);
})();
