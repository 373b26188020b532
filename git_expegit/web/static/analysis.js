// /plot: draws the figure that web/analysis.py computed (in #plot-data) with plotly.js
// (static/plotly-basic.min.js, MIT). A point is an execution: clicking it opens its report.
"use strict";
(function () {
  const COLORS = ["#2458d6", "#d6552a", "#1f8a4c", "#8e44ad", "#c98a00", "#0f8b8d", "#c8362d",
                  "#5f6b7a"];
  // A new choice of axes redraws at once: no need to press Plot.
  ["plot-x", "plot-y", "plot-group"].forEach(function (id) {
    const select = document.getElementById(id);
    if (select) select.addEventListener("change", function () {
      document.getElementById("plot-form").submit();
    });
  });
  const source = document.getElementById("plot-data");
  const box = document.getElementById("plot");
  if (!source || !box || typeof Plotly === "undefined") return;
  const figure = JSON.parse(source.textContent);
  const traces = [];
  figure.traces.forEach(function (series, i) {
    const color = COLORS[i % COLORS.length];
    const several = figure.traces.length > 1;
    traces.push({
      type: "scatter", mode: "markers", name: several ? series.name : "executions",
      legendgroup: series.name, x: series.points.x, y: series.points.y,
      customdata: series.points.id, text: series.points.text,
      hovertemplate: "%{text}<br>" + figure.y + " = %{y}<extra></extra>",
      marker: {color: color, size: 7, opacity: 0.45, line: {width: 0}}});
    traces.push({
      type: "scatter", mode: "lines+markers", name: several ? series.name + " (mean)" : "mean, min-max",
      legendgroup: series.name, showlegend: !several, x: series.mean.x, y: series.mean.y,
      customdata: series.mean.n,
      hovertemplate: "mean of %{customdata}: %{y}<extra></extra>",
      line: {color: color, width: 2}, marker: {color: color, size: 9, symbol: "diamond"},
      error_y: {type: "data", symmetric: false, array: series.mean.high,
                arrayminus: series.mean.low, color: color, thickness: 1.5, width: 5}});
  });
  const layout = {
    margin: {l: 70, r: 20, t: 20, b: 60}, hovermode: "closest",
    font: {family: "system-ui, -apple-system, 'Segoe UI', sans-serif", size: 13, color: "#1d2330"},
    xaxis: {title: {text: figure.x}, type: figure.numeric_x ? "linear" : "category",
            gridcolor: "#eef0f4", zeroline: false},
    yaxis: {title: {text: figure.y}, gridcolor: "#eef0f4", zeroline: false},
    legend: {orientation: "h", y: -0.18}, paper_bgcolor: "#fff", plot_bgcolor: "#fff"};
  Plotly.newPlot(box, traces, layout, {displaylogo: false, responsive: true,
                                       modeBarButtonsToRemove: ["select2d", "lasso2d"]});
  box.on("plotly_click", function (event) {
    const point = event.points[0];
    if (point && point.data.mode === "markers") window.location = "/executions/" + point.customdata;
  });
  function axis(name, checkbox) {
    checkbox.addEventListener("change", function () {
      const linear = name === "xaxis" && !figure.numeric_x ? "category" : "linear";
      Plotly.relayout(box, {[name + ".type"]: checkbox.checked ? "log" : linear});
    });
  }
  document.getElementById("log-x").disabled = !figure.numeric_x;
  axis("xaxis", document.getElementById("log-x"));
  axis("yaxis", document.getElementById("log-y"));
})();
