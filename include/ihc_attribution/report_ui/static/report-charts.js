// The charts of the report page, drawn with Chart.js from the figures the page embeds as JSON
// (computed on the server, rounded as the tables show them). Undefined ratios are null: gaps.
(function () {
  "use strict";
  var source = document.getElementById("report-data");
  if (!source || typeof Chart === "undefined") return;
  var data = JSON.parse(source.textContent);
  var money = new Intl.NumberFormat(undefined, {style: "currency", currency: data.currency});
  var ratio = new Intl.NumberFormat(undefined, {minimumFractionDigits: 2, maximumFractionDigits: 2});
  Chart.defaults.animation = false;
  Chart.defaults.maintainAspectRatio = false;
  Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;

  function axis(format, title) {
    return {beginAtZero: true, title: {display: true, text: title},
            ticks: {callback: function (value) { return format.format(value); }}};
  }
  function tooltip(format) {
    return {callbacks: {label: function (item) {
      var v = item.raw;
      return item.dataset.label + ": " + (v === null || v === undefined ? "n/a" : format.format(v));
    }}};
  }
  function lines(canvasId, key, format, title, withTotal) {
    var datasets = data.daily.map(function (channel) {
      return {label: channel.name || "(empty name)", data: channel[key], borderColor: channel.color,
              backgroundColor: channel.color, borderWidth: 2, pointRadius: 2, spanGaps: false, tension: 0};
    });
    if (withTotal && data.daily.length > 1) {
      datasets.push({label: "Selection", data: data.total[key], borderColor: "#1d2433", backgroundColor: "#1d2433",
                     borderDash: [6, 4], borderWidth: 2, pointRadius: 0, spanGaps: false});
    }
    return new Chart(document.getElementById(canvasId), {
      type: "line",
      data: {labels: data.dates, datasets: datasets},
      options: {interaction: {mode: "index", intersect: false},
                scales: {y: axis(format, title)},
                plugins: {tooltip: tooltip(format), legend: {position: "bottom", labels: {boxWidth: 12}}}}
    });
  }

  new Chart(document.getElementById("chart-channels"), {
    type: "bar",
    data: {
      labels: data.channels.map(function (c) { return c.name || "(empty name)"; }),
      datasets: [
        {label: "Spend", data: data.channels.map(function (c) { return c.cost; }), backgroundColor: "#8d99ae"},
        {label: "Attributed revenue", data: data.channels.map(function (c) { return c.ihc_revenue; }),
         backgroundColor: "#2a9d8f"}
      ]
    },
    options: {indexAxis: "y", scales: {x: axis(money, data.currency)},
              plugins: {tooltip: tooltip(money), legend: {position: "bottom"}}}
  });
  lines("chart-daily-cost", "cost", money, "Spend (" + data.currency + ")", false);
  lines("chart-daily-revenue", "ihc_revenue", money, "Attributed revenue (" + data.currency + ")", false);
  lines("chart-roas", "roas", ratio, "ROAS", true);
  lines("chart-cpo", "cpo", money, "CPO (" + data.currency + ")", true);
  document.documentElement.setAttribute("data-charts", "drawn");
})();
