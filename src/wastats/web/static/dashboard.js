/* wastats dashboard: draws the monthly chart and the numbers table from the /v1 API
   (docs/api-v1.md). No framework and no build step: this file is served as is, under a
   Content-Security-Policy that allows only 'self', so it never injects inline styles or scripts.
   Every drawn value carries data-* attributes, so tests can read exactly what was drawn. */
"use strict";

(function () {
  const root = document.getElementById("dashboard");
  if (!root) return;

  const SVG = "http://www.w3.org/2000/svg";
  const BUCKETS = [
    { key: "marketing", label: "Marketing" },
    { key: "service", label: "Service" },
    { key: "incoming", label: "Incoming" },
  ];
  const api = root.dataset.api || "/v1";
  const base = root.dataset.base || "/dashboard";
  const accountZone = root.dataset.accountZone || "UTC";
  // The server's clock, not the browser's: "this month" must agree with the API's idea of now
  // (and a browser with a wrong clock must not show the wrong months).
  const serverNow = Number(root.dataset.now) || Date.now() / 1000;
  const loadedAt = Date.now() / 1000;

  const form = byId("range-form");
  const fromInput = byId("from");
  const toInput = byId("to");
  const tzInput = byId("tz");
  const csvLink = byId("csv-link");
  const errorBox = byId("error");
  const chart = byId("chart");
  const chartBody = byId("chart-body");
  const rangeLabel = byId("range-label");
  const table = byId("numbers-table");
  const numbersNote = byId("numbers-note");
  const asOf = byId("as-of");
  const metaTable = byId("meta-table");
  const metaNote = byId("meta-note");
  const reconciliationLink = byId("reconciliation-link");
  // Set by the server: a WABA of this account is linked, so /v1/stats carries Meta's record.
  const metaLinked = root.dataset.meta === "linked";
  const numberFormat = new Intl.NumberFormat();

  let generation = 0;
  let lastAnswer = null;
  let drawnWidth = 0;

  function byId(id) {
    return document.getElementById(id);
  }

  class ApiError extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
    }
  }

  async function getJSON(path, params) {
    const url = api + path + (params ? "?" + new URLSearchParams(params) : "");
    let response;
    try {
      response = await fetch(url, {
        credentials: "same-origin",
        headers: { Accept: "application/json" },
      });
    } catch (err) {
      throw new ApiError(0, "the server could not be reached (" + err.message + ")");
    }
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    if (!response.ok) {
      // RFC 9457 problem details: `detail` is the sentence written for people.
      const detail = (body && (body.detail || body.title)) || "HTTP " + response.status;
      throw new ApiError(response.status, detail);
    }
    return body;
  }

  // --- months and zones ---------------------------------------------------------------------

  function monthIn(zone) {
    const now = new Date((serverNow + Date.now() / 1000 - loadedAt) * 1000);
    try {
      const parts = new Intl.DateTimeFormat("en-US", {
        timeZone: zone,
        year: "numeric",
        month: "numeric",
      }).formatToParts(now);
      const pick = (type) => Number(parts.find((p) => p.type === type).value);
      return { y: pick("year"), m: pick("month") };
    } catch (_) {
      return null; // not a zone this browser knows: the API will say what is wrong
    }
  }

  function addMonths(month, k) {
    const index = month.y * 12 + (month.m - 1) + k;
    return { y: Math.floor(index / 12), m: (index % 12) + 1 };
  }

  function monthKey(month) {
    return String(month.y).padStart(4, "0") + "-" + String(month.m).padStart(2, "0");
  }

  function parsePeriod(period) {
    const [y, m] = period.split("-").map(Number);
    return { y, m };
  }

  function monthLabel(period, style) {
    const { y, m } = parsePeriod(period);
    return new Intl.DateTimeFormat(undefined, {
      month: style || "short",
      year: "numeric",
      timeZone: "UTC",
    }).format(new Date(Date.UTC(y, m - 1, 1)));
  }

  function shortMonth(period) {
    const { y, m } = parsePeriod(period);
    return new Intl.DateTimeFormat(undefined, { month: "short", timeZone: "UTC" }).format(
      new Date(Date.UTC(y, m - 1, 1)),
    );
  }

  function dateTime(iso, zone) {
    const options = { dateStyle: "medium", timeStyle: "short" };
    try {
      return new Intl.DateTimeFormat(undefined, { ...options, timeZone: zone }).format(
        new Date(iso),
      );
    } catch (_) {
      return new Intl.DateTimeFormat(undefined, { ...options, timeZone: "UTC" }).format(
        new Date(iso),
      );
    }
  }

  // --- small DOM helpers --------------------------------------------------------------------

  function svg(name, attrs, parent) {
    const node = document.createElementNS(SVG, name);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    if (parent) parent.appendChild(node);
    return node;
  }

  function html(name, attrs, text, parent) {
    const node = document.createElement(name);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (parent) parent.appendChild(node);
    return node;
  }

  // A count as shown: null is Incoming in a month only Meta reported (Meta has no counterpart
  // of Incoming), which is unknown, not zero.
  function count(value) {
    return value === null ? "unknown" : numberFormat.format(value);
  }

  function emptyMessage(parent, text) {
    parent.replaceChildren(html("p", { class: "empty" }, text));
  }

  // --- state --------------------------------------------------------------------------------

  function currentParams() {
    return {
      from: fromInput.value.trim(),
      to: toInput.value.trim(),
      tz: tzInput.value.trim() || accountZone,
    };
  }

  function csvHref(p) {
    return (
      api +
      "/stats?" +
      new URLSearchParams({ format: "csv", granularity: "month", from: p.from, to: p.to, tz: p.tz })
    );
  }

  function showErrors(errors) {
    errorBox.replaceChildren();
    if (!errors.length) {
      errorBox.hidden = true;
      return;
    }
    if (errors.some((e) => e.status === 401)) {
      html("span", {}, "Your session has ended. ", errorBox);
      html("a", { href: base + "/login" }, "Sign in again", errorBox);
    } else {
      const unique = [...new Map(errors.map((e) => [e.message, e])).values()];
      const list = unique.length > 1 ? html("ul", { class: "error-list" }, null, errorBox) : errorBox;
      for (const e of unique) {
        html(unique.length > 1 ? "li" : "span", { "data-status": e.status }, e.message, list);
      }
    }
    errorBox.hidden = false;
  }

  function setBusy(node, busy) {
    node.setAttribute("aria-busy", busy ? "true" : "false");
    if (busy) node.dataset.state = "loading";
  }

  async function refresh() {
    const p = currentParams();
    const gen = ++generation;
    csvLink.href = csvHref(p);
    reconciliationLink.href = base + "/reconciliation?" + new URLSearchParams({ from: p.from, to: p.to });
    history.replaceState(null, "", "?" + new URLSearchParams(p));
    setBusy(chart, true);
    setBusy(table, true);
    setBusy(metaTable, true);

    const current = monthIn(p.tz) || monthIn(accountZone) || monthIn("UTC");
    const months = { current: monthKey(current), previous: monthKey(addMonths(current, -1)) };
    const pair = { granularity: "month", from: months.previous, to: months.current, tz: p.tz };
    const results = await Promise.allSettled([
      getJSON("/stats", { granularity: "month", from: p.from, to: p.to, tz: p.tz }),
      getJSON("/numbers"),
      getJSON("/stats", { ...pair, group_by: "number" }),
      getJSON("/stats", pair),
    ]);
    if (gen !== generation) return; // the user applied again meanwhile; that answer wins

    const errors = results.filter((r) => r.status === "rejected").map((r) => r.reason);
    showErrors(errors);
    const [series, numbers, grouped, totals] = results;
    if (series.status === "fulfilled") {
      renderChart(series.value);
    } else {
      lastAnswer = null;
      emptyMessage(chartBody, "The chart could not be loaded: " + series.reason.message);
      renderCards(null);
      rangeLabel.textContent = "";
      asOf.textContent = "";
      chart.dataset.state = "error";
    }
    if (numbers.status === "fulfilled" && grouped.status === "fulfilled" && totals.status === "fulfilled") {
      renderTable(numbers.value.numbers, grouped.value, totals.value, months);
    } else {
      const failed = [numbers, grouped, totals].find((r) => r.status === "rejected");
      table.tHead.replaceChildren();
      table.tFoot.replaceChildren();
      const row = html("tr", {}, null);
      html("td", { class: "empty" }, "The numbers could not be loaded: " + failed.reason.message, row);
      table.tBodies[0].replaceChildren(row);
      table.dataset.state = "error";
    }
    // Meta's record only once a WABA is linked (otherwise there is no source or cost to show),
    // and only after the four above: one token may have four requests in flight
    // (WASTATS_API_CONCURRENCY). It says its own failure (say, too many rows) in place.
    const meta = metaLinked
      ? (await Promise.allSettled([
          getJSON("/stats", { granularity: "month", from: p.from, to: p.to, tz: p.tz, group_by: "number,category" }),
        ]))[0]
      : { status: "fulfilled", value: null };
    if (gen !== generation) return;
    if (meta.status === "fulfilled") {
      renderMeta(meta.value);
    } else {
      metaMessage("Source and cost could not be loaded: " + meta.reason.message);
      metaTable.dataset.state = "error";
    }
    // Which parameters the drawing belongs to, so a reader (or a test) can tell it is current.
    for (const node of [chart, table, metaTable]) {
      node.dataset.from = p.from;
      node.dataset.to = p.to;
      node.dataset.tz = p.tz;
      node.setAttribute("aria-busy", "false");
    }
  }

  // --- totals and chart ---------------------------------------------------------------------

  function renderCards(totals) {
    for (const node of document.querySelectorAll("#totals .card-value")) {
      const key = node.dataset.bucket;
      const value = totals ? totals[key] : null;
      node.textContent = value === null || value === undefined ? "–" : numberFormat.format(value);
      if (value === null || value === undefined) delete node.dataset.value;
      else node.dataset.value = String(value);
    }
  }

  function renderChart(answer) {
    lastAnswer = answer;
    renderCards(answer.totals);
    const rows = answer.rows;
    rangeLabel.textContent = rows.length
      ? monthLabel(rows[0].period) + " – " + monthLabel(rows[rows.length - 1].period) + " · " + answer.tz
      : answer.tz;
    asOf.textContent = answer.as_of
      ? "Latest event counted: " + dateTime(answer.as_of, answer.tz) + " (" + answer.tz + ")"
      : "No events counted yet.";
    chart.dataset.empty = answer.totals.total === 0 ? "true" : "false";
    draw();
    chart.dataset.state = "ready";
  }

  function niceTicks(max, count) {
    const raw = max / count;
    const magnitude = Math.pow(10, Math.floor(Math.log10(raw)));
    const norm = raw / magnitude;
    const step = Math.max(1, Math.round((norm <= 1 ? 1 : norm <= 2 ? 2 : norm <= 5 ? 5 : 10) * magnitude));
    const ticks = [0];
    while (ticks[ticks.length - 1] < max) ticks.push(ticks[ticks.length - 1] + step);
    return ticks;
  }

  function draw() {
    const answer = lastAnswer;
    if (!answer) return;
    const rows = answer.rows;
    drawnWidth = chartBody.clientWidth;
    if (!rows.length || answer.totals.total === 0) {
      emptyMessage(chartBody, "Nothing was counted in this range.");
      return;
    }
    const width = Math.max(260, chartBody.clientWidth);
    const narrow = width < 560;
    const height = narrow ? 230 : 240;
    const margin = { top: 20, right: 6, bottom: 38, left: 44 };
    const plotW = width - margin.left - margin.right;
    const plotH = height - margin.top - margin.bottom;
    const ticks = niceTicks(Math.max(1, ...rows.map((r) => r.total)), narrow ? 4 : 5);
    const top = ticks[ticks.length - 1];
    const y = (v) => margin.top + plotH - (v / top) * plotH;

    const root = svg("svg", {
      class: "chart-svg",
      viewBox: `0 0 ${width} ${height}`,
      width,
      height,
      role: "img",
      "aria-labelledby": "chart-caption",
    });
    const defs = svg("defs", {}, root);
    const hatch = svg("pattern", {
      id: "hatch",
      width: 6,
      height: 6,
      patternUnits: "userSpaceOnUse",
      patternTransform: "rotate(45)",
    }, defs);
    svg("rect", { width: 6, height: 6, class: "hatch-bg" }, hatch);
    svg("line", { x1: 0, y1: 0, x2: 0, y2: 6, class: "hatch-line" }, hatch);

    const grid = svg("g", { class: "grid", "aria-hidden": "true" }, root);
    for (const t of ticks) {
      svg("line", { x1: margin.left, x2: width - margin.right, y1: y(t), y2: y(t) }, grid);
      const label = svg("text", { x: margin.left - 8, y: y(t) + 4, class: "axis", "text-anchor": "end" }, grid);
      label.textContent = numberFormat.format(t);
    }

    const band = plotW / rows.length;
    const barW = Math.min(52, Math.max(3, band * 0.62));
    const labelEvery = Math.max(1, Math.ceil(40 / band));
    const bars = svg("g", { class: "bars" }, root);
    rows.forEach((row, i) => {
      const x = margin.left + i * band + (band - barW) / 2;
      const g = svg("g", {
        class: "bar" + (row.final ? "" : " provisional"),
        "data-period": row.period,
        "data-total": row.total,
        "data-final": row.final,
      }, bars);
      const name = monthLabel(row.period, "long");
      svg("title", {}, g).textContent =
        name + (row.final ? "" : " (not final yet)") + ": " +
        BUCKETS.map((b) => b.label + " " + count(row[b.key])).join(", ") +
        "; total " + numberFormat.format(row.total);
      let stacked = 0;
      for (const b of BUCKETS) {
        const value = row[b.key];
        const y0 = y(stacked);
        const y1 = y(stacked + value);
        svg("rect", {
          class: "seg seg-" + b.key,
          x,
          y: y1,
          width: barW,
          height: Math.max(0, y0 - y1),
          "data-period": row.period,
          "data-bucket": b.key,
          "data-value": value,
        }, g);
        stacked += value;
      }
      if (!row.final && row.total > 0) {
        svg("rect", {
          class: "seg-hatch",
          x,
          y: y(row.total),
          width: barW,
          height: y(0) - y(row.total),
          fill: "url(#hatch)",
        }, g);
      }
      if (row.total > 0 && band >= 30) {
        const label = svg("text", { x: x + barW / 2, y: y(row.total) - 6, class: "bar-total", "text-anchor": "middle" }, g);
        label.textContent = numberFormat.format(row.total);
      }
      if (i % labelEvery === 0) {
        const { m } = parsePeriod(row.period);
        const label = svg("text", { x: x + barW / 2, y: height - margin.bottom + 17, class: "axis", "text-anchor": "middle" }, g);
        label.textContent = shortMonth(row.period);
        if (i === 0 || m <= labelEvery) {
          const year = svg("text", { x: x + barW / 2, y: height - margin.bottom + 31, class: "axis axis-year", "text-anchor": "middle" }, g);
          year.textContent = row.period.slice(0, 4);
        }
      }
    });
    svg("line", { class: "baseline", x1: margin.left, x2: width - margin.right, y1: y(0), y2: y(0) }, root);
    chartBody.replaceChildren(root, chartTable(rows));
  }

  // The same figures as text, for screen readers and for anyone who wants the exact numbers.
  function chartTable(rows) {
    const details = html("details", { class: "chart-table" });
    html("summary", {}, "Show the figures", details);
    const scroller = html("div", { class: "table-scroll" }, null, details);
    const t = html("table", { class: "numbers compact" }, null, scroller);
    const head = html("tr", {}, null, html("thead", {}, null, t));
    for (const h of ["Month", "Marketing", "Service", "Incoming", "Total"]) html("th", { scope: "col" }, h, head);
    const body = html("tbody", {}, null, t);
    for (const row of rows) {
      const tr = html("tr", {}, null, body);
      html("th", { scope: "row" }, monthLabel(row.period) + (row.final ? "" : " *"), tr);
      for (const key of ["marketing", "service", "incoming", "total"]) {
        html("td", { class: "num" }, count(row[key]), tr);
      }
    }
    return details;
  }

  // --- numbers table ------------------------------------------------------------------------

  function renderTable(numbers, grouped, totals, months) {
    const order = [months.current, months.previous];
    const finalOf = {};
    const totalOf = {};
    for (const row of totals.rows) {
      finalOf[row.period] = row.final;
      totalOf[row.period] = row;
    }
    const cells = {};
    for (const row of grouped.rows) cells[row.number + "|" + row.period] = row;
    const list = numbers.map((n) => ({ whatsapp: n.whatsapp, name: n.display_name || n.business_name || "" }));
    // A number in the answer but not in the list (added meanwhile) is still shown.
    for (const row of grouped.rows) {
      if (!list.some((n) => n.whatsapp === row.number)) list.push({ whatsapp: row.number, name: "" });
    }

    const head = table.tHead;
    head.replaceChildren();
    const top = html("tr", {}, null, head);
    html("th", { scope: "col", rowspan: 2, class: "sticky" }, "Number", top);
    html("th", { scope: "col", rowspan: 2 }, "Name", top);
    for (const period of order) {
      const th = html("th", { scope: "colgroup", colspan: 4, class: "month", "data-period": period, "data-final": finalOf[period] !== false }, null, top);
      html("span", {}, monthLabel(period, "long"), th);
      if (finalOf[period] === false) {
        html("span", { class: "badge", title: "Late webhooks can still change this month" }, "not final", th);
      }
    }
    const sub = html("tr", {}, null, head);
    for (const period of order) {
      BUCKETS.forEach((b, i) => html("th", { scope: "col", class: "num" + (i === 0 ? " group-start" : "") }, b.label, sub));
      html("th", { scope: "col", class: "num" }, "Total", sub);
    }

    const body = table.tBodies[0];
    body.replaceChildren();
    if (!list.length) {
      const row = html("tr", {}, null, body);
      html("td", { colspan: 2 + order.length * 4, class: "empty" }, "This account has no numbers yet.", row);
    }
    for (const n of list) {
      const tr = html("tr", { "data-number": n.whatsapp }, null, body);
      html("th", { scope: "row", class: "sticky mono" }, "+" + n.whatsapp, tr);
      html("td", { class: "name" }, n.name || "—", tr);
      for (const period of order) {
        const row = cells[n.whatsapp + "|" + period];
        countCells(tr, row, period, finalOf[period], { "data-number": n.whatsapp });
      }
    }

    const foot = table.tFoot;
    foot.replaceChildren();
    const tr = html("tr", { "data-number": "all" }, null, foot);
    html("th", { scope: "row", class: "sticky" }, "All numbers", tr);
    html("td", {}, "", tr);
    for (const period of order) countCells(tr, totalOf[period], period, finalOf[period], { "data-number": "all" });

    numbersNote.textContent =
      "Months in " + totals.tz + ". A month is final 48 hours after it ends; until then late webhooks can still change it.";
    table.dataset.current = months.current;
    table.dataset.previous = months.previous;
    table.dataset.state = "ready";
  }

  function countCells(tr, row, period, final, extra) {
    ["marketing", "service", "incoming", "total"].forEach((key, i) => {
      const value = row ? row[key] : 0;
      const classes = ["num"];
      if (i === 0) classes.push("group-start");
      if (key === "total") classes.push("strong");
      if (final === false) classes.push("provisional");
      html("td", {
        ...extra,
        class: classes.join(" "),
        "data-period": period,
        "data-bucket": key,
        "data-value": value,
      }, count(value), tr);
    });
  }

  // --- source and cost (Meta's record, docs/meta-record.md) ---------------------------------

  const SOURCE_LABEL = {
    observed: "Observed",
    reported: "Meta's record",
    "observed+reported": "Observed + Meta's record",
  };

  function money(value) {
    return value.toFixed(2);
  }

  // A cost as people read it, always labelled: Meta's own figure (in the WABA's currency, which
  // Meta's analytics do not name) or an estimate from the rate card, never one passed off as the
  // other and never summed together (they may be in two currencies).
  function costLabel(cost) {
    if (!cost) return "–";
    const parts = [];
    const meta = cost.source === "meta" ? cost.amount : cost.meta;
    const estimate = cost.source === "estimate" ? cost.amount : cost.estimate;
    if (meta !== undefined && meta !== null) parts.push(money(meta) + " (Meta's)");
    if (estimate !== undefined && estimate !== null) {
      parts.push("≈ " + money(estimate) + (cost.currency ? " " + cost.currency : "") + " (estimate)");
    }
    return parts.join(" + ");
  }

  function metaMessage(text) {
    metaTable.tHead.replaceChildren();
    const row = html("tr", {}, null);
    html("td", { class: "empty" }, text, row);
    metaTable.tBodies[0].replaceChildren(row);
  }

  function renderMeta(answer) {
    if (!answer) {
      metaMessage(
        "No WhatsApp Business Account of this account is linked, so every count here is " +
          "observed from webhooks and no cost is known. Linking one (wastats meta link) adds " +
          "Meta's record: a year of history and what the messages cost.",
      );
      metaTable.dataset.state = "none";
      return;
    }
    const head = html("tr", {}, null);
    for (const h of ["Month", "Number", "Category", "Pricing", "Source", "Marketing", "Service", "Incoming", "Cost"]) {
      html("th", { scope: "col", class: ["Marketing", "Service", "Incoming"].includes(h) ? "num" : "" }, h, head);
    }
    metaTable.tHead.replaceChildren(head);
    const body = metaTable.tBodies[0];
    body.replaceChildren();
    for (const row of answer.rows) {
      const tr = html("tr", {
        "data-period": row.period,
        "data-number": row.number,
        "data-category": row.category,
        "data-source": row.source || "",
        "data-cost-source": row.cost ? row.cost.source : "",
        class: "source-" + (row.source || "observed").replace("+", "-"),
      }, null, body);
      html("td", {}, row.period, tr);
      html("td", { class: "mono" }, row.number, tr);
      html("td", {}, row.category || "–", tr);
      html("td", {}, row.pricing || "–", tr);
      html("td", { class: "source" }, SOURCE_LABEL[row.source] || row.source, tr);
      for (const key of ["marketing", "service", "incoming"]) {
        // Incoming is null where only Meta reported: it has no counterpart of Incoming.
        const value = row[key];
        html("td", { class: "num" }, count(value), tr);
      }
      html("td", { class: "cost" }, costLabel(row.cost), tr);
    }
    if (!answer.rows.length) metaMessage("Nothing observed or reported in this range.");
    metaNote.textContent =
      "Per month, number and category, in " + answer.tz + ". Source: observed (our counts from " +
      "webhooks) or Meta's record (reported, for months before the first webhook). Cost: " +
      "Meta's own figure where Meta gives one, else estimated from the rate card.";
    metaTable.dataset.state = "ready";
  }

  // --- wiring -------------------------------------------------------------------------------

  form.addEventListener("submit", (event) => {
    event.preventDefault(); // applied in place: no full reload
    refresh();
  });

  if (typeof ResizeObserver === "function") {
    // Redraw at the new width (a phone turned sideways) so text keeps its real size.
    new ResizeObserver(() => {
      if (lastAnswer && Math.abs(chartBody.clientWidth - drawnWidth) > 8) draw();
    }).observe(chartBody);
  }

  refresh();
})();
