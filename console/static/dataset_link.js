// The launch form's "What's in it?" link follows the dataset select: `name` opens the
// dataset's page, `name@version` that version's catalog. The values are the console's own
// (dataset names and version numbers it offered), and are percent-encoded into the path.
(function () {
  "use strict";
  var link = document.getElementById("dataset-catalog-link");
  var select = document.querySelector("select[data-catalog-link]");
  if (!link || !select) { return; }
  var base = link.getAttribute("data-datasets") || "/datasets";
  function follow() {
    var parts = select.value.split("@");
    var href = base + "/" + encodeURIComponent(parts[0]);
    if (parts.length === 2 && /^[0-9]+$/.test(parts[1])) {
      href += "/versions/" + parts[1] + "/catalog";
    }
    link.setAttribute("href", href);
  }
  select.addEventListener("change", follow);
  follow();
}());
