// Line charts with uPlot (vendored, loaded before the modules as the global `uPlot`).

const PALETTE = ["#0b5cad", "#c45500", "#1a7f37", "#8250df", "#bf3989", "#0a7d8c", "#6e7781", "#9a6700"];

/** Series of `[seconds, value]` points joined on one time axis (missing values are null). */
export function align(series) {
  const times = [...new Set(series.flatMap((s) => s.points.map((p) => p[0])))].sort((a, b) => a - b);
  const index = new Map(times.map((t, i) => [t, i]));
  const columns = series.map((s) => {
    const column = new Array(times.length).fill(null);
    for (const [t, v] of s.points) column[index.get(t)] = v;
    return column;
  });
  return [times, ...columns];
}

/**
 * Draws `series` ([{label, points}]) into `container`; `onZoom(fromSeconds, toSeconds)` is
 * called when the user drags over a span. Returns the uPlot instance (destroy() it).
 */
export function lineChart(container, series, { height = 320, onZoom = null, title = null } = {}) {
  const width = Math.max(280, container.clientWidth || 600);
  const options = {
    title: title ?? undefined,
    width,
    height,
    scales: { x: { time: true } },
    series: [
      { label: "time" },
      ...series.map((s, i) => ({ label: s.label, stroke: PALETTE[i % PALETTE.length], width: 1.5, spanGaps: false, points: { show: s.points.length < 200 } })),
    ],
    axes: [{}, { size: 70 }],
    cursor: { drag: { x: true, y: false } },
    legend: { show: true },
    hooks: {
      setSelect: [
        (u) => {
          if (!onZoom || u.select.width < 5) return;
          const from = u.posToVal(u.select.left, "x");
          const to = u.posToVal(u.select.left + u.select.width, "x");
          u.setSelect({ left: 0, width: 0, top: 0, height: 0 }, false);
          onZoom(from, to);
        },
      ],
    },
  };
  const chart = new window.uPlot(options, align(series), container);
  const resize = new ResizeObserver(() => {
    const w = Math.max(280, container.clientWidth);
    if (w !== chart.width) chart.setSize({ width: w, height });
  });
  resize.observe(container);
  const destroy = chart.destroy.bind(chart);
  chart.destroy = () => { resize.disconnect(); destroy(); };
  return chart;
}
