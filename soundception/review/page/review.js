// The review page: cards from data.js (window.REVIEW), decisions in localStorage, exports by Blob download.
// A classic script (no modules, no fetch): it runs from file:// with nothing but this folder.
"use strict";
(function () {
  const R = window.REVIEW;
  const PAGE = 50;
  const STORE = "soundception-review:" + R.id;
  const DECISIONS = ["correct", "wrong", "other", "unsure"];
  const classId = (c) => R.classes[c][0];
  const className = (c) => R.classes[c][1];
  const $ = (id) => document.getElementById(id);

  let decisions = load();            // card key -> {d: decision, l: label class id ("" for wrong/unsure)}
  let list = [];                     // indices into R.cards shown under the current filter
  let page = 0;
  let focused = -1;                  // index into the page's cards

  function load() {
    try { return JSON.parse(localStorage.getItem(STORE) || "{}") || {}; } catch (e) { return {}; }
  }
  function save() { localStorage.setItem(STORE, JSON.stringify(decisions)); }

  // ------------------------------------------------------------------------------------------ filter and pages
  function speciesCounts() {
    const counts = new Map();
    for (const card of R.cards) {
      const n = counts.get(card.class) || [0, 0];
      n[1] += 1; if (decisions[card.key]) n[0] += 1;
      counts.set(card.class, n);
    }
    return counts;
  }
  function buildSpeciesFilter() {
    const select = $("species");
    const counts = speciesCounts();
    const decided = R.cards.filter((c) => decisions[c.key]).length;
    const options = [["", "All species", decided, R.cards.length]];
    for (const [c, n] of [...counts.entries()].sort((a, b) => a[0] - b[0])) options.push([String(c), className(c), n[0], n[1]]);
    const chosen = select.value;
    select.replaceChildren(...options.map(([value, name, d, t]) => new Option(`${name} (${d.toLocaleString("en")}/${t.toLocaleString("en")} decided)`, value)));
    select.value = chosen;
    $("progress-bar").style.width = (100 * decided / Math.max(1, R.cards.length)) + "%";
    $("summary").textContent = `${R.cards.length.toLocaleString("en")} cards, ${counts.size} species, ${decided.toLocaleString("en")} decided`;
  }
  function filter() {
    const species = $("species").value;
    const undecided = $("undecided").checked;
    list = [];
    R.cards.forEach((card, i) => {
      if (species !== "" && String(card.class) !== species) return;
      if (undecided && decisions[card.key]) return;
      list.push(i);
    });
    showPage(0, 0, false);
  }
  const pages = () => Math.max(1, Math.ceil(list.length / PAGE));
  function pager(nav) {
    const n = pages(), buttons = [];
    const add = (label, target, current) => {
      const b = document.createElement("button");
      b.type = "button"; b.textContent = label; b.disabled = target < 0 || target >= n;
      if (current) b.setAttribute("aria-current", "page");
      b.addEventListener("click", () => showPage(target, 0));
      buttons.push(b);
    };
    add("‹ previous", page - 1, false);
    const first = Math.max(0, Math.min(page - 2, n - 5)), last = Math.min(n, first + 5);
    if (first > 0) add(first > 1 ? "1 …" : "1", 0, false);
    for (let p = first; p < last; p++) add(String(p + 1), p, p === page);
    if (last < n) add(last < n - 1 ? `… ${n}` : String(n), n - 1, false);
    add("next ›", page + 1, false);
    const where = document.createElement("span");
    where.textContent = ` page ${page + 1} of ${n} (${list.length.toLocaleString("en")} cards)`;
    nav.replaceChildren(...buttons, where);
  }
  function showPage(p, focus, scroll = true) {
    page = Math.max(0, Math.min(p, pages() - 1));
    const main = $("cards");
    main.replaceChildren(...list.slice(page * PAGE, (page + 1) * PAGE).map(cardElement));
    pager($("pager-top")); pager($("pager-bottom"));
    focused = -1;
    if (main.children.length) setFocus(focus < 0 ? main.children.length - 1 : focus, scroll);
  }

  // ------------------------------------------------------------------------------------------ one card
  let classOptions = null;           // the class list's <option>s, built once and cloned into each card
  function otherOptions() {
    if (!classOptions) {
      classOptions = document.createDocumentFragment();
      classOptions.append(new Option("Other species… (o)", ""));
      R.classes.forEach(([id, name], c) => classOptions.append(new Option(name === id ? name : `${name} (${id})`, String(c))));
    }
    return classOptions.cloneNode(true);
  }
  function cardElement(i) {
    const card = R.cards[i], rec = R.recordings[card.recording];
    const el = document.createElement("article");
    el.className = "card"; el.tabIndex = -1; el.dataset.card = String(i); el.dataset.key = card.key;
    const [c0, c1] = card.clip, span = Math.max(1e-9, c1 - c0);
    const kind = card.stratum === "top" ? "top by score" : `score bin ${card.stratum}`;
    el.innerHTML = `<div class="head"><span class="species"></span><span class="score"></span></div>
      <div class="meta"></div>
      <div class="spectrogram" title="click to play"></div>
      <div class="decide">
        <button type="button" data-decision="correct">✓ Correct</button>
        <button type="button" data-decision="wrong">✗ Wrong</button>
        <button type="button" data-decision="unsure">? Unsure</button>
        <select aria-label="other species"></select>
      </div>
      <div class="decision-line"></div>`;
    el.querySelector(".species").textContent = className(card.class);
    el.querySelector(".score").textContent = card.score.toFixed(3);
    el.querySelector(".meta").textContent =
      `${rec[0]} · ${card.start.toFixed(1)}–${card.end.toFixed(1)} s · ${kind} · stands for ${fmtWeight(card.weight)}`;
    const picture = el.querySelector(".spectrogram");
    if (card.media) {
      const img = document.createElement("img");
      img.loading = "lazy"; img.width = 300; img.height = 128; img.src = `media/${card.media}.jpg`;
      img.alt = `spectrogram ${c0.toFixed(1)}–${c1.toFixed(1)} s`;
      const mark = document.createElement("div");
      mark.className = "span";
      mark.style.left = (100 * (card.start - c0) / span) + "%";
      mark.style.width = (100 * (card.end - card.start) / span) + "%";
      const axis = document.createElement("span");
      axis.className = "axis"; axis.textContent = `${(R.nyquist / 1000).toFixed(1)} kHz`;
      const times = document.createElement("span");
      times.className = "axis times"; times.textContent = `${c0.toFixed(1)}–${c1.toFixed(1)} s`;
      picture.append(img, mark, axis, times);
      const audio = document.createElement("audio");
      audio.controls = true; audio.preload = "none"; audio.src = `media/${card.media}.ogg`;
      picture.after(audio);
      picture.addEventListener("click", () => { setFocus(indexOnPage(el), false); toggle(el); });
    } else {
      picture.innerHTML = '<div class="missing">audio unavailable (see failures.csv)</div>';
    }
    const select = el.querySelector("select");
    select.append(otherOptions());
    select.addEventListener("change", () => {
      if (select.value !== "") decide(el, "other", classId(Number(select.value)), true);
    });
    for (const b of el.querySelectorAll("button[data-decision]")) {
      b.addEventListener("click", () => { setFocus(indexOnPage(el), false); decide(el, b.dataset.decision, null, true); });
    }
    paint(el);
    return el;
  }
  const fmtWeight = (w) => String(Number(w.toFixed(6)));
  const indexOnPage = (el) => [...$("cards").children].indexOf(el);
  function paint(el) {
    const card = R.cards[Number(el.dataset.card)], chosen = decisions[card.key];
    el.dataset.decision = chosen ? chosen.d : "";
    for (const b of el.querySelectorAll("button[data-decision]")) b.setAttribute("aria-pressed", String(!!chosen && chosen.d === b.dataset.decision));
    const select = el.querySelector("select");
    const other = chosen && chosen.d === "other";
    select.value = other ? String(R.classes.findIndex((c) => c[0] === chosen.l)) : "";
    select.classList.toggle("chosen", !!other);
    el.querySelector(".decision-line").textContent = !chosen ? "" : other ? `decided: other species, ${labelName(chosen.l)}`
      : `decided: ${chosen.d}`;
  }
  function labelName(id) { const c = R.classes.find((x) => x[0] === id); return c ? c[1] : id; }

  // ------------------------------------------------------------------------------------------ deciding
  function decide(el, decision, label, advance) {
    const card = R.cards[Number(el.dataset.card)];
    if (decision === null) delete decisions[card.key];
    else {
      if (decision === "other" && label === classId(card.class)) decision = "correct";  // the species proposed
      decisions[card.key] = { d: decision, l: decision === "correct" ? classId(card.class) : decision === "other" ? label : "" };
    }
    save(); paint(el); buildSpeciesFilter();
    if (advance) move(1); else el.focus({ preventScroll: true });
  }
  function setFocus(i, scroll) {
    const cards = $("cards").children;
    if (!cards.length) return;
    i = Math.max(0, Math.min(i, cards.length - 1));
    if (focused >= 0 && cards[focused]) cards[focused].classList.remove("focused");
    focused = i;
    cards[i].classList.add("focused");
    cards[i].focus({ preventScroll: true });
    if (scroll) cards[i].scrollIntoView({ block: "nearest" });
  }
  function move(step) {
    const n = $("cards").children.length;
    const next = focused + step;
    if (next >= n && page + 1 < pages()) showPage(page + 1, 0);
    else if (next < 0 && page > 0) showPage(page - 1, -1);
    else setFocus(next, true);
  }
  function openList(select) {
    select.focus();
    try { select.showPicker(); } catch (e) { /* no picker here: arrows and Enter on the focused list */ }
  }
  function toggle(el) {
    const audio = el.querySelector("audio");
    if (!audio) return;
    if (audio.paused) audio.play(); else audio.pause();
  }
  document.addEventListener("play", (event) => {   // one clip at a time
    for (const a of document.querySelectorAll("audio")) if (a !== event.target) a.pause();
  }, true);

  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const target = event.target;
    if (target.tagName === "SELECT" || target.tagName === "INPUT") {
      if (event.key === "Escape") { target.blur(); const el = $("cards").children[focused]; if (el) el.focus(); }
      return;
    }
    const el = $("cards").children[focused];
    const key = event.key;
    const acts = {
      j: () => move(1), ArrowDown: () => move(1), ArrowRight: () => move(1),
      k: () => move(-1), ArrowUp: () => move(-1), ArrowLeft: () => move(-1),
      PageDown: () => showPage(page + 1, 0), PageUp: () => showPage(page - 1, 0),
      " ": () => el && toggle(el), p: () => el && toggle(el),
      c: () => el && decide(el, "correct", null, true), w: () => el && decide(el, "wrong", null, true),
      u: () => el && decide(el, "unsure", null, true), x: () => el && decide(el, null, null, false),
      o: () => el && openList(el.querySelector("select")),
    };
    if (acts[key]) { event.preventDefault(); acts[key](); }
  });

  // ------------------------------------------------------------------------------------------ exports
  function csvField(text) {
    text = String(text);
    return /[",\r\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
  }
  function decided() { return R.cards.filter((card) => decisions[card.key]); }
  function decisionsCsv() {
    const lines = [R.columns.join(",")];
    for (const card of decided()) {
      const chosen = decisions[card.key], rec = R.recordings[card.recording];
      lines.push([rec[0], card.start.toFixed(3), card.end.toFixed(3), classId(card.class), card.score.toFixed(6),
        chosen.d, chosen.l, fmtWeight(card.weight), rec[1]].map(csvField).join(","));
    }
    return lines.join("\n") + "\n";
  }
  const RAVEN = ["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)", "High Freq (Hz)",
    "Species", "Score", "Begin Path", "File Offset (s)", "Decision", "Label", "Weight"];
  function ravenTable() {
    // recordings laid end to end (in file order) as in a Raven table over several files; File Offset is within the file
    const rows = decided().sort((a, b) => a.recording - b.recording || a.start - b.start);
    const offsets = new Map();
    let offset = 0;
    for (const card of rows) if (!offsets.has(card.recording)) { offsets.set(card.recording, offset); offset += R.recordings[card.recording][2]; }
    const plain = (text) => String(text).replace(/[\t\r\n]/g, " ");
    const lines = [RAVEN.join("\t")];
    rows.forEach((card, n) => {
      const chosen = decisions[card.key], rec = R.recordings[card.recording], shift = offsets.get(card.recording);
      lines.push([n + 1, "Spectrogram 1", 1, (shift + card.start).toFixed(3), (shift + card.end).toFixed(3),
        card.low.toFixed(1), card.high.toFixed(1), plain(className(card.class)), card.score.toFixed(6), plain(rec[1]),
        card.start.toFixed(3), chosen.d, chosen.l ? plain(labelName(chosen.l)) : "", fmtWeight(card.weight)].join("\t"));
    });
    return lines.join("\n") + "\n";
  }
  function download(text, name, type) {
    const url = URL.createObjectURL(new Blob([text], { type }));
    const a = document.createElement("a");
    a.href = url; a.download = name;
    document.body.append(a); a.click(); a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }
  $("export-csv").addEventListener("click", () => download(decisionsCsv(), `decisions-${R.id}.csv`, "text/csv"));
  $("export-raven").addEventListener("click", () => download(ravenTable(), `decisions-${R.id}.selections.txt`, "text/plain"));

  $("species").addEventListener("change", filter);
  $("undecided").addEventListener("change", filter);
  window.addEventListener("storage", (event) => {   // another tab of the same review decided
    if (event.key === STORE) { decisions = load(); buildSpeciesFilter(); for (const el of $("cards").children) paint(el); }
  });
  buildSpeciesFilter();
  filter();
  document.body.dataset.ready = "true";
})();
