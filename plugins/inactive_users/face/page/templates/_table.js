(function () {
  // A table sorted by a click on its header (data-v of each cell, numbers where th[data-num]) and
  // filtered: #filter matches a row's data-search (else its first cell), each select.match and
  // checked input.flag matches the row's data-<key>.
  const table = document.getElementById("{{ table_id }}"), body = table.tBodies[0];
  const rows = Array.from(body.rows), filter = document.getElementById("filter");
  const shown = document.getElementById("shown");
  const selects = Array.from(document.querySelectorAll("select.match"));
  const flags = Array.from(document.querySelectorAll("input.flag"));
  function apply() {
    const text = filter.value.toLowerCase();
    let n = 0;
    for (const row of rows) {
      const hay = (row.dataset.search || row.cells[0].dataset.v).toLowerCase();
      const ok = hay.includes(text)
        && selects.every(function (s) { return !s.value || row.dataset[s.dataset.key] === s.value; })
        && flags.every(function (f) { return !f.checked || row.dataset[f.dataset.key] === "1"; });
      row.hidden = !ok; if (ok) n++;
    }
    shown.textContent = n + " of " + rows.length + " {{ noun }} shown";
  }
  filter.addEventListener("input", apply);
  selects.forEach(function (s) { s.addEventListener("change", apply); });
  flags.forEach(function (f) { f.addEventListener("change", apply); });
  table.tHead.querySelectorAll("th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      const dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1, num = th.dataset.num === "1";
      table.tHead.querySelectorAll("th").forEach(function (o) { o.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
      rows.sort(function (a, b) {
        const x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
        if (x === "" || y === "") return (x === "") - (y === "");  // empty (never, unknown) last
        const c = num ? Number(x) - Number(y) : (x < y ? -1 : x > y ? 1 : 0);
        return c * dir || (a.cells[0].dataset.v < b.cells[0].dataset.v ? -1 : 1);
      });
      for (const row of rows) body.appendChild(row);
    });
  });
})();
