// The index table: click a column header to sort by it (again: reverse), and filter the rows by
// text (case name, warnings), status and "flagged only". Each cell carries its sort value in
// data-v (numbers as numbers, blanks last), so sorting never parses what is displayed.
"use strict";

(function () {
  const table = document.getElementById("cases");
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  let sortColumn = -1;
  let ascending = true;

  function sortValue(row, column) {
    const v = row.cells[column].dataset.v;
    if (v === undefined || v === "") return null;
    const n = Number(v);
    return Number.isNaN(n) ? v.toLowerCase() : n;
  }

  function sortBy(column) {
    ascending = column === sortColumn ? !ascending : true;
    sortColumn = column;
    const sorted = rows.slice().sort((a, b) => {
      const x = sortValue(a, column);
      const y = sortValue(b, column);
      if (x === null || y === null) return (x === null) - (y === null); // blanks last
      const order = x < y ? -1 : x > y ? 1 : 0;
      return ascending ? order : -order;
    });
    for (const row of sorted) body.appendChild(row);
    for (const th of table.tHead.rows[0].cells) th.removeAttribute("aria-sort");
    table.tHead.rows[0].cells[column].setAttribute("aria-sort", ascending ? "ascending" : "descending");
  }

  Array.from(table.tHead.rows[0].cells).forEach((th, i) => {
    th.addEventListener("click", () => sortBy(i));
  });

  const text = document.getElementById("filter-text");
  const status = document.getElementById("filter-status");
  const flagged = document.getElementById("filter-flagged");
  const count = document.getElementById("shown-count");

  function filter() {
    const words = text.value.trim().toLowerCase();
    let shown = 0;
    for (const row of rows) {
      const show = (!words || row.dataset.search.includes(words))
        && (!status.value || row.dataset.status === status.value)
        && (!flagged.checked || row.dataset.flagged === "1");
      row.hidden = !show;
      shown += show ? 1 : 0;
    }
    count.textContent = `${shown} of ${rows.length} case(s) shown`;
  }

  for (const el of [text, status, flagged]) el.addEventListener("input", filter);
  filter();
})();
